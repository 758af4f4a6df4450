package postgres

import (
	"context"
	"errors"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var _ agentotp.Tx = (*tx)(nil)

// tx is one Update's share of a write transaction. Its reads see its own
// writes and those of the jobs before it in the batch.
//
// Its statements run with the batch's context, not the caller's (see
// runBatch). After a statement fails, PostgreSQL refuses the rest of the
// transaction until its savepoint is rolled back, so the first failure is
// kept and every later call returns it.
type tx struct {
	s      *Store
	q      pgx.Tx
	ctx    context.Context
	head   *auditHead // shared by the jobs of one batch
	failed error
}

// auditHead caches the chain's newest link for the rest of a batch: the
// batch holds the writer lock, so only its own appends can move it.
type auditHead struct {
	known bool
	seq   int64
	hash  string
	moved bool // appended in this batch: write audit_head before commit
}

// note records err as the failure that ended the transaction, unless it
// is only "no rows".
func (t *tx) note(err error) error {
	if err != nil && !errors.Is(err, pgx.ErrNoRows) && t.failed == nil {
		t.failed = err
	}
	return err
}

// aborted is what every call returns after a statement failed.
func (t *tx) aborted() error {
	return &agentotp.Error{Code: agentotp.CodeInternal, Message: "transaction aborted by an earlier failure", Err: t.failed}
}

func (t *tx) exec(sql string, args ...any) (pgconn.CommandTag, error) {
	if t.failed != nil {
		return pgconn.CommandTag{}, t.aborted()
	}
	tag, err := t.q.Exec(t.ctx, sql, args...)
	return tag, t.note(err)
}

// scan runs a query expected to return one row and scans it.
func (t *tx) scan(sql string, args []any, dest ...any) error {
	if t.failed != nil {
		return t.aborted()
	}
	return t.note(t.q.QueryRow(t.ctx, sql, args...).Scan(dest...))
}

// row runs a query expected to return one row, for a scanner function.
func (t *tx) row(sql string, args ...any) pgx.Row {
	if t.failed != nil {
		return failedRow{t.aborted()}
	}
	return noteRow{t, t.q.QueryRow(t.ctx, sql, args...)}
}

// query runs a query for collect.
func (t *tx) query(sql string, args ...any) (pgx.Rows, error) {
	if t.failed != nil {
		return nil, t.aborted()
	}
	rows, err := t.q.Query(t.ctx, sql, args...)
	return rows, t.note(err)
}

type failedRow struct{ err error }

func (r failedRow) Scan(...any) error { return r.err }

type noteRow struct {
	t *tx
	r pgx.Row
}

func (r noteRow) Scan(dest ...any) error { return r.t.note(r.r.Scan(dest...)) }
