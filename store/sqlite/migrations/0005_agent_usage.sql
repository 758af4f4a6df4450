-- The storage quota: what each agent's stored permissions take, kept by
-- triggers so that the check made on every request reads one row instead of
-- adding up the agent's permissions. Pruning (DELETE) gives room back; a
-- deleted agent's permissions (agent_id set to NULL, history kept) no longer
-- count against anyone, and its row goes with it.

-- A permission's size: the bytes of its variable-size columns (texts and
-- JSON, as stored) plus 512 for the rest of the row and its index entries.
ALTER TABLE permissions ADD COLUMN stored_bytes INTEGER GENERATED ALWAYS AS (
	512 + octet_length(action) + octet_length(resource) + octet_length(idempotency_key)
	+ coalesce(octet_length(callback_url), 0)
	+ coalesce(octet_length(scope_json), 0) + coalesce(octet_length(context_json), 0)
	+ coalesce(octet_length(granted_scope_json), 0) + coalesce(octet_length(decision_scope_json), 0)
	+ coalesce(octet_length(decision_approvers_json), 0)
	+ coalesce(octet_length(tool_server), 0) + coalesce(octet_length(tool_name), 0)
	+ coalesce(octet_length(tool_annotations_json), 0)
	+ octet_length(decision_reason) + octet_length(decided_reason)
) VIRTUAL;

CREATE TABLE agent_usage (
	agent_id    TEXT PRIMARY KEY,
	permissions INTEGER NOT NULL,
	bytes       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

INSERT INTO agent_usage (agent_id, permissions, bytes)
	SELECT agent_id, count(*), sum(stored_bytes) FROM permissions WHERE agent_id IS NOT NULL GROUP BY agent_id;

CREATE TRIGGER agent_usage_insert AFTER INSERT ON permissions
	WHEN NEW.agent_id IS NOT NULL
BEGIN
	INSERT INTO agent_usage (agent_id, permissions, bytes) VALUES (NEW.agent_id, 1, NEW.stored_bytes)
		ON CONFLICT (agent_id) DO UPDATE SET permissions = permissions + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER agent_usage_delete AFTER DELETE ON permissions
	WHEN OLD.agent_id IS NOT NULL
BEGIN
	UPDATE agent_usage SET permissions = permissions - 1, bytes = bytes - OLD.stored_bytes WHERE agent_id = OLD.agent_id;
END;

-- A decision may change sized columns (the granted scope, the reasons).
CREATE TRIGGER agent_usage_resize AFTER UPDATE OF action, resource, scope_json, context_json, granted_scope_json,
	decision_scope_json, decision_approvers_json, decision_reason, decided_reason ON permissions
	WHEN NEW.agent_id IS NOT NULL AND NEW.agent_id IS OLD.agent_id AND NEW.stored_bytes IS NOT OLD.stored_bytes
BEGIN
	UPDATE agent_usage SET bytes = bytes + NEW.stored_bytes - OLD.stored_bytes WHERE agent_id = NEW.agent_id;
END;

-- Deleting an agent sets its permissions' agent_id to NULL.
CREATE TRIGGER agent_usage_reassign AFTER UPDATE OF agent_id ON permissions
	WHEN OLD.agent_id IS NOT NEW.agent_id
BEGIN
	UPDATE agent_usage SET permissions = permissions - 1, bytes = bytes - OLD.stored_bytes WHERE agent_id = OLD.agent_id;
	INSERT INTO agent_usage (agent_id, permissions, bytes) SELECT NEW.agent_id, 1, NEW.stored_bytes WHERE NEW.agent_id IS NOT NULL
		ON CONFLICT (agent_id) DO UPDATE SET permissions = permissions + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER agent_usage_agent_delete AFTER DELETE ON agents
BEGIN
	DELETE FROM agent_usage WHERE agent_id = OLD.id;
END;
