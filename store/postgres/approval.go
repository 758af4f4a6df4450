package postgres

import (
	"context"

	"github.com/agentotp/agentotp"
)

const selectApprovals = `SELECT permission_id, user_id, approved, reason, created_at
	FROM approvals WHERE permission_id = $1 ORDER BY created_at NULLS FIRST, seq`

func scanApproval(sc scanner) (agentotp.Approval, error) {
	var (
		a       agentotp.Approval
		user    *string
		created *int64
	)
	if err := sc.Scan(&a.PermissionID, &user, &a.Approved, &a.Reason, &created); err != nil {
		return a, err
	}
	a.UserID, a.CreatedAt = agentotp.UserID(deref(user)), fromNanos(created)
	return a, nil
}

// Approvals lists a permission's votes in the order they were cast.
func (s *Store) Approvals(ctx context.Context, id agentotp.PermissionID) ([]agentotp.Approval, error) {
	rows, err := s.pool.Query(ctx, selectApprovals, string(id))
	if err != nil {
		return nil, storeErr("list approvals", err)
	}
	out, err := collect(rows, scanApproval)
	return out, storeErr("list approvals", err)
}

func (t *tx) Approvals(_ context.Context, id agentotp.PermissionID) ([]agentotp.Approval, error) {
	rows, err := t.query(selectApprovals, string(id))
	if err != nil {
		return nil, storeErr("list approvals", err)
	}
	out, err := collect(rows, scanApproval)
	return out, storeErr("list approvals", t.note(err))
}

// AddApproval records one vote; a second vote by the same user on the same
// permission is a conflict, after which the transaction goes on (the
// service records the refusal in it).
func (t *tx) AddApproval(_ context.Context, a agentotp.Approval) error {
	var user any
	if a.UserID != "" {
		user = string(a.UserID)
	}
	tag, err := t.exec(`INSERT INTO approvals (permission_id, user_id, approved, reason, created_at)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, string(a.PermissionID), user, a.Approved, a.Reason, nanos(a.CreatedAt))
	return inserted("add approval", tag, err, failure{
		conflict: "this user has already voted on this permission",
		missing:  "permission or user not found",
	})
}
