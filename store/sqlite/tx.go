package sqlite

import (
	"context"
	"database/sql"
	"sync/atomic"

	"github.com/agentotp/agentotp"
)

var _ agentotp.Tx = (*tx)(nil)

// tx is one write transaction of Update. Its reads see its own writes.
//
// Its methods run their statements without the caller's cancellation: the
// transaction is shared by a whole batch of callers, and the driver answers
// a cancelled statement by interrupting the connection, which would roll
// back everyone's work. A job whose caller left before it started is
// skipped by the writer instead.
type tx struct {
	s    *Store
	tx   countedConn
	head *auditHead // shared by the jobs of one batch
	// fresh holds the permissions this job created, with their token
	// hash: their trail is the events this job is writing, so checking
	// it against the store would only read back what was just written.
	fresh map[agentotp.PermissionID]string
}

// countedConn is the writer connection inside the batch's transaction,
// counting the statements run through it (Stats).
type countedConn struct {
	*sql.Conn
	n *atomic.Int64
}

func (c countedConn) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	c.n.Add(1)
	return c.Conn.ExecContext(context.WithoutCancel(ctx), q, args...)
}

func (c countedConn) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	c.n.Add(1)
	return c.Conn.QueryContext(context.WithoutCancel(ctx), q, args...)
}

func (c countedConn) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	c.n.Add(1)
	return c.Conn.QueryRowContext(context.WithoutCancel(ctx), q, args...)
}

// Stmt counts the prepared statement's one run that follows: every caller
// takes a statement to run it once.
func (c countedConn) Stmt(st *sql.Stmt) *sql.Stmt {
	c.n.Add(1)
	return st
}

// auditHead caches the chain's newest link for the rest of a batch: the
// batch holds the write lock, so only its own appends can move it. A batch
// may start with it known, from the last batch (startHead).
type auditHead struct {
	known bool
	seq   int64
	hash  string
	moved bool // appended in this batch: write audit_head before commit
}

// stmt is a statement prepared on the writer connection, to run in this
// transaction.
func (t *tx) stmt(st *sql.Stmt) *sql.Stmt {
	return t.tx.Stmt(st)
}
