package sqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Finding what to prune range-scans the (status, created_at) index: it does
// not read every decided permission the table holds.
func TestPruneUsesIndex(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "plan.db"), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	now := time.Now().UnixNano()
	rows, err := s.reader.QueryContext(ctx, "EXPLAIN QUERY PLAN "+pruneCandidatesSQL,
		"denied", "expired", "used", "revoked", now, now, 500)
	require.NoError(t, err)
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		require.NoError(t, rows.Scan(&id, &parent, &notused, &detail))
		plan = append(plan, detail)
	}
	require.NoError(t, rows.Err())
	joined := strings.Join(plan, "\n")
	require.Contains(t, joined, "permissions_status_created (status=? AND created_at<?)", joined)
	require.NotContains(t, joined, "SCAN permissions", joined)
}
