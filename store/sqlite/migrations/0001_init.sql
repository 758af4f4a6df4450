-- Initial schema. Times are INTEGER unix nanoseconds (UTC), NULL for the
-- zero time. JSON objects are TEXT, NULL for a nil map or slice.

CREATE TABLE agents (
	id            TEXT PRIMARY KEY,
	name          TEXT NOT NULL UNIQUE,
	description   TEXT NOT NULL,
	metadata_json TEXT,
	active        INTEGER NOT NULL CHECK (active IN (0, 1)),
	key_hash      TEXT NOT NULL,
	key_prefix    TEXT NOT NULL,
	created_at    INTEGER,
	updated_at    INTEGER
) STRICT;

-- Empty hashes (no key) are not keys and must not collide.
CREATE UNIQUE INDEX agents_key_hash ON agents (key_hash) WHERE key_hash <> '';

CREATE TABLE users (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL UNIQUE,
	role        TEXT NOT NULL,
	telegram_id INTEGER NOT NULL,
	active      INTEGER NOT NULL CHECK (active IN (0, 1)),
	key_hash    TEXT NOT NULL,
	key_prefix  TEXT NOT NULL,
	created_at  INTEGER,
	updated_at  INTEGER
) STRICT;

CREATE UNIQUE INDEX users_key_hash ON users (key_hash) WHERE key_hash <> '';
CREATE UNIQUE INDEX users_telegram_id ON users (telegram_id) WHERE telegram_id <> 0;

-- policies.agent_id deliberately has no foreign key: ON DELETE SET NULL
-- would turn a rule for one deleted agent into a rule for all agents, and
-- CASCADE would delete the rule without an audit event. A rule naming a
-- deleted agent matches nobody.
CREATE TABLE policies (
	id                  TEXT PRIMARY KEY,
	name                TEXT NOT NULL UNIQUE,
	description         TEXT NOT NULL,
	priority            INTEGER NOT NULL,
	agent_id            TEXT NOT NULL,
	conditions_json     TEXT,
	when_expr           TEXT NOT NULL,
	effect              TEXT NOT NULL CHECK (effect IN ('deny', 'require_approval', 'auto_approve')),
	scope_template_json TEXT,
	approvers_json      TEXT,
	quorum              INTEGER NOT NULL,
	token_ttl_ns        INTEGER NOT NULL,
	token_uses          INTEGER NOT NULL,
	use_when            TEXT NOT NULL,
	active              INTEGER NOT NULL CHECK (active IN (0, 1)),
	created_at          INTEGER,
	updated_at          INTEGER
) STRICT;

CREATE TABLE permissions (
	id                      TEXT PRIMARY KEY,
	-- SET NULL keeps the history when an agent is deleted; the audit trail
	-- still names it.
	agent_id                TEXT REFERENCES agents (id) ON DELETE SET NULL,
	action                  TEXT NOT NULL,
	resource                TEXT NOT NULL,
	scope_json              TEXT,
	context_json            TEXT,
	idempotency_key         TEXT NOT NULL,
	status                  TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'used', 'revoked')),
	created_at              INTEGER,
	updated_at              INTEGER,
	approval_expires_at     INTEGER,

	decision_effect         TEXT NOT NULL CHECK (decision_effect IN ('deny', 'require_approval', 'auto_approve')),
	decision_rule           TEXT NOT NULL,
	decision_policy_version TEXT NOT NULL,
	decision_reason         TEXT NOT NULL,
	decision_scope_json     TEXT,
	decision_token_ttl_ns   INTEGER NOT NULL,
	decision_uses           INTEGER NOT NULL,
	decision_use_when       TEXT NOT NULL,
	decision_approvers_json TEXT,
	decision_quorum         INTEGER NOT NULL,
	decision_event_id       TEXT NOT NULL,
	decided_by              TEXT NOT NULL,
	decided_at              INTEGER,
	decided_reason          TEXT NOT NULL,

	granted_scope_json      TEXT,
	token_ttl_ns            INTEGER NOT NULL,
	uses                    INTEGER NOT NULL,
	uses_remaining          INTEGER NOT NULL CHECK (uses_remaining >= 0),
	token_expires_at        INTEGER,
	token_hash              TEXT, -- NULL until issued
	token_issued_at         INTEGER,
	revoked_at              INTEGER,

	-- The moment the sweeper must act on: the end of the approval window
	-- while pending, the token expiry once approved. A missing moment is
	-- the zero time, which Permission.Due treats as already past.
	deadline INTEGER GENERATED ALWAYS AS (
		CASE status
			WHEN 'pending' THEN coalesce(approval_expires_at, -9223372036854775808)
			WHEN 'approved' THEN coalesce(token_expires_at, -9223372036854775808)
		END
	) VIRTUAL
) STRICT;

CREATE UNIQUE INDEX permissions_token_hash ON permissions (token_hash) WHERE token_hash IS NOT NULL;
CREATE UNIQUE INDEX permissions_idempotency ON permissions (agent_id, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX permissions_agent_created ON permissions (agent_id, created_at);
CREATE INDEX permissions_status_created ON permissions (status, created_at);
CREATE INDEX permissions_due ON permissions (deadline) WHERE status IN ('pending', 'approved');

-- One row per approver and permission, so a quorum counts people, not
-- clicks. A deleted user's vote stays, with a NULL user.
CREATE TABLE approvals (
	permission_id TEXT NOT NULL REFERENCES permissions (id),
	user_id       TEXT REFERENCES users (id) ON DELETE SET NULL,
	approved      INTEGER NOT NULL CHECK (approved IN (0, 1)),
	reason        TEXT NOT NULL,
	created_at    INTEGER,
	UNIQUE (permission_id, user_id)
) STRICT;

CREATE INDEX approvals_user ON approvals (user_id);

-- The hash-chained audit trail. No foreign keys: a cascade must never
-- rewrite a hashed row.
CREATE TABLE audit_events (
	seq           INTEGER PRIMARY KEY,
	id            TEXT NOT NULL UNIQUE,
	time          INTEGER,
	type          TEXT NOT NULL,
	actor_type    TEXT NOT NULL,
	actor_id      TEXT NOT NULL,
	agent_id      TEXT NOT NULL,
	permission_id TEXT NOT NULL,
	request_id    TEXT NOT NULL,
	details_json  TEXT NOT NULL CHECK (json_valid(details_json)),
	prev_hash     TEXT NOT NULL,
	hash          TEXT NOT NULL
) STRICT;

-- The newest event's seq and hash, written with every commit that appends:
-- deleting the last rows of the chain leaves the head pointing past them.
CREATE TABLE audit_head (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	seq  INTEGER NOT NULL,
	hash TEXT NOT NULL
) STRICT;

CREATE INDEX audit_events_agent ON audit_events (agent_id, seq);
CREATE INDEX audit_events_permission ON audit_events (permission_id, seq);
CREATE INDEX audit_events_type ON audit_events (type, seq);
CREATE INDEX audit_events_time ON audit_events (time);

-- Defense in depth: the chain detects edits, these refuse them.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
	SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
	SELECT RAISE(ABORT, 'audit_events is append-only');
END;
