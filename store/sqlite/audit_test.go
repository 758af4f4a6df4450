package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/agentotp/agentotp/store/storetest"
)

func TestKeyedAuditContract(t *testing.T) {
	storetest.RunKeyedAudit(t, func(t *testing.T, key *agentotp.AuditKey) agentotp.Store {
		return open(t, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{AuditKey: key})
	})
}
