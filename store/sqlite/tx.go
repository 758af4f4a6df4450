package sqlite

import (
	"context"
	"database/sql"

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
	tx   *sql.Tx
	head *auditHead // shared by the jobs of one batch
}

// auditHead caches the chain's newest link for the rest of a batch: the
// batch holds the write lock, so only its own appends can move it.
type auditHead struct {
	known bool
	seq   int64
	hash  string
	moved bool // appended in this batch: write audit_head before commit
}

// stmt binds a statement prepared on the writer to this transaction; as
// both live on the one writer connection, database/sql reuses the prepared
// statement instead of preparing it again.
func (t *tx) stmt(ctx context.Context, st *sql.Stmt) *sql.Stmt {
	return t.tx.StmtContext(context.WithoutCancel(ctx), st)
}
