package sqlite

import (
	"context"
	"database/sql"

	"github.com/agentotp/agentotp"
)

const selectApprovals = `SELECT permission_id, user_id, approved, reason, created_at
	FROM approvals WHERE permission_id = ? ORDER BY created_at, rowid`

func scanApproval(sc scanner) (agentotp.Approval, error) {
	var (
		a       agentotp.Approval
		user    sql.NullString
		created sql.NullInt64
	)
	if err := sc.Scan(&a.PermissionID, &user, &a.Approved, &a.Reason, &created); err != nil {
		return a, err
	}
	a.UserID, a.CreatedAt = agentotp.UserID(user.String), fromNanos(created)
	return a, nil
}

func approvals(ctx context.Context, q querier, id agentotp.PermissionID) ([]agentotp.Approval, error) {
	rows, err := q.QueryContext(ctx, selectApprovals, string(id))
	if err != nil {
		return nil, storeErr("list approvals", err)
	}
	out, err := collect(rows, scanApproval)
	return out, storeErr("list approvals", err)
}

// Approvals lists a permission's votes in the order they were cast.
func (s *Store) Approvals(ctx context.Context, id agentotp.PermissionID) ([]agentotp.Approval, error) {
	return approvals(ctx, s.reader, id)
}

func (t *tx) Approvals(ctx context.Context, id agentotp.PermissionID) ([]agentotp.Approval, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	return approvals(ctx, t.tx, id)
}

// AddApproval records one vote; a second vote by the same user on the same
// permission is a conflict.
func (t *tx) AddApproval(ctx context.Context, a agentotp.Approval) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	var user any
	if a.UserID != "" {
		user = string(a.UserID)
	}
	_, err := t.tx.ExecContext(ctx, `INSERT INTO approvals (permission_id, user_id, approved, reason, created_at)
		VALUES (?, ?, ?, ?, ?)`, string(a.PermissionID), user, boolInt(a.Approved), a.Reason, nanos(a.CreatedAt))
	return storeErr("add approval", err, failure{
		conflict: "this user has already voted on this permission",
		missing:  "permission or user not found",
	})
}
