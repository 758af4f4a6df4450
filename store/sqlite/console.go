package sqlite

import (
	"context"
	"database/sql"
	"time"

	"github.com/agentotp/agentotp"
)

// Console sessions: one row per signed-in browser, keyed by the SHA-256 of
// its secret.

const selectConsoleSession = `SELECT hash, user_id, key_hash, created_at, last_seen_at, expires_at
	FROM console_sessions WHERE hash = ?`

var consoleSessionNotFound = failure{notFound: "session not found"}

// ConsoleSession reads one session by the hash of its secret.
func (s *Store) ConsoleSession(ctx context.Context, hash string) (*agentotp.ConsoleSession, error) {
	var (
		cs                     agentotp.ConsoleSession
		created, seen, expires sql.NullInt64
	)
	err := s.reader.QueryRowContext(ctx, selectConsoleSession, hash).Scan(&cs.Hash, &cs.UserID, &cs.KeyHash, &created, &seen, &expires)
	if err != nil {
		return nil, storeErr("read console session", err, consoleSessionNotFound)
	}
	cs.CreatedAt, cs.LastSeenAt, cs.ExpiresAt = fromNanos(created), fromNanos(seen), fromNanos(expires)
	return &cs, nil
}

func (t *tx) CreateConsoleSession(ctx context.Context, cs *agentotp.ConsoleSession) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	_, err := t.tx.ExecContext(ctx, `INSERT INTO console_sessions (hash, user_id, key_hash, created_at, last_seen_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?)`, cs.Hash, string(cs.UserID), cs.KeyHash, cs.CreatedAt.UnixNano(), cs.LastSeenAt.UnixNano(), cs.ExpiresAt.UnixNano())
	return storeErr("create console session", err, failure{conflict: "session already exists", missing: "user not found"})
}

func (t *tx) TouchConsoleSession(ctx context.Context, hash string, at time.Time) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	res, err := t.tx.ExecContext(ctx, `UPDATE console_sessions SET last_seen_at = max(last_seen_at, ?) WHERE hash = ?`, at.UnixNano(), hash)
	return oneRow("touch console session", res, err, consoleSessionNotFound, failure{})
}

func (t *tx) DeleteConsoleSession(ctx context.Context, hash string) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	res, err := t.tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE hash = ?`, hash)
	return oneRow("delete console session", res, err, consoleSessionNotFound, failure{})
}

func (t *tx) DeleteStaleConsoleSessions(ctx context.Context, now, idleSince time.Time) (int, error) {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	res, err := t.tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE expires_at <= ? OR last_seen_at < ?`,
		now.UnixNano(), idleSince.UnixNano())
	if err != nil {
		return 0, storeErr("delete stale console sessions", err)
	}
	n, err := res.RowsAffected()
	return int(n), storeErr("delete stale console sessions", err)
}
