package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// TestPermissionWritesFindRowByPrimaryKey pins the generic plans of the
// statements that spend a use or issue a token, which pgx prepares once and
// PostgreSQL then reuses: each must reach the row by its primary key
// whatever the statistics say. With plain equalities the planner took the
// (agent_id, created_at) index once the statistics saw mostly permissions
// without an agent (deleted agents leave theirs behind), or the
// (status, created_at) index when few were approved, and walked the index
// on every spend.
func TestPermissionWritesFindRowByPrimaryKey(t *testing.T) {
	ctx := context.Background()
	for _, shape := range []struct{ name, status string }{
		// No agents, the statuses spread: agent_id = $3 looks selective.
		{"no agents", "(ARRAY['used', 'denied', 'expired', 'approved'])[1 + i % 4]"},
		// None approved: status = 'approved' looks selective.
		{"none approved", "'used'"},
	} {
		t.Run(shape.name, func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			open(t, dsn, postgres.Options{}) // migrates
			conn, err := pgx.Connect(ctx, dsn)
			require.NoError(t, err)
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, `INSERT INTO permissions (id, action, resource, idempotency_key, status,
				decision_effect, decision_rule, decision_policy_version, decision_reason, decision_token_ttl_ns,
				decision_uses, decision_use_when, decision_quorum, decision_event_id, decided_by, decided_reason,
				token_ttl_ns, uses, uses_remaining, created_at, updated_at)
				SELECT 'perm_' || i, 'a', '', '', `+shape.status+`, 'auto_approve', '', '', '', 0, 1, '', 0, '', '', '', 0, 1, 0, i, i
				FROM generate_series(1, 5000) AS i`)
			require.NoError(t, err)
			_, err = conn.Exec(ctx, "ANALYZE permissions")
			require.NoError(t, err)
			_, err = conn.Exec(ctx, "SET plan_cache_mode = force_generic_plan")
			require.NoError(t, err)

			for _, c := range []struct{ name, sql, args string }{
				{"spend", postgres.SpendTokenSQL, "1, 'perm_1', 'agent_x', 'h', 0"},
				{"issue", postgres.IssueTokenSQL, "'h', 1, 'perm_1'"},
			} {
				_, err := conn.Prepare(ctx, c.name, c.sql)
				require.NoError(t, err)
				rows, err := conn.Query(ctx, "EXPLAIN EXECUTE "+c.name+"("+c.args+")")
				require.NoError(t, err)
				lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
				require.NoError(t, err)
				plan := strings.Join(lines, "\n")
				require.Contains(t, plan, "Index Scan using permissions_pkey on permissions", "%s:\n%s", c.name, plan)
				require.NotContains(t, plan, "permissions_agent_created", "%s:\n%s", c.name, plan)
				require.NotContains(t, plan, "permissions_status_created", "%s:\n%s", c.name, plan)
			}
		})
	}
}
