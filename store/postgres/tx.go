package postgres

import (
	"context"
	"errors"
	"unicode/utf8"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var _ agentotp.Tx = (*tx)(nil)

// wtx is one batch's write transaction, on one connection of the pool.
//
// It counts round trips, since the writer lock is held through all of
// them. Statements whose result nobody reads at once are queued and
// travel, in one pgx batch (one round trip), with the next statement whose
// answer is needed: BEGIN, the writer lock and the read of the audit head
// with a batch's first statement; a job's SAVEPOINT with its first; audit
// inserts with whatever follows them, possibly in the next job or with the
// COMMIT. PostgreSQL runs a batch's statements in order and skips the rest
// of it after one fails, so a queued statement's failure is noticed before
// any later statement's answer is used.
type wtx struct {
	s       *Store
	conn    *pgx.Conn
	ctx     context.Context
	pending []queued
	// head is the chain's newest link for the rest of the batch: the
	// batch holds the writer lock, so only its own appends move it.
	head auditHead
	// link is the newest event and recorded head as read at BEGIN, checked
	// by the first append.
	link     auditLink
	linkRead bool
	// sent says statements reached the server: the transaction is open.
	sent bool
	// nested says each job runs in a savepoint of its own.
	nested bool
	// broken is a failure after which the transaction cannot go on.
	broken  error
	results []agentotp.WriteResult
	heads   []auditHead // head as each job found it
	cur     *tx         // the job running, nil at commit
}

// tx is one Update's share of a write transaction. Its reads see its own
// writes and those of the jobs before it in the batch.
//
// Its statements run with the batch's context, not the caller's (see
// runBatch). After a statement fails, PostgreSQL refuses the rest of the
// transaction until its savepoint is rolled back, so the first failure is
// kept and every later call returns an error.
type tx struct {
	w      *wtx
	s      *Store
	i      int // the job's index in the batch
	failed error
	// spQueued says the job's SAVEPOINT is still queued: nothing of the job
	// has reached the server.
	spQueued bool
	// start is where the job's queued statements begin in w.pending.
	start int
	// mustFlush says a queued statement of the job might fail for a reason
	// of its own: send it before the job counts as done, so that its
	// failure fails this job and not the next.
	mustFlush bool
	// trail is what the statement just run read for the trail check of an
	// event that may come next, kept up to date by the audit events
	// appended since (follow); any other statement drops it. Only audit
	// inserts (AppendAudit's) may be queued while it is kept.
	trail *trailRow
	// lost says an earlier job's queued statement failed in this job's
	// round trip and took this job down with it: its savepoint never ran.
	lost bool
}

// queued is a deferred statement. op and f translate its failure; job
// owns it (-1: the transaction's own); read, if set, reads its result.
type queued struct {
	sql       string
	args      []any
	op        string
	f         failure
	job       int
	savepoint bool
	read      func(pgx.BatchResults) error
}

// auditHead is the chain's newest link during a batch.
type auditHead struct {
	known bool
	seq   int64
	hash  string
	moved bool // appended in this batch: write audit_head before commit
}

// note records err as the failure that ended the job's statements, unless
// it is only "no rows".
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

// later defers a statement whose only possible answer is an error. safe
// says it cannot fail but for reasons that end the whole transaction
// anyway (the connection, the server), so it may travel with the next
// job's statements.
func (t *tx) later(op string, f failure, safe bool, sql string, args ...any) error {
	if t.failed != nil {
		return t.aborted()
	}
	t.w.pending = append(t.w.pending, queued{sql: sql, args: args, op: op, f: f, job: t.i})
	if !safe {
		t.mustFlush = true
	}
	return nil
}

// translate turns a queued statement's failure into its own error, so that
// nobody takes it for the failure of another.
func translate(q queued, err error) error {
	e := storeErr(q.op, err, q.f)
	var de *agentotp.Error
	if !errors.As(e, &de) {
		e = &agentotp.Error{Code: agentotp.CodeInternal, Message: q.op + " failed", Err: e}
	}
	return e
}

// send runs the queued statements and then last, if any, in one round
// trip, and returns the results positioned at last's. The error of a
// queued statement comes back translated as its own; if it is an earlier
// job's, that job and every one after it fail (see lose).
func (w *wtx) send(last *queued) (pgx.BatchResults, error) {
	if w.broken != nil {
		return nil, w.broken
	}
	b := &pgx.Batch{}
	for _, q := range w.pending {
		b.Queue(q.sql, q.args...)
	}
	if last != nil {
		b.Queue(last.sql, last.args...)
	}
	pending := w.pending
	w.pending = nil
	w.sent = true
	if t := w.cur; t != nil {
		t.spQueued, t.start, t.mustFlush = false, 0, false
	}
	br := w.conn.SendBatch(w.ctx, b)
	for _, q := range pending {
		var err error
		if q.read != nil {
			err = q.read(br)
		} else {
			_, err = br.Exec()
		}
		if err == nil {
			continue
		}
		_ = br.Close()
		e := translate(q, err)
		t := w.cur
		var pe *pgconn.PgError
		var pre pgx.ErrPreprocessingBatch
		switch {
		case !errors.As(err, &pe) || errors.As(err, &pre):
			// Not the server's answer to q: the connection failed, or
			// nothing of the batch ran (pgx could not prepare or encode
			// it). Which savepoints ran is unknown.
			w.broken = e
		case q.job < 0 || q.savepoint || !w.nested:
			w.broken = e
		case t == nil || q.job != t.i:
			e = w.lose(q.job, e)
			err = e
		}
		if t != nil {
			t.note(err)
		}
		return nil, e
	}
	return br, nil
}

// lose fails job j, whose queued statement failed with err after it had
// finished, and every job after it: their audit events were linked to
// j's. The transaction goes back to j's savepoint, the newest that ran
// (every later statement was in the same round trip, skipped). It returns
// what the jobs after j get.
func (w *wtx) lose(j int, err error) error {
	if w.results[j].OK() {
		w.results[j].Err = err
	}
	lost := &agentotp.Error{Code: agentotp.CodeUnavailable, Message: "transaction aborted by an earlier failure, try again", Err: err}
	end := len(w.results)
	if t := w.cur; t != nil {
		t.lost, end = true, t.i // its result is fn's, failed by send
	}
	for k := j + 1; k < end; k++ {
		if w.results[k].OK() {
			w.results[k].Err = lost
		}
	}
	w.head = w.heads[j]
	w.rollbackJob()
	return lost
}

// rollbackJob rolls the transaction back to the newest savepoint. In an
// aborted transaction it must run at once (the simple protocol, no
// arguments): pgx prepares a batch's new statements first, which an
// aborted transaction refuses. Otherwise it travels with what follows.
func (w *wtx) rollbackJob() {
	const sql = "ROLLBACK TO SAVEPOINT job"
	if w.conn.PgConn().TxStatus() != 'E' {
		w.pending = append(w.pending, queued{sql: sql, op: "roll back savepoint", job: -1})
		return
	}
	if _, err := w.conn.Exec(w.ctx, sql); err != nil && w.broken == nil {
		w.broken = storeErr("roll back savepoint", err)
	}
}

// flush runs the queued statements.
func (t *tx) flush() error {
	if len(t.w.pending) == 0 || t.failed != nil {
		return nil
	}
	br, err := t.w.send(nil)
	if err != nil {
		return err
	}
	return t.note(br.Close())
}

func (t *tx) exec(sql string, args ...any) (pgconn.CommandTag, error) {
	t.trail = nil
	if t.failed != nil {
		return pgconn.CommandTag{}, t.aborted()
	}
	if len(t.w.pending) == 0 {
		tag, err := t.w.conn.Exec(t.w.ctx, sql, args...)
		return tag, t.note(err)
	}
	br, err := t.w.send(&queued{sql: sql, args: args})
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
	t.trail = nil
	if t.failed != nil {
		return t.aborted()
	}
	if len(t.w.pending) == 0 {
		return t.note(t.w.conn.QueryRow(t.w.ctx, sql, args...).Scan(dest...))
	}
	br, err := t.w.send(&queued{sql: sql, args: args})
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
	t.trail = nil
	if err := t.flush(); err != nil {
		return nil, err
	}
	if t.failed != nil {
		return nil, t.aborted()
	}
	rows, err := t.w.conn.Query(t.w.ctx, sql, args...)
	return rows, t.note(err)
}

// storable reports whether PostgreSQL takes s in a text column, an indexed
// one included, for certain: valid UTF-8 without NUL, and short.
func storable(s string, limit int) bool {
	if len(s) > limit || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return false
		}
	}
	return true
}

// shallowJSON reports whether valid JSON nests at most a few levels, so
// that PostgreSQL's recursive json parser takes it for certain.
func shallowJSON(b []byte) bool {
	depth, in, esc := 0, false, false
	for _, c := range b {
		switch {
		case esc:
			esc = false
		case in && c == '\\':
			esc = true
		case c == '"':
			in = !in
		case in:
		case c == '[' || c == '{':
			if depth++; depth > 64 {
				return false
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return true
}
