-- Keyed audit chain. mac is the HMAC-SHA256, under the audit key, of the
-- event's chain hash and token_ref (agentotp.AuditKey.EventMAC); NULL for
-- events appended without a key, as every event from before this migration.
-- token_ref is set on token_issue events appended with a key: the keyed
-- digest of the issued token's hash, never the token. The head row gets the
-- MAC of its (seq, hash), so moving it back after deleting the newest
-- events needs the key, and the id of the key that wrote it, so a wrong key
-- is named as such.
ALTER TABLE audit_events ADD COLUMN mac TEXT;
ALTER TABLE audit_events ADD COLUMN token_ref TEXT;
ALTER TABLE audit_head ADD COLUMN mac TEXT;
ALTER TABLE audit_head ADD COLUMN key_id TEXT;
