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
// runBatch). Statements whose result nobody reads at once (the job's
// savepoint, audit inserts) are deferred and travel with the next
// statement, or at the end of the job, in one round trip: the writer lock
// is held for fewer of them. After a statement fails, PostgreSQL refuses
// the rest of the transaction until its savepoint is rolled back, so the
// first failure is kept and every later call returns an error.
type tx struct {
	s       *Store
	q       pgx.Tx
	ctx     context.Context
	head    *auditHead // shared by the jobs of one batch
	pending []queued
	// savepoint says the job's SAVEPOINT is still pending (first in it).
	savepoint bool
	failed    error
	// broken is a failure of the savepoint itself: the batch cannot go on.
	broken error
}

// queued is a deferred statement; op and f translate its failure.
type queued struct {
	sql  string
	args []any
	op   string
	f    failure
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

// later defers a statement whose only possible answer is an error.
func (t *tx) later(op string, f failure, sql string, args ...any) error {
	if t.failed != nil {
		return t.aborted()
	}
	t.pending = append(t.pending, queued{sql: sql, args: args, op: op, f: f})
	return nil
}

// send runs the pending statements and then sql, if any, in one round
// trip, and returns the results positioned at sql's. A pending
// statement's failure comes back translated as its own, so that the
// caller does not take it for one of sql.
func (t *tx) send(sql string, args []any) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	for _, q := range t.pending {
		b.Queue(q.sql, q.args...)
	}
	if sql != "" {
		b.Queue(sql, args...)
	}
	pending, savepoint := t.pending, t.savepoint
	t.pending, t.savepoint = nil, false
	br := t.q.SendBatch(t.ctx, b)
	for i, q := range pending {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			if i == 0 && savepoint {
				t.broken = err
			}
			t.note(err)
			e := storeErr(q.op, err, q.f)
			var de *agentotp.Error
			if !errors.As(e, &de) {
				e = &agentotp.Error{Code: agentotp.CodeInternal, Message: q.op + " failed", Err: e}
			}
			return nil, e
		}
	}
	return br, nil
}

// flush runs the pending statements.
func (t *tx) flush() error {
	if len(t.pending) == 0 || t.failed != nil {
		return nil
	}
	br, err := t.send("", nil)
	if err != nil {
		return err
	}
	return t.note(br.Close())
}

func (t *tx) exec(sql string, args ...any) (pgconn.CommandTag, error) {
	if t.failed != nil {
		return pgconn.CommandTag{}, t.aborted()
	}
	if len(t.pending) == 0 {
		tag, err := t.q.Exec(t.ctx, sql, args...)
		return tag, t.note(err)
	}
	br, err := t.send(sql, args)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, t.note(err)
}

// scan runs a query expected to return one row and scans it.
func (t *tx) scan(sql string, args []any, dest ...any) error {
	if t.failed != nil {
		return t.aborted()
	}
	if len(t.pending) == 0 {
		return t.note(t.q.QueryRow(t.ctx, sql, args...).Scan(dest...))
	}
	br, err := t.send(sql, args)
	if err != nil {
		return err
	}
	err = br.QueryRow().Scan(dest...)
	if cerr := br.Close(); err == nil || errors.Is(err, pgx.ErrNoRows) && cerr != nil {
		err = cerr
	}
	return t.note(err)
}

// row runs a query expected to return one row, for a scanner function.
func (t *tx) row(sql string, args ...any) pgx.Row { return txRow{t, sql, args} }

type txRow struct {
	t    *tx
	sql  string
	args []any
}

func (r txRow) Scan(dest ...any) error { return r.t.scan(r.sql, r.args, dest...) }

// query runs a query for collect.
func (t *tx) query(sql string, args ...any) (pgx.Rows, error) {
	if err := t.flush(); err != nil {
		return nil, err
	}
	if t.failed != nil {
		return nil, t.aborted()
	}
	rows, err := t.q.Query(t.ctx, sql, args...)
	return rows, t.note(err)
}
