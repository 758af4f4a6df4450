package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/mcpserver"
	"github.com/agentotp/agentotp/policy"
)

const examplePolicy = "../../examples/gateway/policy.yaml"

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func TestGatewayConfig(t *testing.T) {
	vars := map[string]string{"KEY": "ak_fromTheEnvironment", "ROOT": "/srv/share", "TOKEN": "s3cret"}
	env := func(k string) string { return vars[k] }

	t.Run("full", func(t *testing.T) {
		dir := t.TempDir()
		p := writeFile(t, dir, "gateway.yaml", `server: https://otp.example.com/
apiKey: ${KEY}
wait: 30
servers:
  fs:
    command: npx
    args: ["-y", "server-filesystem", "${ROOT}", "${MISSING:-/fallback}", "cost: $$5, $HOME stays"]
    env: {TOKEN: "${TOKEN}", EMPTY: "${NOPE:-}"}
    cwd: work
  remote:
    url: http://127.0.0.1:3001/mcp
    transport: sse
    headers: {Authorization: "Bearer ${TOKEN}"}
`)
		c, err := loadGatewayConfig(p, env)
		require.NoError(t, err)
		require.Equal(t, "https://otp.example.com", c.Server)
		require.Equal(t, "ak_fromTheEnvironment", c.APIKey)
		require.Equal(t, 30*time.Second, c.Wait)
		require.Equal(t, []mcpserver.Downstream{
			{Name: "fs", Command: "npx", Args: []string{"-y", "server-filesystem", "/srv/share", "/fallback", "cost: $5, $HOME stays"},
				Env: map[string]string{"TOKEN": "s3cret", "EMPTY": ""}, Dir: filepath.Join(dir, "work")},
			{Name: "remote", URL: "http://127.0.0.1:3001/mcp", Transport: "sse", Headers: map[string]string{"Authorization": "Bearer s3cret"}},
		}, c.Servers)
	})

	t.Run("the example", func(t *testing.T) {
		c, err := loadGatewayConfig("../../examples/gateway/gateway.yaml", func(k string) string {
			return map[string]string{"AGENTOTP_API_KEY": "ak_x", "FS_ROOT": "/home/me/share"}[k]
		})
		require.NoError(t, err)
		require.Empty(t, c.Server, "the example runs embedded")
		require.Equal(t, "ak_x", c.APIKey)
		require.Equal(t, 50*time.Second, c.Wait)
		require.Len(t, c.Servers, 1)
		require.Equal(t, "fs", c.Servers[0].Name)
		require.Equal(t, []string{"-y", "@modelcontextprotocol/server-filesystem@2026.8.31", "/home/me/share"}, c.Servers[0].Args)
		_, err = mcpserver.NewGateway(mcpserver.GatewayOptions{Servers: c.Servers})
		require.NoError(t, err)
	})

	for _, tc := range []struct{ name, yaml, err string }{
		{"unknown top-level key", "sever: http://x\nservers: {fs: {command: x}}\n", `line 1: unknown key "sever"`},
		{"unknown server key", "servers:\n  fs:\n    comand: x\n", `line 3: unknown key "comand"`},
		{"wrong type", "servers:\n  fs:\n    command: x\n    args: nope\n", "line 4"},
		{"unset variable", "servers:\n  fs:\n    command: x\n    env: {A: \"${NOT_SET}\"}\n", "line 4: ${NOT_SET}: environment variable NOT_SET is not set"},
		{"unclosed variable", "servers:\n  fs:\n    command: ${ROOT\n", "line 3: unclosed ${"},
		{"no servers", "wait: 10s\n", "list at least one"},
		{"empty file", "", "list at least one"},
		{"bad name", "servers:\n  ok: {command: x}\n  a.b: {command: x}\n", `line 3: servers: "a.b"`},
		{"double underscore", "servers:\n  a__b: {command: x}\n", "<server>__<tool>"},
		{"both", "servers:\n  fs: {command: x, url: 'http://y'}\n", "line 2: servers: fs: set command or url, not both"},
		{"neither", "servers:\n  fs: {args: [x]}\n", "set command"},
		{"sse with a command", "servers:\n  fs: {command: x, transport: sse}\n", "needs a url"},
		{"bad transport", "servers:\n  r: {url: 'http://x', transport: websocket}\n", "streamable-http or sse"},
		{"env with a url", "servers:\n  r: {url: 'http://x', env: {A: b}}\n", "need a command"},
		{"bad url", "servers:\n  r: {url: 'file:///x'}\n", "http:// or https://"},
		{"bad server url", "server: localhost:8787\nservers: {fs: {command: x}}\n", "server: must be"},
		{"wait too long", "wait: 2m\nservers: {fs: {command: x}}\n", "wait: must be between 0 and 55s"},
		{"wait nonsense", "wait: soon\nservers: {fs: {command: x}}\n", "wait:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadGatewayConfig(writeFile(t, t.TempDir(), "gateway.yaml", tc.yaml), env)
			require.ErrorContains(t, err, tc.err)
		})
	}

	t.Run("wait 0 answers at once", func(t *testing.T) {
		c, err := loadGatewayConfig(writeFile(t, t.TempDir(), "g.yaml", "wait: 0\nservers: {fs: {command: x}}\n"), env)
		require.NoError(t, err)
		require.Negative(t, c.Wait)
	})
}

// TestGatewayExamplePolicy checks examples/gateway/policy.yaml against the
// calls the gateway makes.
func TestGatewayExamplePolicy(t *testing.T) {
	eng, err := policy.New(context.Background(), policy.Options{Paths: []string{examplePolicy}})
	require.NoError(t, err)
	defer eng.Close()
	gw := &agentotp.Agent{ID: "agt_gw", Name: "gateway"}
	other := &agentotp.Agent{ID: "agt_x", Name: "someone-else"}
	hints := func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return map[string]any{"annotations": m, "client": map[string]any{"name": "claude-ai"}}
	}
	for _, tc := range []struct {
		name   string
		agent  *agentotp.Agent
		action string
		ctx    map[string]any
		effect agentotp.Effect
		rule   string
	}{
		{"read-only tool", gw, "mcp.fs.read_text_file", hints("readOnlyHint", true, "openWorldHint", false), agentotp.EffectAutoApprove, "gateway read-only tools"},
		{"destructive tool", gw, "mcp.fs.write_file", hints("readOnlyHint", false, "destructiveHint", true), agentotp.EffectRequireApproval, "gateway destructive tools ask"},
		{"contradictory hints ask", gw, "mcp.fs.odd", hints("readOnlyHint", true, "destructiveHint", true), agentotp.EffectRequireApproval, "gateway destructive tools ask"},
		{"additive tool", gw, "mcp.fs.create_directory", hints("readOnlyHint", false, "destructiveHint", false), agentotp.EffectRequireApproval, "gateway other tools ask"},
		{"no hints", gw, "mcp.fs.mystery", hints(), agentotp.EffectRequireApproval, "gateway other tools ask"},
		{"hint given as a string", gw, "mcp.fs.sneaky", hints("readOnlyHint", "true"), agentotp.EffectRequireApproval, "gateway other tools ask"},
		{"resource read", gw, "mcp.fs.resources.read", nil, agentotp.EffectAutoApprove, "gateway resource reads"},
		{"prompt", gw, "mcp.fs.prompts.get", nil, agentotp.EffectAutoApprove, "gateway prompts"},
		{"another agent claiming read-only", other, "mcp.fs.write_file", hints("readOnlyHint", true), agentotp.EffectRequireApproval, "gateway other tools ask"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := eng.Evaluate(context.Background(), agentotp.EvalInput{Agent: tc.agent, Action: tc.action, Context: tc.ctx, Scope: map[string]any{}, Now: time.Now()})
			require.NoError(t, err)
			require.Equal(t, tc.effect, d.Effect)
			require.Equal(t, tc.rule, d.Rule)
		})
	}
}

// buildTestDownstream builds mcpserver's test MCP server.
func buildTestDownstream(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		missingTool(t, "go is not on PATH: cannot build the downstream test server")
	}
	bin := filepath.Join(t.TempDir(), "downstream")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, "../../mcpserver/testdata/downstream").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// gwResult is a tool result's text.
func gwCall(t *testing.T, c *client.Client, name string, args map[string]any) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var req mcp.CallToolRequest
	req.Params.Name, req.Params.Arguments = name, args
	res, err := c.CallTool(ctx, req)
	require.NoError(t, err)
	var text strings.Builder
	for _, ct := range res.Content {
		if tc, ok := ct.(mcp.TextContent); ok {
			text.WriteString(tc.Text)
		}
	}
	return text.String(), res.IsError
}

// TestGatewayCommand runs `agentotp gateway` in process, embedded on a data
// directory with the example policy, in front of mcpserver's test server.
func TestGatewayCommand(t *testing.T) {
	bin := buildTestDownstream(t)
	dir := t.TempDir()
	data, log := filepath.Join(dir, "data"), filepath.Join(dir, "calls.log")
	withEnv(t, nil)
	code, out, errs := run(t, "agents", "create", "gateway", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	// The gateway's own secrets are in its environment; its child must not
	// see them.
	t.Setenv("AGENTOTP_API_KEY", key)
	t.Setenv("GATEWAY_TEST_SECRET", "hunter2-must-not-leak")
	withEnv(t, map[string]string{"AGENTOTP_API_KEY": key, "CALL_LOG": log})
	cfg := writeFile(t, dir, "gateway.yaml", `apiKey: ${AGENTOTP_API_KEY}
wait: 0
servers:
  dst:
    command: `+bin+`
    env: {DOWNSTREAM_LOG: "${CALL_LOG}"}
`)

	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		code := Main(ctx, []string{"gateway", "--config", cfg, "--data", data, "--policies", examplePolicy}, inR, outW, &stderr)
		_ = outW.Close()
		_ = inR.Close() // a client still writing fails instead of hanging
		done <- code
	}()
	t.Cleanup(func() {
		cancel()
		_ = inW.Close()
		select {
		case c := <-done:
			require.Equal(t, 0, c, stderr.String())
		case <-time.After(20 * time.Second):
			t.Error("agentotp gateway did not stop")
		}
	})
	c := client.NewClient(transport.NewIO(outR, inW, io.NopCloser(strings.NewReader(""))), client.WithProtocolVersion(mcp.ProtocolVersion20251125))
	require.NoError(t, c.Start(context.Background()))
	ictx, icancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer icancel()
	var init mcp.InitializeRequest
	init.Params.ProtocolVersion = mcp.ProtocolVersion20251125
	init.Params.ClientInfo = mcp.Implementation{Name: "cmd-test", Version: "1"}
	_, err := c.Initialize(ictx, init)
	require.NoError(t, err, stderr.String())

	text, isErr := gwCall(t, c, "dst__echo", map[string]any{"text": "hi"})
	require.False(t, isErr, text)
	require.Equal(t, "echo: hi", text)

	text, isErr = gwCall(t, c, "dst__delete_item", map[string]any{"id": "x1"})
	require.True(t, isErr)
	require.Regexp(t, `^approval pending \(perm_\w+\): ask again with the same arguments`, text)
	id := regexp.MustCompile(`perm_\w+`).FindString(text)
	calls, _ := os.ReadFile(log)
	require.NotContains(t, string(calls), "delete_item")
	// The log notifier runs beside the request.
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "approve "+id+" --data "+data) },
		5*time.Second, 10*time.Millisecond, "the pending call is logged with the command that approves it:\n%s", stderr.String())
	require.Contains(t, stderr.String(), "approval needed")

	code, out, errs = run(t, "show", id, "--data", data)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "mcp.dst.delete_item")
	require.Contains(t, out, "x1")
	code, _, errs = run(t, "approve", id, "--data", data)
	require.Equal(t, 0, code, errs)

	text, isErr = gwCall(t, c, "dst__delete_item", map[string]any{"id": "x1"})
	require.False(t, isErr, text)
	require.Equal(t, "deleted x1", text)
	calls, _ = os.ReadFile(log)
	require.Equal(t, 1, strings.Count(string(calls), `"tool":"delete_item"`))

	text, isErr = gwCall(t, c, "dst__env", nil)
	require.False(t, isErr, text)
	require.NotContains(t, text, "AGENTOTP")
	require.NotContains(t, text, key)
	require.NotContains(t, text, "hunter2")
	require.Contains(t, text, "DOWNSTREAM_LOG="+log)
	require.Contains(t, stderr.String(), `msg="gateway call"`)
	require.NotContains(t, stderr.String(), "echo: hi", "the log never holds results")
}

// TestGatewayTypeScriptSDK runs the agentotp binary as a gateway in front
// of @modelcontextprotocol/server-filesystem, driven by the official
// TypeScript SDK client (testdata/mcp-node/gateway.mjs), embedded on a data
// directory with examples/gateway/policy.yaml: reads are auto-approved; a
// write waits until the test approves it with `agentotp approve`, and only
// then reaches the disk.
func TestGatewayTypeScriptSDK(t *testing.T) {
	withEnv(t, nil)
	dir := nodeModules(t)
	fsIndex := filepath.Join(dir, "node_modules", "@modelcontextprotocol", "server-filesystem", "dist", "index.js")
	if _, err := os.Stat(fsIndex); err != nil {
		missingTool(t, "@modelcontextprotocol/server-filesystem is not installed: run npm ci --prefix cmd/agentotp/testdata/mcp-node")
	}
	node := findNode(t, dir, 20)
	bin := buildAgentotp(t)
	policies, err := filepath.Abs(examplePolicy)
	require.NoError(t, err)

	work := t.TempDir()
	data := filepath.Join(work, "data")
	code, out, errs := run(t, "agents", "create", "gateway", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	share, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)
	writeFile(t, share, "hello.txt", "hello from disk\n")
	target := filepath.Join(share, "written.txt")
	fsArgs, _ := json.Marshal([]string{fsIndex, share})
	cfg := writeFile(t, work, "gateway.yaml", "apiKey: ${AGENTOTP_API_KEY}\nwait: 1s\nservers:\n  fs:\n    command: "+node+
		"\n    args: "+string(fsArgs)+"\n")

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "gateway.mjs", "--dir", share, "--fs-command", node, "--fs-args", string(fsArgs),
		"--command", bin, "--", "gateway", "--config", cfg, "--data", data, "--policies", policies)
	cmd.Dir = dir
	cmd.Env = childEnv("AGENTOTP_API_KEY=" + key)
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	require.NoError(t, cmd.Start())

	var sum nodeSummary
	pending := ""
	lines := bufio.NewScanner(stdout)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	for lines.Scan() {
		var ev struct {
			Event string `json:"event"`
			ID    string `json:"id"`
		}
		line := lines.Bytes()
		if json.Unmarshal(line, &ev) == nil && ev.Event == "pending" {
			pending = ev.ID
			_, err := os.Stat(target)
			require.True(t, os.IsNotExist(err), "the write must not happen before approval")
			code, out, errs := run(t, "show", ev.ID, "--data", data)
			require.Equal(t, 0, code, errs)
			require.Contains(t, out, "mcp.fs.write_file")
			require.Contains(t, out, target, "the approver sees the exact arguments")
			time.Sleep(300 * time.Millisecond) // still not written while pending
			_, err = os.Stat(target)
			require.True(t, os.IsNotExist(err), "the write must not happen before approval")
			code, _, errs = run(t, "approve", ev.ID, "--data", data)
			require.Equal(t, 0, code, errs)
			_, err = io.WriteString(stdin, "approved\n")
			require.NoError(t, err)
			continue
		}
		require.NoError(t, json.Unmarshal(line, &sum), "gateway.mjs printed: %s", line)
	}
	err = cmd.Wait()
	t.Logf("gateway.mjs: %v in %s", err, time.Since(start).Round(time.Millisecond))
	for _, c := range sum.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s", c.Name, c.Detail)
		}
	}
	require.NoError(t, err, "gateway.mjs failed\nstderr: %s", stderr.String())
	require.True(t, sum.OK)
	require.NotEmpty(t, pending, "the write asked a person")
	got, err := os.ReadFile(target)
	require.NoError(t, err)
	require.Equal(t, "written through the gateway\n", string(got))
	require.GreaterOrEqual(t, sum.Passed, 38, "every check ran")
	t.Logf("%d checks passed", sum.Passed)
	if !bytes.Contains([]byte(stderr.String()), []byte("approval needed")) {
		t.Errorf("the gateway did not log the pending write:\n%s", stderr.String())
	}
}

// TestGatewayCommandHTTP runs `agentotp gateway --transport http`: the
// client must present the gateway's agent key.
func TestGatewayCommandHTTP(t *testing.T) {
	bin := buildTestDownstream(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	withEnv(t, nil)
	code, out, errs := run(t, "agents", "create", "gateway", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	withEnv(t, map[string]string{"AGENTOTP_API_KEY": key})
	cfg := writeFile(t, dir, "gateway.yaml", "servers:\n  dst: {command: "+bin+"}\n")

	var stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"gateway", "--config", cfg, "--data", data, "--policies", examplePolicy,
			"--transport", "http", "--addr", "127.0.0.1:0"}, strings.NewReader(""), io.Discard, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case c := <-done:
			require.Equal(t, 0, c, stderr.String())
		case <-time.After(20 * time.Second):
			t.Error("agentotp gateway did not stop")
		}
	})
	re := regexp.MustCompile(`streamable HTTP at (http://\S+/mcp)`)
	require.Eventually(t, func() bool { return re.MatchString(stderr.String()) }, 30*time.Second, 10*time.Millisecond, "stderr: %s", stderr.String())
	endpoint := re.FindStringSubmatch(stderr.String())[1]

	open := func(key string) (*client.Client, error) {
		tr, err := transport.NewStreamableHTTP(endpoint, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + key}))
		require.NoError(t, err)
		c := client.NewClient(tr, client.WithProtocolVersion(mcp.ProtocolVersion20251125))
		require.NoError(t, c.Start(context.Background()))
		t.Cleanup(func() { _ = c.Close() })
		ictx, icancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer icancel()
		var init mcp.InitializeRequest
		init.Params.ProtocolVersion = mcp.ProtocolVersion20251125
		_, err = c.Initialize(ictx, init)
		return c, err
	}
	_, err := open("ak_notTheGatewaysKeyAtAll0000000000")
	require.Error(t, err, "a wrong key is refused")
	c, err := open(key)
	require.NoError(t, err)
	text, isErr := gwCall(t, c, "dst__echo", map[string]any{"text": "over http"})
	require.False(t, isErr, text)
	require.Equal(t, "echo: over http", text)
}
