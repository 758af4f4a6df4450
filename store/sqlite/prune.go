package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

// storageUsageSQL is prepared on the writer: the quota check runs it in
// every request's transaction.
const storageUsageSQL = `SELECT permissions, bytes FROM agent_usage WHERE agent_id = ?`

// StorageUsage reads the agent's row of agent_usage, which triggers keep in
// step with the permissions table (migration 0005).
func (t *tx) StorageUsage(ctx context.Context, agent agentotp.AgentID) (agentotp.StorageUsage, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	var u agentotp.StorageUsage
	err := t.stmt(t.s.storageUsage).QueryRowContext(ctx, string(agent)).Scan(&u.Permissions, &u.Bytes)
	if errors.Is(err, sql.ErrNoRows) {
		return agentotp.StorageUsage{}, nil
	}
	return u, storeErr("read storage usage", err)
}

// finalStatuses are the statuses PrunePermissions may delete.
var finalStatuses = []agentotp.Status{
	agentotp.StatusDenied, agentotp.StatusExpired, agentotp.StatusUsed, agentotp.StatusRevoked,
}

// pruneCandidatesSQL selects prunable rows. A permission never changes
// before it is created, so "created before the cutoff" holds for every row
// last changed before it; that term lets SQLite range-scan the (status,
// created_at) index instead of reading every final row.
var pruneCandidatesSQL = `SELECT id FROM permissions WHERE status IN (?` +
	strings.Repeat(", ?", len(finalStatuses)-1) + `)
	AND created_at < ? AND coalesce(updated_at, created_at) < ? LIMIT ?`

// PrunePermissions deletes up to limit final permissions last changed
// before before, and their approvals. audit_events has no foreign keys, so
// the trail is untouched.
func (t *tx) PrunePermissions(ctx context.Context, before time.Time, limit int) (int, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	if limit <= 0 {
		return 0, nil
	}
	args := make([]any, 0, len(finalStatuses)+3)
	for _, st := range finalStatuses {
		args = append(args, string(st))
	}
	args = append(args, before.UnixNano(), before.UnixNano(), limit)
	rows, err := t.tx.QueryContext(ctx, pruneCandidatesSQL, args...)
	if err != nil {
		return 0, storeErr("select permissions to prune", err)
	}
	ids, err := collect(rows, func(sc scanner) (any, error) {
		var id string
		err := sc.Scan(&id)
		return id, err
	})
	if err != nil || len(ids) == 0 {
		return 0, storeErr("select permissions to prune", err)
	}
	in := "(?" + strings.Repeat(", ?", len(ids)-1) + ")"
	if _, err := t.tx.ExecContext(ctx, `DELETE FROM approvals WHERE permission_id IN `+in, ids...); err != nil {
		return 0, storeErr("prune approvals", err)
	}
	res, err := t.tx.ExecContext(ctx, `DELETE FROM permissions WHERE id IN `+in, ids...)
	if err != nil {
		return 0, storeErr("prune permissions", err)
	}
	n, err := res.RowsAffected()
	return int(n), storeErr("prune permissions", err)
}

// Vacuum compacts the database file: pruned rows leave free pages that new
// rows reuse, but the file only shrinks when it is rewritten without them.
// VACUUM holds the write lock while it runs (writers in this and other
// processes wait; readers go on) and needs about the database's size in
// free disk space; the write-ahead log is truncated afterwards.
func (s *Store) Vacuum(ctx context.Context) error {
	// Between batches: VACUUM cannot run in a transaction.
	if err := s.lockWriter(ctx); err != nil {
		return storeErr("vacuum", err)
	}
	defer func() { <-s.writerSem }()
	if _, err := s.writer.ExecContext(ctx, "VACUUM"); err != nil {
		return storeErr("vacuum", err)
	}
	_, err := s.writer.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	return storeErr("checkpoint after vacuum", err)
}
