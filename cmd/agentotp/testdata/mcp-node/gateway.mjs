#!/usr/bin/env node
// Drives `agentotp gateway` in front of @modelcontextprotocol/server-filesystem
// with the official TypeScript SDK client, as an MCP host would. Run by
// cmd/agentotp/gateway_test.go.
//
//   node gateway.mjs --dir DIR --fs-command NODE --fs-args JSON --command AGENTOTP -- gateway --config … --data … --policies …
//
// DIR is the filesystem server's allowed directory, holding hello.txt
// ("hello from disk"). The gateway's policies must auto-approve read-only
// tools and ask a person for write_file (examples/gateway/policy.yaml).
// The agent key comes from $AGENTOTP_API_KEY (passed to the gateway with the
// SDK's default safe environment and every other AGENTOTP_* variable).
//
// Conversation with the test, one JSON object per line on stdout:
//   {"event":"pending","id":"perm_…"}   the write waits for a person; the test
//                                      checks the disk, approves, and writes
//                                      "approved" on stdin
//   {"ok":…,"checks":[…]}             the summary (last line)
// Exits 1 if a check failed, 2 on a usage error.

import { createInterface } from "node:readline";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport, getDefaultEnvironment } from "@modelcontextprotocol/sdk/client/stdio.js";

function usage(msg) {
  process.stderr.write(`gateway.mjs: ${msg}\n` +
    "usage: node gateway.mjs --dir DIR --fs-command NODE --fs-args JSON --command AGENTOTP -- gateway ARGS...\n");
  process.exit(2);
}

const o = { dir: "", fsCommand: "", fsArgs: [], command: "", args: [] };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const value = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
  if (a === "--") { o.args = argv.slice(i + 1); break; }
  else if (a === "--dir") o.dir = value();
  else if (a === "--fs-command") o.fsCommand = value();
  else if (a === "--fs-args") o.fsArgs = JSON.parse(value());
  else if (a === "--command") o.command = value();
  else usage(`unknown argument ${a}`);
}
if (!o.dir || !o.command || !o.fsCommand) usage("--dir, --fs-command and --command are required");

const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), ...(ok ? {} : { detail }) });
  return Boolean(ok);
}
const text = (res) => (res?.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
const brief = (res) => JSON.stringify({ isError: res?.isError, text: text(res).slice(0, 500) });
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function waitFor(word) {
  for (;;) {
    const { value, done } = await stdinLines.next();
    if (done) throw new Error(`stdin closed before "${word}"`);
    if (value.trim() === word) return;
  }
}

const env = { ...getDefaultEnvironment() };
for (const [k, v] of Object.entries(process.env)) {
  if (k.startsWith("AGENTOTP_") && v !== undefined) env[k] = v;
}
const REQUEST_TIMEOUT = { timeout: 30_000 };
const deadline = setTimeout(() => {
  process.stderr.write("gateway.mjs: gave up after 120s\n");
  emit({ ok: false, checks, error: "timeout" });
  process.exit(1);
}, 120_000);

const gateway = new Client({ name: "agentotp-gateway-sdk-test", version: "1.0.0" });
const direct = new Client({ name: "agentotp-gateway-sdk-test-direct", version: "1.0.0" });
try {
  await gateway.connect(new StdioClientTransport({ command: o.command, args: o.args, env, stderr: "inherit" }), REQUEST_TIMEOUT);
  check("initialize: serverInfo.name is agentotp-gateway", gateway.getServerVersion()?.name === "agentotp-gateway", JSON.stringify(gateway.getServerVersion()));
  check("initialize: tools capability with listChanged", gateway.getServerCapabilities()?.tools?.listChanged === true, JSON.stringify(gateway.getServerCapabilities()));

  // The filesystem server's own list, for comparison.
  await direct.connect(new StdioClientTransport({ command: o.fsCommand, args: o.fsArgs, stderr: "ignore" }), REQUEST_TIMEOUT);
  const { tools: own } = await direct.listTools(undefined, REQUEST_TIMEOUT);
  await direct.close();

  const { tools } = await gateway.listTools(undefined, REQUEST_TIMEOUT);
  const byName = new Map(tools.map((t) => [t.name, t]));
  check("tools/list: one fs__ tool per filesystem tool", tools.length === own.length && own.every((t) => byName.has(`fs__${t.name}`)),
    `gateway: ${[...byName.keys()].join(", ")}; server: ${own.map((t) => t.name).join(", ")}`);
  for (const t of own) {
    const g = byName.get(`fs__${t.name}`);
    if (!g) continue;
    check(`tools/list: fs__${t.name} inputSchema unchanged`, JSON.stringify(g.inputSchema) === JSON.stringify(t.inputSchema),
      `${JSON.stringify(g.inputSchema)} vs ${JSON.stringify(t.inputSchema)}`);
    check(`tools/list: fs__${t.name} description and annotations unchanged`,
      g.description === t.description && JSON.stringify(g.annotations ?? {}) === JSON.stringify(t.annotations ?? {}),
      `${JSON.stringify([g.description, g.annotations])} vs ${JSON.stringify([t.description, t.annotations])}`);
  }
  check("tools/list: $schema kept (mcp-go's typed Tool would drop it)",
    byName.get("fs__read_text_file")?.inputSchema?.$schema === own.find((t) => t.name === "read_text_file")?.inputSchema?.$schema &&
    typeof byName.get("fs__read_text_file")?.inputSchema?.$schema === "string",
    JSON.stringify(byName.get("fs__read_text_file")?.inputSchema));

  const call = (name, args) => gateway.callTool({ name, arguments: args }, undefined, REQUEST_TIMEOUT);

  // Reads: read-only by annotation, auto-approved by the example policy.
  let res = await call("fs__read_text_file", { path: join(o.dir, "hello.txt") });
  check("read_text_file: auto-approved, the file's content", !res.isError && text(res).includes("hello from disk"), brief(res));
  res = await call("fs__list_directory", { path: o.dir });
  check("list_directory: auto-approved", !res.isError && text(res).includes("hello.txt"), brief(res));

  // A write: destructive, so a person decides.
  const target = join(o.dir, "written.txt");
  const write = { path: target, content: "written through the gateway\n" };
  res = await call("fs__write_file", write);
  const m = /^approval pending \((perm_[A-Za-z0-9]+)\): ask again with the same arguments/.exec(text(res));
  if (check("write_file: approval pending (isError) with the permission id", res.isError === true && m, brief(res))) {
    emit({ event: "pending", id: m[1] });
    await waitFor("approved");
    res = await call("fs__write_file", write);
    check("write_file again with the same arguments: runs after approval", !res.isError, brief(res));
    res = await call("fs__read_text_file", { path: target });
    check("read_text_file: the written content", !res.isError && text(res) === write.content, brief(res));
    res = await call("fs__write_file", write);
    check("write_file a third time: asks anew (the approval was spent)", res.isError === true && /^approval pending \(perm_/.test(text(res)) && !text(res).includes(m[1]), brief(res));
  }
} catch (err) {
  check("no protocol error", false, err instanceof Error ? `${err.name}: ${err.message}` : String(err));
} finally {
  clearTimeout(deadline);
  try { await gateway.close(); } catch { /* already gone */ }
}

const failed = checks.filter((c) => !c.ok);
emit({ ok: failed.length === 0, passed: checks.length - failed.length, failed: failed.length, checks });
if (failed.length > 0) {
  process.stderr.write(`gateway.mjs: ${failed.length} of ${checks.length} checks failed:\n` +
    failed.map((c) => `  - ${c.name}: ${c.detail}`).join("\n") + "\n");
  process.exit(1);
}
process.exit(0);
