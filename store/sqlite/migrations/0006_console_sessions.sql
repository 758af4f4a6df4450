-- Web console sessions. The browser holds the secret; only its SHA-256 is
-- kept, so reading this table signs nobody in. key_hash is the user's key
-- hash at sign-in: a session is honoured only while the user still has
-- that key. Deleting a user deletes their sessions.
CREATE TABLE console_sessions (
	hash         TEXT PRIMARY KEY,
	user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	key_hash     TEXT NOT NULL,
	created_at   INTEGER NOT NULL,
	last_seen_at INTEGER NOT NULL,
	expires_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX console_sessions_user ON console_sessions (user_id);
