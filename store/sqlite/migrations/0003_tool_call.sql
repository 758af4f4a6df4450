-- Gateway tool calls: which MCP tool call a permission was asked for, set at
-- request time and never changed. The arguments are not kept (for a gateway
-- call the scope holds them), only the SHA-256 of their canonical JSON
-- (agentotp.ArgsHash). tool_name is NULL when the permission is not for a
-- tool call, as in every row from before this migration.
ALTER TABLE permissions ADD COLUMN tool_server TEXT;
ALTER TABLE permissions ADD COLUMN tool_name TEXT;
ALTER TABLE permissions ADD COLUMN tool_annotations_json TEXT;
ALTER TABLE permissions ADD COLUMN tool_args_sha256 TEXT;
