package postgres_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// raw connects to the database without the store, as an operator (or an
// attacker with database access) would.
func raw(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func countRows(t *testing.T, c *pgx.Conn, table string) int {
	t.Helper()
	var n int
	require.NoError(t, c.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n))
	return n
}

func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := filepath.Glob("migrations/*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	return len(files)
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()

	t.Run("reopening applies nothing twice and keeps the data", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		s, err := postgres.Open(ctx, dsn, postgres.Options{})
		require.NoError(t, err)
		a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "kept", KeyHash: "h"}
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) }))
		require.NoError(t, s.Close())
		for range 2 {
			s, err := postgres.Open(ctx, dsn, postgres.Options{})
			require.NoError(t, err)
			got, err := s.Agent(ctx, a.ID)
			require.NoError(t, err)
			require.Equal(t, a.Name, got.Name)
			require.NoError(t, s.Close())
		}
		require.Equal(t, migrationCount(t), countRows(t, raw(t, dsn), "schema_migrations"))
	})

	t.Run("instances starting at once on a new database", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 8 {
			wg.Go(func() {
				<-start
				s, err := postgres.Open(ctx, dsn, postgres.Options{})
				if err != nil {
					t.Errorf("open: %v", err)
					return
				}
				defer s.Close()
				a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: fmt.Sprint("agent", i), KeyHash: fmt.Sprint(i)}
				if err := s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) }); err != nil {
					t.Errorf("write: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		db := raw(t, dsn)
		require.Equal(t, migrationCount(t), countRows(t, db, "schema_migrations"))
		require.Equal(t, 8, countRows(t, db, "agents"))
	})

	t.Run("refuses a newer schema", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		require.NoError(t, open(t, dsn, postgres.Options{}).Ping(ctx))
		_, err := raw(t, dsn).Exec(ctx, `INSERT INTO schema_migrations VALUES (9999, 'future', 0)`)
		require.NoError(t, err)
		_, err = postgres.Open(ctx, dsn, postgres.Options{})
		require.ErrorContains(t, err, "newer")
	})

	t.Run("a schema per deployment", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		_, err := raw(t, dsn).Exec(ctx, `CREATE SCHEMA one; CREATE SCHEMA two`)
		require.NoError(t, err)
		a := open(t, dsn+"&search_path=one", postgres.Options{})
		b := open(t, dsn+"&search_path=two", postgres.Options{})
		ag := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "only in one", KeyHash: "h"}
		require.NoError(t, a.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, ag) }))
		_, err = b.Agent(ctx, ag.ID)
		require.ErrorIs(t, err, agentotp.ErrNotFound)
		require.NotEqual(t, a.LockKey("writer"), b.LockKey("writer"), "deployments do not share the writer lock")
	})
}

func TestOpenErrorsHideThePassword(t *testing.T) {
	ctx := context.Background()
	const secret = "s3cr3t-pa55"
	srv := pgtest.Shared(t)
	cases := []struct {
		name string
		dsn  string
		code agentotp.Code
	}{
		{"unparsable URL", "postgres://user:" + secret + "@host:notaport/db", ""},
		{"unparsable key=value", "host=x password=" + secret + " port=notaport", ""},
		{"nobody listening", "postgres://user:" + secret + "@127.0.0.1:1/db?sslmode=disable&connect_timeout=2", agentotp.CodeUnavailable},
		{"no such database", strings.Replace(srv.TCPDSN("nosuchdb"), "postgres@", "postgres:"+secret+"@", 1), agentotp.CodeUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := postgres.Open(ctx, tc.dsn, postgres.Options{})
			require.Error(t, err)
			require.NotContains(t, err.Error(), secret)
			require.NotContains(t, fmt.Sprintf("%+v", err), secret)
			if tc.code != "" {
				require.Equal(t, tc.code, agentotp.ErrorCode(err), err.Error())
			}
		})
	}
}
