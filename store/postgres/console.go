package postgres

import (
	"context"
	"time"

	"github.com/agentotp/agentotp"
)

// Console sessions: one row per signed-in browser, keyed by the SHA-256 of
// its secret.

const selectConsoleSession = `SELECT hash, user_id, key_hash, created_at, last_seen_at, expires_at
	FROM console_sessions WHERE hash = $1`

var consoleSessionNotFound = failure{notFound: "session not found"}

// ConsoleSession reads one session by the hash of its secret.
func (s *Store) ConsoleSession(ctx context.Context, hash string) (*agentotp.ConsoleSession, error) {
	var (
		cs                     agentotp.ConsoleSession
		created, seen, expires int64
	)
	err := s.pool.QueryRow(ctx, selectConsoleSession, hash).Scan(&cs.Hash, &cs.UserID, &cs.KeyHash, &created, &seen, &expires)
	if err != nil {
		return nil, storeErr("read console session", err, consoleSessionNotFound)
	}
	cs.CreatedAt, cs.LastSeenAt, cs.ExpiresAt = fromNanos(&created), fromNanos(&seen), fromNanos(&expires)
	return &cs, nil
}

func (t *tx) CreateConsoleSession(_ context.Context, cs *agentotp.ConsoleSession) error {
	tag, err := t.exec(`INSERT INTO console_sessions (hash, user_id, key_hash, created_at, last_seen_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, cs.Hash, string(cs.UserID), cs.KeyHash,
		cs.CreatedAt.UnixNano(), cs.LastSeenAt.UnixNano(), cs.ExpiresAt.UnixNano())
	return inserted("create console session", tag, err, failure{conflict: "session already exists", missing: "user not found"})
}

func (t *tx) TouchConsoleSession(_ context.Context, hash string, at time.Time) error {
	tag, err := t.exec(`UPDATE console_sessions SET last_seen_at = greatest(last_seen_at, $1) WHERE hash = $2`, at.UnixNano(), hash)
	return oneRow("touch console session", tag, err, consoleSessionNotFound, failure{})
}

func (t *tx) DeleteConsoleSession(_ context.Context, hash string) error {
	tag, err := t.exec(`DELETE FROM console_sessions WHERE hash = $1`, hash)
	return oneRow("delete console session", tag, err, consoleSessionNotFound, failure{})
}

func (t *tx) DeleteStaleConsoleSessions(_ context.Context, now, idleSince time.Time) (int, error) {
	tag, err := t.exec(`DELETE FROM console_sessions WHERE expires_at <= $1 OR last_seen_at < $2`,
		now.UnixNano(), idleSince.UnixNano())
	if err != nil {
		return 0, storeErr("delete stale console sessions", err)
	}
	return int(tag.RowsAffected()), nil
}
