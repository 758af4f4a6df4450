#!/usr/bin/env node
// Drives agentotp's MCP tools with the official TypeScript SDK client, as a
// third-party MCP host would. Run by cmd/agentotp/mcp_node_test.go.
//
//   node client.mjs --transport stdio --command /path/to/agentotp -- mcp --data DIR --policies FILE
//   node client.mjs --transport http --url http://127.0.0.1:PORT/mcp
//
// The agent key comes from $AGENTOTP_API_KEY: over stdio it is passed to the
// spawned server (with the SDK's default safe environment and every other
// AGENTOTP_* variable), over HTTP it is sent as Authorization: Bearer.
//
// The server's policies must auto-approve actions starting with "auto." and
// claude.Echo, deny "bad.thing", and leave everything else to a person.
//
// Prints one JSON summary on stdout: {ok, transport, server, checks: [...]};
// exits 1 if any check failed, 2 on a usage error.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport, getDefaultEnvironment } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const TOOLS = ["request_permission", "get_permission", "verify_permission", "use_permission", "revoke_permission", "approval_prompt"];
const NO_OUTPUT_SCHEMA = new Set(["approval_prompt"]);

function usage(msg) {
  process.stderr.write(`client.mjs: ${msg}\n` +
    "usage: node client.mjs --transport stdio --command BIN [-- ARGS...]\n" +
    "       node client.mjs --transport http --url URL\n" +
    "(the agent key is read from $AGENTOTP_API_KEY)\n");
  process.exit(2);
}

function parseArgs(argv) {
  const o = { transport: process.env.MCP_TRANSPORT || "", url: process.env.MCP_URL || "", command: process.env.MCP_COMMAND || "", args: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
    if (a === "--") { o.args = argv.slice(i + 1); break; }
    else if (a === "--transport") o.transport = value();
    else if (a === "--url") o.url = value();
    else if (a === "--command") o.command = value();
    else usage(`unknown argument ${a}`);
  }
  if (o.transport === "stdio" && !o.command) usage("--transport stdio needs --command");
  if (o.transport === "http" && !o.url) usage("--transport http needs --url");
  if (o.transport !== "stdio" && o.transport !== "http") usage("--transport must be stdio or http");
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const key = process.env.AGENTOTP_API_KEY || "";
if (!key.startsWith("ak_")) usage("set AGENTOTP_API_KEY to an agent key (ak_…)");

const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), ...(ok ? {} : { detail }) });
  return Boolean(ok);
}

// sc returns a result's structuredContent, failing the check if it is missing.
function sc(res) {
  return res && typeof res.structuredContent === "object" && res.structuredContent !== null ? res.structuredContent : {};
}

function text(res) {
  return (res?.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
}

// brief keeps a failure detail readable and free of tokens.
function brief(res) {
  return JSON.stringify({ isError: res?.isError, structuredContent: res?.structuredContent, text: text(res) })
    .replace(/otp_[A-Za-z0-9_-]+/g, "otp_…");
}

let transport;
if (opts.transport === "stdio") {
  const env = { ...getDefaultEnvironment() };
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("AGENTOTP_") && v !== undefined) env[k] = v;
  }
  transport = new StdioClientTransport({ command: opts.command, args: opts.args, env, stderr: "inherit" });
} else {
  transport = new StreamableHTTPClientTransport(new URL(opts.url), {
    requestInit: { headers: { Authorization: `Bearer ${key}` } },
  });
}

const client = new Client({ name: "agentotp-node-sdk-test", version: "1.0.0" });
// Every call here answers at once (wait_seconds 0), so a request without an
// answer within REQUEST_TIMEOUT is a server bug, reported as a failed check.
const REQUEST_TIMEOUT = { timeout: 15_000 };
const deadline = setTimeout(() => {
  process.stderr.write("client.mjs: gave up after 60s\n");
  process.stdout.write(JSON.stringify({ ok: false, transport: opts.transport, checks, error: "timeout" }) + "\n");
  process.exit(1);
}, 60_000);

let fatal;
try {
  await client.connect(transport, REQUEST_TIMEOUT);
  const info = client.getServerVersion();
  check("initialize: serverInfo.name is agentotp", info?.name === "agentotp", JSON.stringify(info));
  check("initialize: tools capability", client.getServerCapabilities()?.tools !== undefined, JSON.stringify(client.getServerCapabilities()));
  check("initialize: instructions", (client.getInstructions() || "").includes("request_permission"), client.getInstructions());

  // tools/list: the six tools, each described, with schemas.
  // A tools/list failure is reported and the calls still run (then without
  // the SDK's outputSchema validation).
  let tools;
  try {
    ({ tools } = await client.listTools(undefined, REQUEST_TIMEOUT));
  } catch (err) {
    check("tools/list answers", false, err instanceof Error ? `${err.name}: ${err.message}` : String(err));
  }
  const byName = new Map((tools || []).map((t) => [t.name, t]));
  for (const name of tools ? TOOLS : []) {
    const t = byName.get(name);
    if (!check(`tools/list: ${name} present`, t, `got ${[...byName.keys()].join(", ")}`)) continue;
    check(`tools/list: ${name} has a description`, typeof t.description === "string" && t.description.length > 20, t.description);
    check(`tools/list: ${name} has an object inputSchema`, t.inputSchema?.type === "object" && t.inputSchema.properties, JSON.stringify(t.inputSchema));
    if (NO_OUTPUT_SCHEMA.has(name)) {
      check(`tools/list: ${name} has no outputSchema`, t.outputSchema === undefined, JSON.stringify(t.outputSchema));
    } else {
      check(`tools/list: ${name} has an object outputSchema`, t.outputSchema?.type === "object", JSON.stringify(t.outputSchema));
    }
  }

  // The SDK validates structuredContent against each tool's outputSchema in
  // callTool, so every call below also checks the server's schemas.
  const call = (name, args) => client.callTool({ name, arguments: args }, undefined, REQUEST_TIMEOUT);

  // 1. Auto-approved: a token at once.
  let res = await call("request_permission", {
    action: "auto.notify", resource: "channel:#ops", scope: { max_messages: 1 },
    context: { reason: "node SDK end-to-end test" }, ttl_seconds: 120,
  });
  let s = sc(res);
  const approved = check("request_permission auto.*: approved with a token",
    !res.isError && s.status === "approved" && /^otp_/.test(s.token || "") && /^perm_/.test(s.id || "") && s.next_step, brief(res));
  check("request_permission auto.*: text part names the status", text(res).startsWith("approved"), brief(res));
  const { id, token } = s;

  if (approved) {
    // 2. Verify before use: valid, nothing spent.
    res = await call("verify_permission", { id, token });
    s = sc(res);
    check("verify_permission before use: valid", !res.isError && s.valid === true && s.uses_remaining === 1, brief(res));

    // 3. Use once: success.
    res = await call("use_permission", { id, token, details: { messages: 1 } });
    s = sc(res);
    check("use_permission: success", !res.isError && s.success === true && s.uses_remaining === 0, brief(res));

    // 4. Use again: refused, as a tool error.
    res = await call("use_permission", { id, token });
    s = sc(res);
    check("use_permission again: refused (isError)", res.isError === true && s.success === false && s.reason, brief(res));

    // 5. The spent token no longer verifies.
    res = await call("verify_permission", { id, token });
    s = sc(res);
    check("verify_permission after use: not valid (isError)", res.isError === true && s.valid === false && s.reason, brief(res));
  }

  // 6. Denied by policy.
  res = await call("request_permission", { action: "bad.thing" });
  s = sc(res);
  check("request_permission bad.thing: denied (isError)",
    res.isError === true && s.status === "denied" && !s.token && s.next_step, brief(res));

  // 7. Needs a person: pending at once with wait_seconds 0.
  res = await call("request_permission", { action: "needs.human", resource: "db:prod", wait_seconds: 0 });
  s = sc(res);
  const pending = check("request_permission needs.human wait_seconds=0: pending (isError) with approval_url",
    res.isError === true && s.status === "pending" && !s.token && /^https?:\/\//.test(s.approval_url || "") && s.approval_url.includes(s.id),
    brief(res));
  if (pending) {
    const pid = s.id;
    res = await call("get_permission", { id: pid, wait_seconds: 0 });
    s = sc(res);
    check("get_permission wait_seconds=0: still pending (isError)", res.isError === true && s.status === "pending" && s.id === pid, brief(res));
    res = await call("revoke_permission", { id: pid, reason: "test done" });
    s = sc(res);
    check("revoke_permission: revoked", !res.isError && s.status === "revoked" && s.id === pid, brief(res));
  }

  // 8. Bad arguments are tool errors naming the argument.
  res = await call("request_permission", { action: "auto.notify", nope: 1 });
  check("request_permission unknown argument: isError naming it", res.isError === true && text(res).includes("nope"), brief(res));

  // 9. approval_prompt (Claude Code's permission prompt): allowed by policy.
  res = await call("approval_prompt", { tool_name: "Echo", input: { text: "hi" }, tool_use_id: "toolu_1" });
  let decision;
  try { decision = JSON.parse(text(res)); } catch { decision = undefined; }
  check("approval_prompt claude.Echo: allow with the input",
    !res.isError && decision?.behavior === "allow" && decision?.updatedInput?.text === "hi", brief(res));
} catch (err) {
  fatal = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  check("no protocol error", false, fatal);
} finally {
  clearTimeout(deadline);
  try { await client.close(); } catch { /* the server may already be gone */ }
}

const failed = checks.filter((c) => !c.ok);
const summary = {
  ok: failed.length === 0,
  transport: opts.transport,
  server: client.getServerVersion() ?? null,
  passed: checks.length - failed.length,
  failed: failed.length,
  checks,
};
process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
if (failed.length > 0) {
  process.stderr.write(`client.mjs: ${failed.length} of ${checks.length} checks failed:\n` +
    failed.map((c) => `  - ${c.name}: ${c.detail}`).join("\n") + "\n");
  process.exit(1);
}
