package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentotp/agentotp"
)

// auditKeyFile is where the audit key is generated when no key is given.
const auditKeyFile = "audit.key"

// auditKey returns the audit chain's MAC key, the same way for serve and
// for the local admin commands:
//
//   - the file named by --audit-key-file (AGENTOTP_AUDIT_KEY_FILE, config
//     auditKeyFile), which must exist;
//   - else AGENTOTP_AUDIT_KEY;
//   - else <data>/audit.key, created (0600) with 32 random bytes on first
//     use.
//
// A key is hex or base64 of at least 32 bytes. The generated default lives
// beside the database, so it only protects the trail against someone who
// can write the database but not read that file; keep the key elsewhere
// (a secret store, another disk, the environment) for real protection.
func auditKey(cfg Config) (*agentotp.AuditKey, error) {
	switch {
	case cfg.AuditKeyFile != "":
		b, err := os.ReadFile(cfg.AuditKeyFile)
		if err != nil {
			return nil, fmt.Errorf("audit-key-file: %w", err)
		}
		return parseAuditKey(cfg.AuditKeyFile, string(b))
	case cfg.AuditKey != "":
		return parseAuditKey("AGENTOTP_AUDIT_KEY", cfg.AuditKey.Reveal())
	}
	path := filepath.Join(cfg.Data, auditKeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		return parseAuditKey(path, string(b))
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read audit key: %w", err)
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, err
	}
	// Written aside, then linked into place: a process that finds the
	// file finds it whole, and of two processes creating it one wins.
	f, err := os.CreateTemp(cfg.Data, auditKeyFile+".new-*")
	if err != nil {
		return nil, fmt.Errorf("save audit key: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = fmt.Fprintln(f, hex.EncodeToString(k))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, path)
	}
	if errors.Is(err, os.ErrExist) {
		return auditKey(cfg) // another process made it first: use theirs
	}
	if err != nil {
		return nil, fmt.Errorf("save audit key: %w", err)
	}
	return agentotp.NewAuditKey(k)
}

// parseAuditKey decodes a key written in hex or base64; where names its
// source in errors.
func parseAuditKey(where, s string) (*agentotp.AuditKey, error) {
	b, err := decodeCallbackKey(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", where, err)
	}
	return agentotp.NewAuditKey(b)
}
