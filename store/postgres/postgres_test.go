package postgres_test

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
	"github.com/agentotp/agentotp/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

func open(t testing.TB, dsn string, opts postgres.Options) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) agentotp.Store {
		return open(t, pgtest.NewDatabase(t), postgres.Options{})
	})
}

func TestTwoStoresOneDatabase(t *testing.T) {
	storetest.RunTwoStores(t, func(t *testing.T) (agentotp.Store, agentotp.Store) {
		dsn := pgtest.NewDatabase(t)
		return open(t, dsn, postgres.Options{}), open(t, dsn, postgres.Options{})
	})
}

func TestKeyedAuditContract(t *testing.T) {
	storetest.RunKeyedAudit(t, func(t *testing.T, key *agentotp.AuditKey) agentotp.Store {
		return open(t, pgtest.NewDatabase(t), postgres.Options{AuditKey: key})
	})
}
