package main

import (
	"context"
	"fmt"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

// openStore opens the store cfg names: SQLite (the default, a file under
// --data or --db PATH).
func openStore(ctx context.Context, cfg Config, key *agentotp.AuditKey) (agentotp.Store, error) {
	st, err := sqlite.Open(ctx, cfg.DBPath(), sqlite.Options{AuditKey: key})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", cfg.StoreName(), err)
	}
	return st, nil
}
