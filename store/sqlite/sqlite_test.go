package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/agentotp/agentotp/store/storetest"
	"github.com/stretchr/testify/require"
)

func open(t testing.TB, path string, opts sqlite.Options) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) agentotp.Store {
		return open(t, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{})
	})
}

func TestTwoStoresOneFile(t *testing.T) {
	storetest.RunTwoStores(t, func(t *testing.T) (agentotp.Store, agentotp.Store) {
		path := filepath.Join(t.TempDir(), "shared.db")
		return open(t, path, sqlite.Options{}), open(t, path, sqlite.Options{})
	})
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	t.Run("creates the directory and a private file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "a", "b?c#d%", "agentotp.db")
		s := open(t, path, sqlite.Options{})
		require.NoError(t, s.Ping(ctx))
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	})
	t.Run("pragmas", func(t *testing.T) {
		for _, sync := range []string{"", "FULL", "normal"} {
			path := filepath.Join(t.TempDir(), "p.db")
			open(t, path, sqlite.Options{Synchronous: sync})
			db := raw(t, path)
			var mode string
			require.NoError(t, db.QueryRow("PRAGMA journal_mode").Scan(&mode))
			require.Equal(t, "wal", mode)
		}
	})
	t.Run("rejects unknown synchronous", func(t *testing.T) {
		_, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "x.db"), sqlite.Options{Synchronous: "OFF); DROP TABLE x; --"})
		require.Error(t, err)
	})
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	s := open(t, path, sqlite.Options{})
	a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "kept", KeyHash: "h"}
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) }))
	require.NoError(t, s.Close())

	// Reopening an existing file applies nothing twice and keeps the data.
	for range 2 {
		s, err := sqlite.Open(ctx, path, sqlite.Options{})
		require.NoError(t, err)
		got, err := s.Agent(ctx, a.ID)
		require.NoError(t, err)
		require.Equal(t, a.Name, got.Name)
		require.NoError(t, s.Close())
	}
	require.Equal(t, migrationCount(t), countRows(t, raw(t, path), "schema_migrations"))

	t.Run("concurrent opens of a new file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "race.db")
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				s, err := sqlite.Open(ctx, path, sqlite.Options{})
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
		wg.Wait()
		db := raw(t, path)
		require.Equal(t, migrationCount(t), countRows(t, db, "schema_migrations"))
		require.Equal(t, 8, countRows(t, db, "agents"))
	})

	t.Run("upgrades a database made by the first schema", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "v1.db")
		db := raw(t, path)
		v1, err := os.ReadFile("migrations/0001_init.sql")
		require.NoError(t, err)
		_, err = db.Exec(string(v1))
		require.NoError(t, err)
		// As the store of that version recorded it.
		_, err = db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT;
			INSERT INTO schema_migrations VALUES (1, '0001_init.sql', 0)`)
		require.NoError(t, err)
		agent := agentotp.NewAgentID()
		old := agentotp.NewPermissionID()
		_, err = db.Exec(`INSERT INTO agents (id, name, description, active, key_hash, key_prefix) VALUES (?, 'old', '', 1, 'h', 'ak_x')`, string(agent))
		require.NoError(t, err)
		_, err = db.Exec(`INSERT INTO permissions (id, agent_id, action, resource, idempotency_key, status,
			decision_effect, decision_rule, decision_policy_version, decision_reason, decision_token_ttl_ns, decision_uses,
			decision_use_when, decision_quorum, decision_event_id, decided_by, decided_reason, token_ttl_ns, uses, uses_remaining)
			VALUES (?, ?, 'db.query', 'db://x', 'k1', 'pending', 'require_approval', 'r', 'v', '', 0, 0, '', 1, 'evt', '', '', 0, 1, 0)`,
			string(old), string(agent))
		require.NoError(t, err)
		require.NoError(t, db.Close())

		s := open(t, path, sqlite.Options{})
		got, err := s.Permission(ctx, old)
		require.NoError(t, err)
		require.Equal(t, "db.query", got.Action)
		require.Empty(t, got.CallbackURL, "rows from before the column read as no callback")
		p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent, Status: agentotp.StatusPending,
			Uses: 1, CallbackURL: "https://hooks.example.com/cb"}
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreatePermission(ctx, p) }))
		got, err = s.Permission(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, p.CallbackURL, got.CallbackURL)
		require.Equal(t, migrationCount(t), countRows(t, raw(t, path), "schema_migrations"))
	})

	t.Run("upgrades a database at 0002 with rows", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "v2.db")
		db := raw(t, path)
		for _, f := range []string{"0001_init.sql", "0002_callback_url.sql"} {
			b, err := os.ReadFile("migrations/" + f)
			require.NoError(t, err)
			_, err = db.Exec(string(b))
			require.NoError(t, err, f)
		}
		_, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT;
			INSERT INTO schema_migrations VALUES (1, '0001_init.sql', 0), (2, '0002_callback_url.sql', 0)`)
		require.NoError(t, err)
		agent := agentotp.NewAgentID()
		old := agentotp.NewPermissionID()
		_, err = db.Exec(`INSERT INTO agents (id, name, description, active, key_hash, key_prefix) VALUES (?, 'old', '', 1, 'h', 'ak_x')`, string(agent))
		require.NoError(t, err)
		_, err = db.Exec(`INSERT INTO permissions (id, agent_id, action, resource, scope_json, idempotency_key, callback_url, status,
			decision_effect, decision_rule, decision_policy_version, decision_reason, decision_token_ttl_ns, decision_uses,
			decision_use_when, decision_quorum, decision_event_id, decided_by, decided_reason, token_ttl_ns, uses, uses_remaining)
			VALUES (?, ?, 'mcp.fs.write', '', '{"path":"/srv/a"}', 'k2', 'https://hooks.example.com/cb', 'pending',
			'require_approval', 'r', 'v', '', 0, 0, '', 1, 'evt', '', '', 0, 1, 0)`,
			string(old), string(agent))
		require.NoError(t, err)
		require.NoError(t, db.Close())

		s := open(t, path, sqlite.Options{})
		got, err := s.Permission(ctx, old)
		require.NoError(t, err)
		require.Equal(t, "mcp.fs.write", got.Action)
		require.Equal(t, "https://hooks.example.com/cb", got.CallbackURL)
		require.Equal(t, map[string]any{"path": "/srv/a"}, got.Scope)
		require.Nil(t, got.Tool, "rows from before the columns read as no tool call")
		// The old row still moves through its lifecycle.
		got.Status = agentotp.StatusDenied
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, got, agentotp.StatusPending) }))

		tool := &agentotp.ToolCall{Server: "fs", Name: "write_file", Annotations: map[string]any{"destructiveHint": true},
			ArgsHash: agentotp.ArgsHash(map[string]any{"path": "/srv/b"})}
		p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent, Status: agentotp.StatusPending, Uses: 1, Tool: tool}
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreatePermission(ctx, p) }))
		got, err = s.Permission(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, tool, got.Tool)
		require.Equal(t, migrationCount(t), countRows(t, raw(t, path), "schema_migrations"))
		var version int
		require.NoError(t, raw(t, path).QueryRow(`SELECT max(version) FROM schema_migrations`).Scan(&version))
		require.Equal(t, newestMigration(t), version)
	})

	t.Run("refuses a newer schema", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "new.db")
		open(t, path, sqlite.Options{}).Close()
		_, err := raw(t, path).Exec(`INSERT INTO schema_migrations VALUES (9999, 'future', 0)`)
		require.NoError(t, err)
		_, err = sqlite.Open(ctx, path, sqlite.Options{})
		require.ErrorContains(t, err, "newer")
	})
}

// raw opens the file without the store, as an attacker with file access
// (or an operator) would.
func raw(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// migrationCount is how many migrations the package embeds.
func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := filepath.Glob("migrations/*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	return len(files)
}

func countRows(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM "+table).Scan(&n))
	return n
}

func TestAuditTriggers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	s := open(t, path, sqlite.Options{})
	appendN(t, s, 3)
	db := raw(t, path)
	for _, q := range []string{
		`UPDATE audit_events SET details_json = '{"x":1}' WHERE seq = 2`,
		`DELETE FROM audit_events WHERE seq = 3`,
	} {
		_, err := db.Exec(q)
		require.ErrorContains(t, err, "append-only", q)
	}
	require.Equal(t, int64(3), verify(t, s))
}

func appendN(t *testing.T, s agentotp.Store, n int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
		for i := range n {
			e := &agentotp.AuditEvent{Time: time.Unix(1_900_000_000+int64(i), 7).UTC(), Type: agentotp.EventUse,
				ActorType: "agent", ActorID: "a", Details: map[string]any{"i": i}}
			if err := tx.AppendAudit(ctx, e); err != nil {
				return err
			}
		}
		return nil
	}))
}

func verify(t *testing.T, s agentotp.Store) int64 {
	t.Helper()
	v := agentotp.NewChainVerifier()
	require.NoError(t, s.ScanAudit(context.Background(), v.Next))
	return v.Checked
}

func TestTamperDetected(t *testing.T) {
	cases := []struct {
		name    string
		tamper  []string
		badSeq  int64
		checked int64 // events verified before the break
	}{
		{"edit details", []string{`UPDATE audit_events SET details_json = '{"i":99}' WHERE seq = 3`}, 3, 2},
		{"edit actor", []string{`UPDATE audit_events SET actor_id = 'someone else' WHERE seq = 4`}, 4, 3},
		{"edit time", []string{`UPDATE audit_events SET time = time + 1 WHERE seq = 1`}, 1, 0},
		{"delete a row", []string{`DELETE FROM audit_events WHERE seq = 3`}, 3, 2},
		{"delete the first row", []string{`DELETE FROM audit_events WHERE seq = 1`}, 1, 0},
		{"swap two rows' content", []string{
			// Move row 3 aside, copy row 4's content into seq 3 and row 3's into seq 4.
			`CREATE TEMP TABLE swap AS SELECT * FROM audit_events WHERE seq IN (3, 4)`,
			`DELETE FROM audit_events WHERE seq IN (3, 4)`,
			`INSERT INTO audit_events SELECT 7 - seq, id, time, type, actor_type, actor_id, agent_id,
				permission_id, request_id, details_json, prev_hash, hash, mac, token_ref FROM swap`,
		}, 3, 2},
		{"rehash one row without its successor", []string{
			`UPDATE audit_events SET details_json = '{"i":99}', hash = 'ff' WHERE seq = 2`,
		}, 2, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tamper.db")
			s := open(t, path, sqlite.Options{})
			appendN(t, s, 5)
			require.Equal(t, int64(5), verify(t, s), "untouched data verifies")

			db := raw(t, path)
			for _, q := range []string{`DROP TRIGGER audit_events_no_update`, `DROP TRIGGER audit_events_no_delete`} {
				_, err := db.Exec(q)
				require.NoError(t, err)
			}
			conn, err := db.Conn(context.Background()) // TEMP tables live on one connection
			require.NoError(t, err)
			for _, q := range tc.tamper {
				_, err := conn.ExecContext(context.Background(), q)
				require.NoError(t, err, q)
			}
			require.NoError(t, conn.Close())

			v := agentotp.NewChainVerifier()
			err = s.ScanAudit(context.Background(), v.Next)
			var ce *agentotp.ChainError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, tc.badSeq, ce.Seq, ce.Error())
			require.Equal(t, tc.checked, v.Checked)
		})
	}
}

func TestErrorTranslation(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "e.db")
	s := open(t, path, sqlite.Options{BusyTimeout: 50 * time.Millisecond})
	a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "a", KeyHash: "h"}
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) }))

	perm := func(mod func(p *agentotp.Permission)) func(tx agentotp.Tx) error {
		return func(tx agentotp.Tx) error {
			p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: a.ID, Status: agentotp.StatusPending, Uses: 1}
			mod(p)
			return tx.CreatePermission(ctx, p)
		}
	}
	cases := []struct {
		name string
		fn   func(tx agentotp.Tx) error
		want error
	}{
		{"negative uses remaining", perm(func(p *agentotp.Permission) { p.UsesRemaining = -1 }), agentotp.ErrValidation},
		{"unknown status", perm(func(p *agentotp.Permission) { p.Status = "bogus" }), agentotp.ErrValidation},
		{"unencodable scope", perm(func(p *agentotp.Permission) { p.Scope = map[string]any{"f": func() {}} }), agentotp.ErrValidation},
		{"time outside the encodable range", func(tx agentotp.Tx) error {
			return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: time.Date(1200, 1, 1, 0, 0, 0, 0, time.UTC), Type: agentotp.EventUse})
		}, agentotp.ErrValidation},
		{"invalid pre-sealed details", func(tx agentotp.Tx) error {
			return tx.AppendAudit(ctx, &agentotp.AuditEvent{Type: agentotp.EventUse, DetailsJSON: []byte("{not json")})
		}, agentotp.ErrValidation},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, s.Update(ctx, tc.fn), tc.want)
		})
	}

	t.Run("another process holds the write lock", func(t *testing.T) {
		conn, err := raw(t, path).Conn(ctx)
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		require.NoError(t, err)
		err = s.Update(ctx, func(agentotp.Tx) error { return nil })
		require.ErrorIs(t, err, agentotp.ErrUnavailable)
		_, err = conn.ExecContext(ctx, "ROLLBACK")
		require.NoError(t, err)
		require.NoError(t, conn.Close())
		require.NoError(t, s.Update(ctx, func(agentotp.Tx) error { return nil }), "works again once the lock is gone")
	})
}
