package sqlite

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// The queries on the request and use path must each be served by the index
// named here: dropping indexes to make writes cheaper (migration 0007) must
// not turn any of them into a scan.
func TestHotQueriesUseIndexes(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "plan.db"), Options{})
	require.NoError(t, err)
	defer s.Close()
	count, countArgs := countQuery("agt_x", "mcp.*", time.Unix(1, 0), []agentotp.Status{agentotp.StatusPending})
	for _, tc := range []struct {
		name, query string
		args        []any
		want        []string // each must match a step of the plan (regexp; an index search unless it starts with ^)
	}{
		{"permission by id", selectPermission + " WHERE id = ?", []any{"perm_x"},
			[]string{"permissions USING INDEX sqlite_autoindex_permissions_1 \\(id=\\?\\)"}},
		{"idempotency key", selectIdempotency, []any{"agt_x", "k"},
			[]string{"USING INDEX permissions_idempotency \\(agent_id=\\? AND idempotency_key=\\?\\)"}},
		{"spend", spendTokenSQL, []any{1, "perm_x", "agt_x", "h", 1},
			[]string{"permissions USING INDEX sqlite_autoindex_permissions_1 \\(id=\\?\\)"}},
		{"trail", trailSQL, []any{"perm_x"},
			[]string{"USING INDEX audit_events_permission \\(permission_id=\\?\\)", "USING INDEX sqlite_autoindex_permissions_1 \\(id=\\?\\)"}},
		// The newest event: a scan in rowid order that stops at its first row.
		{"last audit event", lastAuditSQL, nil, []string{"^SCAN audit_events$"}},
		{"storage usage", storageUsageSQL, []any{"agt_x"}, []string{"agent_usage USING PRIMARY KEY \\(agent_id=\\?\\)"}},
		// Either index bounds the rows read; which one SQLite picks depends
		// on its statistics.
		{"budget and pending cap", count, countArgs,
			[]string{"permissions USING INDEX permissions_(agent|status)_created \\((agent_id|status)=\\? AND created_at>\\?\\)"}},
		{"agent by key", selectAgent + " WHERE key_hash = ? AND key_hash <> ''", []any{"h"},
			[]string{"agents USING INDEX agents_key_hash \\(key_hash=\\?\\)"}},
		{"due permissions", selectPermission + ` WHERE status IN ('pending', 'approved') AND deadline <= ? ORDER BY deadline, id LIMIT ?`, []any{1, 10},
			[]string{"permissions USING INDEX permissions_(due \\(deadline<\\?\\)|status_created \\(status=\\?\\))"}},
		{"pending list", selectPermission + " WHERE status = ? ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", []any{"pending", 20, 0},
			[]string{"permissions USING INDEX permissions_status_created \\(status=\\?\\)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := s.writer.QueryContext(ctx, "EXPLAIN QUERY PLAN "+tc.query, tc.args...)
			require.NoError(t, err)
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, unused int
				var detail string
				require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
				plan = append(plan, detail)
			}
			require.NoError(t, rows.Err())
			all := strings.Join(plan, "\n")
			for _, w := range tc.want {
				if !strings.HasPrefix(w, "^") {
					w = "^SEARCH .*" + w // an index search, never a scan
				}
				require.Regexp(t, regexp.MustCompile(`(?m)`+w), all)
			}
		})
	}
}
