package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
)

// StorageUsage reads the agent's row of agent_usage, which triggers keep in
// step with the permissions table. The transaction holds the writer lock,
// so no other instance adds to it before the caller's insert.
func (t *tx) StorageUsage(_ context.Context, agent agentotp.AgentID) (agentotp.StorageUsage, error) {
	var u agentotp.StorageUsage
	err := t.scan(`SELECT permissions, bytes FROM agent_usage WHERE agent_id = $1`, []any{string(agent)}, &u.Permissions, &u.Bytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return agentotp.StorageUsage{}, nil
	}
	return u, storeErr("read storage usage", err)
}

// finalStatuses are the statuses PrunePermissions may delete.
var finalStatuses = []string{
	string(agentotp.StatusDenied), string(agentotp.StatusExpired), string(agentotp.StatusUsed), string(agentotp.StatusRevoked),
}

// pruneSQL deletes up to $3 final rows last changed before the cutoff, and
// their approvals first. A permission never changes before it is created,
// so "created before the cutoff" holds for every row last changed before
// it; that term lets the (status, created_at) index narrow the scan.
const pruneSQL = `WITH doomed AS (
		SELECT id FROM permissions WHERE status = ANY($1)
		AND created_at < $2 AND coalesce(updated_at, created_at) < $2 LIMIT $3
	), votes AS (
		DELETE FROM approvals WHERE permission_id IN (SELECT id FROM doomed)
	)
	DELETE FROM permissions WHERE id IN (SELECT id FROM doomed)`

// PrunePermissions deletes up to limit final permissions last changed
// before before, and their approvals. audit_events has no foreign keys, so
// the trail is untouched.
func (t *tx) PrunePermissions(_ context.Context, before time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	tag, err := t.exec(pruneSQL, finalStatuses, before.UnixNano(), limit)
	if err != nil {
		return 0, storeErr("prune permissions", err)
	}
	return int(tag.RowsAffected()), nil
}
