package sqlite

import (
	"context"
	"database/sql"

	"github.com/agentotp/agentotp"
)

var _ agentotp.Tx = (*tx)(nil)

// tx is one write transaction of Update. Its reads see its own writes.
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
func (t *tx) stmt(ctx context.Context, st *sql.Stmt) *sql.Stmt { return t.tx.StmtContext(ctx, st) }
