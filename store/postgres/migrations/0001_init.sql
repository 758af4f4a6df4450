-- The schema of the SQLite store (its migrations 0001-0007) in one step.
-- Times are BIGINT unix nanoseconds (UTC), NULL for the zero time: exact
-- for every instant the domain uses, where timestamptz keeps microseconds.
-- JSON objects are TEXT, NULL for a nil map or slice, so the bytes hashed
-- into the audit chain are the bytes stored. Identifiers and names compare
-- and sort bytewise (COLLATE "C"), whatever the database's locale.

CREATE TABLE agents (
	id            TEXT COLLATE "C" PRIMARY KEY,
	name          TEXT COLLATE "C" NOT NULL UNIQUE,
	description   TEXT NOT NULL,
	metadata_json TEXT,
	active        BOOLEAN NOT NULL,
	key_hash      TEXT COLLATE "C" NOT NULL,
	key_prefix    TEXT NOT NULL,
	created_at    BIGINT,
	updated_at    BIGINT
);

-- Empty hashes (no key) are not keys and must not collide.
CREATE UNIQUE INDEX agents_key_hash ON agents (key_hash) WHERE key_hash <> '';

CREATE TABLE users (
	id          TEXT COLLATE "C" PRIMARY KEY,
	name        TEXT COLLATE "C" NOT NULL UNIQUE,
	role        TEXT NOT NULL,
	telegram_id BIGINT NOT NULL,
	active      BOOLEAN NOT NULL,
	key_hash    TEXT COLLATE "C" NOT NULL,
	key_prefix  TEXT NOT NULL,
	created_at  BIGINT,
	updated_at  BIGINT
);

CREATE UNIQUE INDEX users_key_hash ON users (key_hash) WHERE key_hash <> '';
CREATE UNIQUE INDEX users_telegram_id ON users (telegram_id) WHERE telegram_id <> 0;

-- policies.agent_id deliberately has no foreign key: ON DELETE SET NULL
-- would turn a rule for one deleted agent into a rule for all agents, and
-- CASCADE would delete the rule without an audit event. A rule naming a
-- deleted agent matches nobody.
CREATE TABLE policies (
	id                  TEXT COLLATE "C" PRIMARY KEY,
	name                TEXT COLLATE "C" NOT NULL UNIQUE,
	description         TEXT NOT NULL,
	priority            BIGINT NOT NULL,
	agent_id            TEXT NOT NULL,
	conditions_json     TEXT,
	when_expr           TEXT NOT NULL,
	effect              TEXT NOT NULL CHECK (effect IN ('deny', 'require_approval', 'auto_approve')),
	scope_template_json TEXT,
	approvers_json      TEXT,
	quorum              BIGINT NOT NULL,
	token_ttl_ns        BIGINT NOT NULL,
	token_uses          BIGINT NOT NULL,
	use_when            TEXT NOT NULL,
	active              BOOLEAN NOT NULL,
	created_at          BIGINT,
	updated_at          BIGINT
);

CREATE TABLE permissions (
	id                      TEXT COLLATE "C" PRIMARY KEY,
	-- SET NULL keeps the history when an agent is deleted; the audit trail
	-- still names it.
	agent_id                TEXT COLLATE "C" REFERENCES agents (id) ON DELETE SET NULL,
	action                  TEXT COLLATE "C" NOT NULL,
	resource                TEXT NOT NULL,
	scope_json              TEXT,
	context_json            TEXT,
	idempotency_key         TEXT COLLATE "C" NOT NULL,
	-- Where a permission's outcome is POSTed, fixed at request time.
	callback_url            TEXT,
	-- The gateway tool call a permission was asked for, fixed at request
	-- time: the arguments are not kept, only the SHA-256 of their canonical
	-- JSON. tool_name is NULL when the permission is not for a tool call.
	tool_server             TEXT,
	tool_name               TEXT,
	tool_annotations_json   TEXT,
	tool_args_sha256        TEXT,
	status                  TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'used', 'revoked')),
	created_at              BIGINT,
	updated_at              BIGINT,
	approval_expires_at     BIGINT,

	decision_effect         TEXT NOT NULL CHECK (decision_effect IN ('deny', 'require_approval', 'auto_approve')),
	decision_rule           TEXT NOT NULL,
	decision_policy_version TEXT NOT NULL,
	decision_reason         TEXT NOT NULL,
	decision_scope_json     TEXT,
	decision_token_ttl_ns   BIGINT NOT NULL,
	decision_uses           BIGINT NOT NULL,
	decision_use_when       TEXT NOT NULL,
	decision_approvers_json TEXT,
	decision_quorum         BIGINT NOT NULL,
	decision_event_id       TEXT NOT NULL,
	decided_by              TEXT NOT NULL,
	decided_at              BIGINT,
	decided_reason          TEXT NOT NULL,

	granted_scope_json      TEXT,
	token_ttl_ns            BIGINT NOT NULL,
	uses                    BIGINT NOT NULL,
	uses_remaining          BIGINT NOT NULL CHECK (uses_remaining >= 0),
	token_expires_at        BIGINT,
	token_hash              TEXT COLLATE "C", -- NULL until issued
	token_issued_at         BIGINT,
	revoked_at              BIGINT,

	-- The moment the sweeper must act on: the end of the approval window
	-- while pending, the token expiry once approved. A missing moment is
	-- the zero time, which Permission.Due treats as already past.
	deadline BIGINT GENERATED ALWAYS AS (
		CASE status
			WHEN 'pending' THEN coalesce(approval_expires_at, '-9223372036854775808'::bigint)
			WHEN 'approved' THEN coalesce(token_expires_at, '-9223372036854775808'::bigint)
		END
	) STORED,

	-- What the storage quota counts: the bytes of the variable-size columns
	-- plus 512 for the rest of the row and its index entries.
	stored_bytes BIGINT GENERATED ALWAYS AS (
		512 + octet_length(action) + octet_length(resource) + octet_length(idempotency_key)
		+ coalesce(octet_length(callback_url), 0)
		+ coalesce(octet_length(scope_json), 0) + coalesce(octet_length(context_json), 0)
		+ coalesce(octet_length(granted_scope_json), 0) + coalesce(octet_length(decision_scope_json), 0)
		+ coalesce(octet_length(decision_approvers_json), 0)
		+ coalesce(octet_length(tool_server), 0) + coalesce(octet_length(tool_name), 0)
		+ coalesce(octet_length(tool_annotations_json), 0)
		+ octet_length(decision_reason) + octet_length(decided_reason)
	) STORED
);

-- A token is always checked together with its permission's id, so
-- token_hash needs no index.
CREATE UNIQUE INDEX permissions_idempotency ON permissions (agent_id, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX permissions_agent_created ON permissions (agent_id, created_at);
CREATE INDEX permissions_status_created ON permissions (status, created_at);
CREATE INDEX permissions_due ON permissions (deadline) WHERE status IN ('pending', 'approved');

-- One row per approver and permission, so a quorum counts people, not
-- clicks. A deleted user's vote stays, with a NULL user. seq keeps the
-- order votes were cast in.
CREATE TABLE approvals (
	seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	permission_id TEXT COLLATE "C" NOT NULL REFERENCES permissions (id),
	user_id       TEXT COLLATE "C" REFERENCES users (id) ON DELETE SET NULL,
	approved      BOOLEAN NOT NULL,
	reason        TEXT NOT NULL,
	created_at    BIGINT,
	UNIQUE (permission_id, user_id)
);

CREATE INDEX approvals_user ON approvals (user_id);

-- The hash-chained audit trail. No foreign keys: a cascade must never
-- rewrite a hashed row. mac is the HMAC-SHA256, under the audit key, of
-- the event's chain hash and token_ref (NULL for events appended without
-- a key); token_ref, on token issues appended with a key, is the keyed
-- digest of the issued token's hash, never the token.
CREATE TABLE audit_events (
	seq           BIGINT PRIMARY KEY,
	id            TEXT COLLATE "C" NOT NULL UNIQUE,
	time          BIGINT,
	type          TEXT COLLATE "C" NOT NULL,
	actor_type    TEXT NOT NULL,
	actor_id      TEXT NOT NULL,
	agent_id      TEXT COLLATE "C" NOT NULL,
	permission_id TEXT COLLATE "C" NOT NULL,
	request_id    TEXT NOT NULL,
	details_json  TEXT NOT NULL CHECK (details_json::json IS NOT NULL),
	prev_hash     TEXT NOT NULL,
	hash          TEXT NOT NULL,
	mac           TEXT,
	token_ref     TEXT
);

CREATE INDEX audit_events_agent ON audit_events (agent_id, seq);
CREATE INDEX audit_events_permission ON audit_events (permission_id, seq);

-- The newest event's seq and hash, written with every commit that appends,
-- with the MAC of (seq, hash) and the id of the key that wrote it:
-- deleting the last rows of the chain leaves the head pointing past them,
-- and moving the head back needs the key.
CREATE TABLE audit_head (
	id     INTEGER PRIMARY KEY CHECK (id = 1),
	seq    BIGINT NOT NULL,
	hash   TEXT NOT NULL,
	mac    TEXT,
	key_id TEXT
);

-- Defense in depth: the chain detects edits, these refuse them.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
	FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
	FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- The storage quota: what each agent's stored permissions take, kept by
-- triggers so that the check made on every request reads one row instead
-- of adding up the agent's permissions. Pruning (DELETE) gives room back;
-- a deleted agent's permissions (agent_id set to NULL, history kept) no
-- longer count against anyone, and its row goes with it.
CREATE TABLE agent_usage (
	agent_id    TEXT COLLATE "C" PRIMARY KEY,
	permissions BIGINT NOT NULL,
	bytes       BIGINT NOT NULL
);

CREATE FUNCTION agent_usage_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.agent_id IS NOT NULL THEN
		UPDATE agent_usage SET permissions = permissions - 1, bytes = bytes - OLD.stored_bytes
			WHERE agent_id = OLD.agent_id;
	END IF;
	IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.agent_id IS NOT NULL THEN
		INSERT INTO agent_usage (agent_id, permissions, bytes) VALUES (NEW.agent_id, 1, NEW.stored_bytes)
			ON CONFLICT (agent_id) DO UPDATE SET permissions = agent_usage.permissions + 1,
				bytes = agent_usage.bytes + excluded.bytes;
	END IF;
	RETURN NULL;
END
$$;

CREATE TRIGGER agent_usage_count AFTER INSERT OR DELETE ON permissions
	FOR EACH ROW EXECUTE FUNCTION agent_usage_track();
-- Only a decision (the granted scope, the reasons) or deleting the agent
-- changes what a row counts for; a spent use does not.
CREATE TRIGGER agent_usage_update AFTER UPDATE ON permissions
	FOR EACH ROW WHEN (OLD.agent_id IS DISTINCT FROM NEW.agent_id OR OLD.stored_bytes <> NEW.stored_bytes)
	EXECUTE FUNCTION agent_usage_track();

CREATE FUNCTION agent_usage_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM agent_usage WHERE agent_id = OLD.id;
	RETURN NULL;
END
$$;

CREATE TRIGGER agent_usage_agent_delete AFTER DELETE ON agents
	FOR EACH ROW EXECUTE FUNCTION agent_usage_forget();

-- Cross-instance wake-ups: every change to a permission notifies its id
-- when the writing transaction commits (LISTEN agentotp_permissions).
CREATE FUNCTION permissions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('agentotp_permissions', NEW.id);
	RETURN NULL;
END
$$;

CREATE TRIGGER permissions_notify AFTER INSERT OR UPDATE ON permissions
	FOR EACH ROW EXECUTE FUNCTION permissions_notify();

-- Web console sessions. The browser holds the secret; only its SHA-256 is
-- kept, so reading this table signs nobody in. key_hash is the user's key
-- hash at sign-in: a session is honoured only while the user still has
-- that key. Deleting a user deletes their sessions.
CREATE TABLE console_sessions (
	hash         TEXT COLLATE "C" PRIMARY KEY,
	user_id      TEXT COLLATE "C" NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	key_hash     TEXT NOT NULL,
	created_at   BIGINT NOT NULL,
	last_seen_at BIGINT NOT NULL,
	expires_at   BIGINT NOT NULL
);

CREATE INDEX console_sessions_user ON console_sessions (user_id);
