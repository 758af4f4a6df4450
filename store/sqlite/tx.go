package sqlite

import (
	"context"
	"database/sql"

	"github.com/agentotp/agentotp"
)

var _ agentotp.Tx = (*tx)(nil)

// tx is one write transaction of Update. Its reads see its own writes.
type tx struct {
	s  *Store
	tx *sql.Tx
}

// stmt binds a statement prepared on the writer to this transaction; as
// both live on the one writer connection, database/sql reuses the prepared
// statement instead of preparing it again.
func (t *tx) stmt(ctx context.Context, st *sql.Stmt) *sql.Stmt { return t.tx.StmtContext(ctx, st) }
