package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/sqlite"
)

// openStore opens the store cfg names: SQLite (the default, a file under
// --data or --db PATH) or PostgreSQL (--db postgres://…). adopt keys an
// audit chain that has no MAC (agentotp audit adopt).
func openStore(ctx context.Context, cfg Config, key *agentotp.AuditKey, adopt bool) (agentotp.Store, error) {
	if postgresDSN(cfg.DB) {
		st, err := postgres.Open(ctx, cfg.DB, postgres.Options{AuditKey: key, AdoptUnkeyedChain: adopt})
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", cfg.StoreName(), err)
		}
		return st, nil
	}
	st, err := sqlite.Open(ctx, cfg.DBPath(), sqlite.Options{AuditKey: key, AdoptUnkeyedChain: adopt})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", cfg.StoreName(), err)
	}
	return st, nil
}

// sharedKeys refuses to make up a key that every instance on a shared
// database must hold alike: with PostgreSQL the audit key (and the
// callback key, when callbacks are on) must come from the environment, a
// file, or one already in the data directory — a fresh per-instance key
// would fork the chain's MACs or the callbacks' signatures.
func sharedKeys(cfg Config) error {
	if !postgresDSN(cfg.DB) {
		return nil
	}
	have := func(name string) bool {
		_, err := os.Stat(filepath.Join(cfg.Data, name))
		return err == nil
	}
	if cfg.AuditKey == "" && cfg.AuditKeyFile == "" && !have(auditKeyFile) {
		return errors.New("with PostgreSQL every instance needs the same audit key: set AGENTOTP_AUDIT_KEY (64 hex digits, e.g. from `openssl rand -hex 32`) or --audit-key-file")
	}
	if len(cfg.CallbackHosts()) > 0 && cfg.CallbackKey == "" && !have(callbackKeyFile) {
		return errors.New("with PostgreSQL and callbacks on, every instance needs the same callback key: set AGENTOTP_CALLBACK_KEY")
	}
	return nil
}
