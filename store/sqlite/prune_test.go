package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/stretchr/testify/require"
)

// newestMigration is the highest version among the embedded migrations.
func newestMigration(t *testing.T) int {
	t.Helper()
	files, err := filepath.Glob("migrations/*.sql")
	require.NoError(t, err)
	newest := 0
	for _, f := range files {
		num, _, _ := strings.Cut(filepath.Base(f), "_")
		v, err := strconv.Atoi(num)
		require.NoError(t, err, f)
		newest = max(newest, v)
	}
	return newest
}

// A database from before the storage quota gets its per-agent counts from
// the rows it already holds, and the triggers keep them from then on.
func TestUsageMigrationCountsExistingRows(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v3.db")
	db := raw(t, path)
	for _, f := range []string{"0001_init.sql", "0002_callback_url.sql", "0003_tool_call.sql"} {
		b, err := os.ReadFile("migrations/" + f)
		require.NoError(t, err)
		_, err = db.Exec(string(b))
		require.NoError(t, err, f)
	}
	_, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT;
		INSERT INTO schema_migrations VALUES (1, '0001_init.sql', 0), (2, '0002_callback_url.sql', 0), (3, '0003_tool_call.sql', 0)`)
	require.NoError(t, err)
	a, b := agentotp.NewAgentID(), agentotp.NewAgentID()
	for i, ag := range []agentotp.AgentID{a, b} {
		_, err = db.Exec(`INSERT INTO agents (id, name, description, active, key_hash, key_prefix) VALUES (?, ?, '', 1, ?, 'ak_x')`,
			string(ag), "agent"+strconv.Itoa(i), "h"+strconv.Itoa(i))
		require.NoError(t, err)
	}
	insert := func(agent any) {
		_, err := db.Exec(`INSERT INTO permissions (id, agent_id, action, resource, idempotency_key, status,
			decision_effect, decision_rule, decision_policy_version, decision_reason, decision_token_ttl_ns, decision_uses,
			decision_use_when, decision_quorum, decision_event_id, decided_by, decided_reason, token_ttl_ns, uses, uses_remaining,
			created_at, updated_at)
			VALUES (?, ?, 'db.query', '', '', 'denied', 'deny', 'r', 'v', '', 0, 0, '', 1, 'evt', 'policy', '', 0, 1, 0, 1, 1)`,
			string(agentotp.NewPermissionID()), agent)
		require.NoError(t, err)
	}
	for range 3 {
		insert(string(a))
	}
	insert(string(b))
	insert(nil) // a deleted agent's permission
	require.NoError(t, db.Close())

	s := open(t, path, sqlite.Options{})
	usage := func(agent agentotp.AgentID) agentotp.StorageUsage {
		var u agentotp.StorageUsage
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
			var err error
			u, err = tx.StorageUsage(ctx, agent)
			return err
		}))
		return u
	}
	// Each old row's only sized text is its action, "db.query".
	require.Equal(t, agentotp.StorageUsage{Permissions: 3, Bytes: 3 * (512 + 8)}, usage(a))
	require.Equal(t, agentotp.StorageUsage{Permissions: 1, Bytes: 512 + 8}, usage(b))
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
		_, err := tx.PrunePermissions(ctx, time.Unix(0, 2), 100)
		return err
	}))
	require.Zero(t, usage(a), "old rows pruned, the usage follows")
	require.Zero(t, usage(b))
}

// Pruning gives pages back to SQLite's free list, and later requests reuse
// them: a steady state of request, decide and prune keeps the permissions'
// share of the file flat (nothing vacuums; the file does not shrink).
func TestPruneReusesSpace(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "space.db")
	s := open(t, path, sqlite.Options{Synchronous: "NORMAL"})
	agent := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "big", KeyHash: "k", Active: true}
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, agent) }))
	blob := map[string]any{"blob": strings.Repeat("x", 8000)}
	round := func(created time.Time) {
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
			for range 200 {
				p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "a", Scope: blob, Context: blob,
					GrantedScope: blob, Status: agentotp.StatusUsed, CreatedAt: created, UpdatedAt: created, Uses: 1}
				if err := tx.CreatePermission(ctx, p); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	size := func() int64 {
		_, err := raw(t, path).Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
		require.NoError(t, err)
		fi, err := os.Stat(path)
		require.NoError(t, err)
		return fi.Size()
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	round(t0)
	first := size()
	for i := 1; i <= 3; i++ {
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
			n, err := tx.PrunePermissions(ctx, t0.Add(time.Duration(i)*time.Hour), 1000)
			require.Equal(t, 200, n)
			return err
		}))
		round(t0.Add(time.Duration(i) * time.Hour))
	}
	require.Greater(t, first, int64(200*3*8000), "each round stores about 4.8 MB")
	require.Less(t, size(), first+first/10, "three more rounds after pruning reuse the freed pages")
}
