package pgtest_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

func TestNewDatabase(t *testing.T) {
	ctx := context.Background()
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	require.NotEqual(t, pgtest.DatabaseOf(a), pgtest.DatabaseOf(b))
	for _, dsn := range []string{a, b, pgtest.Shared(t).TCPDSN(pgtest.DatabaseOf(a))} {
		c, err := pgx.Connect(ctx, dsn)
		require.NoError(t, err)
		var db string
		require.NoError(t, c.QueryRow(ctx, "SELECT current_database()").Scan(&db))
		require.Contains(t, []string{pgtest.DatabaseOf(a), pgtest.DatabaseOf(b)}, db)
		require.NoError(t, c.Close(ctx))
	}
}
