package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/agentotp/agentotp/store/storetest"
)

func TestConsoleSessionContract(t *testing.T) {
	storetest.RunConsoleSessions(t, func(t *testing.T) agentotp.Store {
		return open(t, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{})
	})
}
