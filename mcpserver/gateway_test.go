package mcpserver_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/mcpserver"
	"github.com/agentotp/agentotp/store/sqlite"
)

// gatewayPolicy: resource reads, prompts, read-only tools (by their
// annotation), crash and add_tool are approved; delete_item of id "root"
// is denied; everything else waits for a person.
var gatewayPolicy = agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	auto := agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "auto"}
	switch t := in.Tool; {
	case strings.HasSuffix(in.Action, ".resources.read"), strings.HasSuffix(in.Action, ".prompts.get"):
		return auto, nil
	case t == nil:
	case t.Name == "delete_item" && t.Args["id"] == "root":
		return agentotp.Decision{Effect: agentotp.EffectDeny, Rule: "no-root", Reason: "never delete root"}, nil
	case t.Name == "crash", t.Name == "add_tool", t.Annotations["readOnlyHint"] == true:
		return auto, nil
	}
	return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "ask"}, nil
})

// buildDownstream builds testdata/downstream (the test's MCP server) into dir.
func buildDownstream(tb testing.TB, dir string) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		tb.Skip("go is not on PATH: cannot build the downstream test server")
	}
	bin := filepath.Join(dir, "downstream")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./testdata/downstream").CombinedOutput()
	require.NoError(tb, err, "go build ./testdata/downstream: %s", out)
	return bin
}

// gwEnv is an in-process agentotp (SQLite) with one agent and an approver.
type gwEnv struct {
	svc      *agentotp.Service
	agent    agentotp.Principal
	agentKey agentotp.Secret
	approver agentotp.Principal
}

func newGWEnv(tb testing.TB, synchronous string) *gwEnv {
	tb.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(tb.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: synchronous})
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, store.Close()) })
	e := &gwEnv{svc: agentotp.NewService(store, agentotp.Options{Evaluator: gatewayPolicy, PublicURL: "http://agentotp.test", WaitPoll: 20 * time.Millisecond})}
	a, key, err := e.svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "gateway"})
	require.NoError(tb, err)
	e.agent, e.agentKey = agentotp.Principal{Agent: a}, key
	u, _, err := e.svc.CreateUser(ctx, agentotp.SystemPrincipal, agentotp.UserInput{Name: "ann", Role: agentotp.RoleApprover})
	require.NoError(tb, err)
	e.approver = agentotp.Principal{User: u}
	return e
}

func (e *gwEnv) perms() mcpserver.Permissions { return e.svc.AgentSession(e.agent) }
func (e *gwEnv) identity() string             { return "agent:" + string(e.agent.Agent.ID) }

// startGateway starts a gateway and returns it serving one client over
// in-process stdio pipes.
func startGateway(tb testing.TB, e *gwEnv, opts mcpserver.GatewayOptions) (*mcpserver.Gateway, *client.Client) {
	tb.Helper()
	return startGatewayAs(tb, e.perms(), e.identity(), opts)
}

func startGatewayAs(tb testing.TB, perms mcpserver.Permissions, identity string, opts mcpserver.GatewayOptions) (*mcpserver.Gateway, *client.Client) {
	tb.Helper()
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	g, err := mcpserver.NewGateway(opts)
	require.NoError(tb, err)
	require.NoError(tb, g.Start(context.Background()))
	tb.Cleanup(func() { require.NoError(tb, g.Close()) })

	c := pipeClient(tb, func(ctx context.Context, in io.Reader, out io.Writer) error {
		return g.ServeStdio(ctx, perms, identity, in, out)
	})
	return g, initLegacy(tb, c)
}

// initLegacy initializes c on protocol 2025-11-25, as today's MCP hosts
// (Claude Desktop, Claude Code) do.
func initLegacy(tb testing.TB, c *client.Client) *client.Client {
	tb.Helper()
	return initClient(tb, c, mcp.ProtocolVersion20251125, mcp.Implementation{Name: "gateway-test-client", Version: "9.9.9"})
}

// stdioServer is the downstream binary as the gateway's server name.
func stdioServer(name, bin, log string) mcpserver.Downstream {
	return mcpserver.Downstream{Name: name, Command: bin, Env: map[string]string{"DOWNSTREAM_LOG": log}}
}

// dsCall is one line of the downstream's call log.
type dsCall struct {
	Tool string         `json:"tool"`
	Args map[string]any `json:"args"`
}

// downstreamCalls reads what reached the downstream server named tool
// ("" = all).
func downstreamCalls(t *testing.T, log, tool string) []dsCall {
	t.Helper()
	b, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var out []dsCall
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var c dsCall
		require.NoError(t, json.Unmarshal([]byte(line), &c))
		if tool == "" || c.Tool == tool {
			out = append(out, c)
		}
	}
	return out
}

// rawTools lists tools with a raw tools/list: name → the tool's JSON.
func rawTools(t *testing.T, c *client.Client) map[string]map[string]json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.GetTransport().SendRequest(ctx, transport.JSONRPCRequest{JSONRPC: "2.0", ID: mcp.NewRequestId("raw-list"), Method: "tools/list"})
	require.NoError(t, err)
	require.Nil(t, resp.Error)
	var page struct {
		Tools      []map[string]json.RawMessage `json:"tools"`
		NextCursor string                       `json:"nextCursor"`
	}
	require.NoError(t, json.Unmarshal(resp.Result, &page))
	require.Empty(t, page.NextCursor)
	out := map[string]map[string]json.RawMessage{}
	for _, tl := range page.Tools {
		var name string
		require.NoError(t, json.Unmarshal(tl["name"], &name))
		out[name] = tl
	}
	return out
}

var permIDRE = regexp.MustCompile(`perm_[A-Za-z0-9]+`)

func TestGateway(t *testing.T) {
	bin := buildDownstream(t, t.TempDir())

	t.Run("tools are re-exposed with their schemas byte for byte", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{stdioServer("dst", bin, filepath.Join(t.TempDir(), "log"))}})
		direct, err := client.NewStdioMCPClient(bin, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = direct.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var init mcp.InitializeRequest
		init.Params.ProtocolVersion = mcp.ProtocolVersion20251125
		_, err = direct.Initialize(ctx, init)
		require.NoError(t, err)

		want, got := rawTools(t, direct), rawTools(t, c)
		require.Len(t, got, len(want))
		for name, w := range want {
			g, ok := got["dst__"+name]
			require.True(t, ok, "dst__%s listed", name)
			require.Equal(t, string(w["inputSchema"]), string(g["inputSchema"]), "%s: inputSchema", name)
			require.Equal(t, string(w["description"]), string(g["description"]), "%s: description", name)
			require.JSONEq(t, string(w["annotations"]), string(g["annotations"]), "%s: annotations", name)
		}
		schema := string(got["dst__search"]["inputSchema"])
		for _, kw := range []string{`"$schema"`, `"$defs"`, `"anyOf"`, `"$ref"`, `"additionalProperties":false`} {
			require.Contains(t, schema, kw)
		}
		require.Contains(t, string(got["dst__delete_item"]["annotations"]), `"destructiveHint":true`)
	})

	t.Run("auto-approved calls pass; denied calls never reach downstream", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		log := filepath.Join(t.TempDir(), "log")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{stdioServer("dst", bin, log)}})

		r := call(t, c, "dst__echo", map[string]any{"text": "hi"})
		require.False(t, r.isError, r.text)
		require.Equal(t, "echo: hi", r.text)
		args := map[string]any{"query": []any{"a", "b"}, "range": map[string]any{"from": 1.0, "to": 2.0}}
		r = call(t, c, "dst__search", args)
		require.False(t, r.isError, r.text)
		require.Equal(t, []dsCall{{"echo", map[string]any{"text": "hi"}}, {"search", args}}, downstreamCalls(t, log, ""))

		r = call(t, c, "dst__delete_item", map[string]any{"id": "root"})
		require.True(t, r.isError)
		require.Contains(t, r.text, "denied")
		require.Contains(t, r.text, "never delete root")
		require.Empty(t, downstreamCalls(t, log, "delete_item"), "a denied call must not reach downstream")

		// What the policy and the person see: action, scope = arguments,
		// context = annotations and client.
		list, _, err := e.svc.ListPermissions(context.Background(), e.approver, agentotp.PermissionFilter{Page: agentotp.Page{Limit: 100}})
		require.NoError(t, err)
		byAction := map[string]*agentotp.Permission{}
		for _, p := range list {
			byAction[p.Action] = p
		}
		echo := byAction["mcp.dst.echo"]
		require.NotNil(t, echo)
		require.Equal(t, agentotp.StatusUsed, echo.Status)
		require.Equal(t, map[string]any{"text": "hi"}, echo.Scope)
		require.Equal(t, map[string]any{"readOnlyHint": true, "destructiveHint": false}, echo.Context["annotations"])
		require.Equal(t, map[string]any{"name": "gateway-test-client", "version": "9.9.9"}, echo.Context["client"])
		require.Equal(t, agentotp.StatusDenied, byAction["mcp.dst.delete_item"].Status)
	})

	t.Run("approval runs exactly the approved arguments once", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		log := filepath.Join(t.TempDir(), "log")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Wait: 20 * time.Second, Servers: []mcpserver.Downstream{stdioServer("dst", bin, log)}})
		args := map[string]any{"id": "a1", "reason": "cleanup"}

		var seen *agentotp.Permission
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 500 {
				list, _, err := e.svc.ListPermissions(context.Background(), e.approver, agentotp.PermissionFilter{Status: agentotp.StatusPending, Page: agentotp.Page{Limit: 10}})
				if err != nil {
					t.Error(err)
					return
				}
				if len(list) > 0 {
					seen = list[0]
					if len(downstreamCalls(t, log, "")) != 0 {
						t.Error("the call reached downstream before approval")
					}
					if _, err := e.svc.Decide(context.Background(), e.approver, seen.ID, agentotp.DecideInput{Approved: true}); err != nil {
						t.Error(err)
					}
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Error("no request became pending")
		}()
		r := call(t, c, "dst__delete_item", args)
		<-done
		require.False(t, r.isError, r.text)
		require.Equal(t, "deleted a1", r.text)
		require.Equal(t, "mcp.dst.delete_item", seen.Action)
		require.Equal(t, args, seen.Scope, "the person sees the exact arguments")
		require.Equal(t, true, seen.Context["annotations"].(map[string]any)["destructiveHint"])
		require.Equal(t, []dsCall{{"delete_item", args}}, downstreamCalls(t, log, ""))

		// The approval was for that call only: another is asked anew (and
		// denied here), and nothing more reaches downstream.
		go func() {
			for range 500 {
				list, _, _ := e.svc.ListPermissions(context.Background(), e.approver, agentotp.PermissionFilter{Status: agentotp.StatusPending, Page: agentotp.Page{Limit: 10}})
				if len(list) > 0 {
					_, _ = e.svc.Decide(context.Background(), e.approver, list[0].ID, agentotp.DecideInput{Approved: false, Reason: "not this one"})
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		r = call(t, c, "dst__delete_item", map[string]any{"id": "a2", "reason": "cleanup"})
		require.True(t, r.isError)
		require.Contains(t, r.text, "not this one")
		require.Len(t, downstreamCalls(t, log, ""), 1)
	})

	t.Run("pending past the wait; the same call picks up the decision", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		log := filepath.Join(t.TempDir(), "log")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Wait: 200 * time.Millisecond, Servers: []mcpserver.Downstream{stdioServer("dst", bin, log)}})
		args := map[string]any{"id": "b1"}

		r := call(t, c, "dst__delete_item", args)
		require.True(t, r.isError)
		require.True(t, strings.HasPrefix(r.text, "approval pending (perm_"), r.text)
		require.Contains(t, r.text, "ask again with the same arguments")
		id := agentotp.PermissionID(permIDRE.FindString(r.text))
		require.Contains(t, r.text, "http://agentotp.test/ui/requests/"+string(id))
		require.Empty(t, downstreamCalls(t, log, ""))

		_, err := e.svc.Decide(context.Background(), e.approver, id, agentotp.DecideInput{Approved: true})
		require.NoError(t, err)

		// Different arguments are not covered by it.
		r = call(t, c, "dst__delete_item", map[string]any{"id": "b2"})
		require.True(t, r.isError)
		other := permIDRE.FindString(r.text)
		require.NotEmpty(t, other)
		require.NotEqual(t, string(id), other)
		require.Empty(t, downstreamCalls(t, log, ""))

		// The same arguments again: the decision.
		r = call(t, c, "dst__delete_item", map[string]any{"id": "b1"})
		require.False(t, r.isError, r.text)
		require.Equal(t, "deleted b1", r.text)
		require.Equal(t, []dsCall{{"delete_item", args}}, downstreamCalls(t, log, ""))
		p, _, err := e.svc.GetPermission(context.Background(), e.agent, id, 0)
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusUsed, p.Status)

		// Spent: the same call again asks anew.
		r = call(t, c, "dst__delete_item", args)
		require.True(t, r.isError)
		require.True(t, strings.HasPrefix(r.text, "approval pending (perm_"), r.text)
		require.NotEqual(t, string(id), permIDRE.FindString(r.text))
		require.Len(t, downstreamCalls(t, log, ""), 1)
	})

	t.Run("the same call from another client asks anew and never wedges", func(t *testing.T) {
		// Two MCP clients of one agent (two hosts, or a host before and
		// after an update) name themselves differently; the person who
		// approves sees which one asked. The approval stays with it.
		e := newGWEnv(t, "NORMAL")
		log := filepath.Join(t.TempDir(), "log")
		g, _ := startGateway(t, e, mcpserver.GatewayOptions{Wait: 200 * time.Millisecond, Servers: []mcpserver.Downstream{stdioServer("dst", bin, log)}})
		key := "ak_thisIsTheGatewayClientsKey0000000"
		srv := httptest.NewServer(mcpserver.SingleAgent(key, e.perms(), e.identity(), g.HTTP(mcpserver.HTTPOptions{})))
		t.Cleanup(srv.Close)
		connect := func(version string) *client.Client {
			tr, err := transport.NewStreamableHTTP(srv.URL+"/mcp", transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + key}))
			require.NoError(t, err)
			return initClient(t, client.NewClient(tr, client.WithProtocolVersion(mcp.ProtocolVersion20251125)),
				mcp.ProtocolVersion20251125, mcp.Implementation{Name: "claude-code", Version: version})
		}
		c1, c2 := connect("1.0.0"), connect("1.0.1")
		args := map[string]any{"id": "x1"}

		r := call(t, c1, "dst__delete_item", args)
		require.True(t, strings.HasPrefix(r.text, "approval pending (perm_"), r.text)
		id := permIDRE.FindString(r.text)
		_, err := e.svc.Decide(context.Background(), e.approver, agentotp.PermissionID(id), agentotp.DecideInput{Approved: true})
		require.NoError(t, err)

		for range 2 {
			r = call(t, c2, "dst__delete_item", args)
			require.True(t, strings.HasPrefix(r.text, "approval pending (perm_"), r.text)
			require.NotEqual(t, id, permIDRE.FindString(r.text))
		}
		require.Empty(t, downstreamCalls(t, log, ""))

		r = call(t, c1, "dst__delete_item", args)
		require.False(t, r.isError, r.text)
		require.Equal(t, []dsCall{{"delete_item", args}}, downstreamCalls(t, log, ""))
	})

	t.Run("a crashed child restarts; other servers keep working", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		dir := t.TempDir()
		log := filepath.Join(dir, "log")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{RestartDelay: time.Second, Servers: []mcpserver.Downstream{
			stdioServer("dst", bin, log), stdioServer("other", bin, filepath.Join(dir, "other.log")),
		}})
		require.False(t, call(t, c, "dst__echo", map[string]any{"text": "before"}).isError)

		r := call(t, c, "dst__crash", nil)
		require.True(t, r.isError)
		require.Contains(t, r.text, "downstream dst failed during the call")
		r = call(t, c, "dst__echo", map[string]any{"text": "down"})
		require.True(t, r.isError)
		require.Contains(t, r.text, "downstream dst is unavailable (restarting)")
		r = call(t, c, "other__echo", map[string]any{"text": "still here"})
		require.False(t, r.isError, r.text)

		start := time.Now()
		require.Eventually(t, func() bool {
			return !call(t, c, "dst__echo", map[string]any{"text": "after"}).isError
		}, 15*time.Second, 100*time.Millisecond)
		t.Logf("dst was back %s after the crash", time.Since(start).Round(time.Millisecond))
		require.Len(t, downstreamCalls(t, log, "crash"), 1)
		require.Len(t, downstreamCalls(t, log, "echo"), 2) // before, after: "down" never reached it
	})

	t.Run("children get no gateway secrets", func(t *testing.T) {
		t.Setenv("AGENTOTP_API_KEY", "ak_gatewaySecretKeyThatMustNotLeak00")
		t.Setenv("GATEWAY_TEST_SECRET", "hunter2-must-not-leak")
		e := newGWEnv(t, "NORMAL")
		ds := stdioServer("dst", bin, filepath.Join(t.TempDir(), "log"))
		ds.Env["CONFIGURED"] = "yes"
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{ds}})
		r := call(t, c, "dst__env", nil)
		require.False(t, r.isError, r.text)
		require.NotContains(t, r.text, "AGENTOTP")
		require.NotContains(t, r.text, "ak_gatewaySecret")
		require.NotContains(t, r.text, "hunter2")
		var keys []string
		for line := range strings.SplitSeq(r.text, "\n") {
			k, _, _ := strings.Cut(line, "=")
			keys = append(keys, k)
		}
		want := []string{"CONFIGURED", "DOWNSTREAM_LOG", "PATH"}
		if os.Getenv("HOME") != "" {
			want = []string{"CONFIGURED", "DOWNSTREAM_LOG", "HOME", "PATH"}
		}
		require.Equal(t, want, keys)
	})

	t.Run("tools/list_changed is followed and passed on", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{stdioServer("dst", bin, filepath.Join(t.TempDir(), "log"))}})
		var mu sync.Mutex
		changed := 0
		c.OnNotification(func(n mcp.JSONRPCNotification) {
			if n.Method == mcp.MethodNotificationToolsListChanged {
				mu.Lock()
				changed++
				mu.Unlock()
			}
		})
		require.NotContains(t, rawTools(t, c), "dst__extra")
		require.False(t, call(t, c, "dst__add_tool", nil).isError)
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return changed > 0
		}, 10*time.Second, 10*time.Millisecond, "the client is told the list changed")
		require.Contains(t, rawTools(t, c), "dst__extra")
		r := call(t, c, "dst__extra", map[string]any{"n": 1})
		require.False(t, r.isError, r.text)
	})

	t.Run("progress notifications pass through", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{stdioServer("dst", bin, filepath.Join(t.TempDir(), "log"))}})
		progress := progressOf(c)
		var req mcp.CallToolRequest
		req.Params.Name, req.Params.Arguments = "dst__slow", map[string]any{"steps": 3}
		req.Params.Meta = &mcp.Meta{ProgressToken: "my-token"}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := c.CallTool(ctx, req)
		require.NoError(t, err)
		require.False(t, res.IsError)
		require.Eventually(t, func() bool { return len(progress()) == 3 }, 5*time.Second, 10*time.Millisecond)
		for i, n := range progress() {
			require.Equal(t, "my-token", n["progressToken"])
			require.EqualValues(t, i+1, n["progress"])
			require.EqualValues(t, 3, n["total"])
		}
	})

	t.Run("a server cannot report progress on another server's call", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{
			stdioServer("a", bin, filepath.Join(t.TempDir(), "log")), stdioServer("b", bin, filepath.Join(t.TempDir(), "log"))}})
		progress := progressOf(c)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			var req mcp.CallToolRequest
			req.Params.Name, req.Params.Arguments = "a__slow", map[string]any{"steps": 20}
			req.Params.Meta = &mcp.Meta{ProgressToken: "mine"}
			_, err := c.CallTool(ctx, req)
			done <- err
		}()
		require.Eventually(t, func() bool { return len(progress()) > 0 }, 5*time.Second, time.Millisecond) // a's call is running
		r := call(t, c, "b__spray_progress", map[string]any{"n": 20})
		require.False(t, r.isError, r.text)
		require.NoError(t, <-done)
		require.Eventually(t, func() bool { return len(progress()) >= 20 }, 5*time.Second, time.Millisecond)
		got := progress()
		require.Len(t, got, 20, "a's own steps, and nothing else")
		for _, n := range got {
			require.Equal(t, "mine", n["progressToken"])
			require.NotEqual(t, "sprayed", n["message"])
		}
	})

	t.Run("resources and prompts pass through, gated", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		log := filepath.Join(t.TempDir(), "log")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{stdioServer("dst", bin, log)}})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := c.ListResources(ctx, mcp.ListResourcesRequest{})
		require.NoError(t, err)
		require.Len(t, res.Resources, 1)
		require.Equal(t, "mem://readme", res.Resources[0].URI)
		var rr mcp.ReadResourceRequest
		rr.Params.URI = "mem://readme"
		read, err := c.ReadResource(ctx, rr)
		require.NoError(t, err)
		require.Len(t, read.Contents, 1)
		require.Equal(t, "hello from downstream", read.Contents[0].(mcp.TextResourceContents).Text)

		prompts, err := c.ListPrompts(ctx, mcp.ListPromptsRequest{})
		require.NoError(t, err)
		require.Len(t, prompts.Prompts, 1)
		require.Equal(t, "dst__greet", prompts.Prompts[0].Name)
		var pr mcp.GetPromptRequest
		pr.Params.Name, pr.Params.Arguments = "dst__greet", map[string]string{"name": "Ann"}
		got, err := c.GetPrompt(ctx, pr)
		require.NoError(t, err)
		require.Equal(t, "Say hello to Ann.", got.Messages[0].Content.(mcp.TextContent).Text)

		require.Equal(t, []dsCall{{"resources/read", map[string]any{"uri": "mem://readme"}}, {"prompts/get", map[string]any{"name": "Ann"}}},
			downstreamCalls(t, log, ""))
		list, _, err := e.svc.ListPermissions(ctx, e.approver, agentotp.PermissionFilter{Page: agentotp.Page{Limit: 10}})
		require.NoError(t, err)
		scopes := map[string]map[string]any{}
		for _, p := range list {
			require.Equal(t, agentotp.StatusUsed, p.Status, p.Action)
			scopes[p.Action] = p.Scope
		}
		require.Equal(t, map[string]map[string]any{
			"mcp.dst.resources.read": {"uri": "mem://readme"},
			"mcp.dst.prompts.get":    {"name": "greet", "arguments": map[string]any{"name": "Ann"}},
		}, scopes)
	})

	t.Run("a URI two servers' templates match is read from neither", func(t *testing.T) {
		e := newGWEnv(t, "NORMAL")
		logA, logB := filepath.Join(t.TempDir(), "log"), filepath.Join(t.TempDir(), "log")
		a, b := stdioServer("a", bin, logA), stdioServer("b", bin, logB)
		a.Env["DOWNSTREAM_TEMPLATE"], b.Env["DOWNSTREAM_TEMPLATE"] = "docs://{name}", "{+anything}"
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{a, b}})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		read := func(uri string) (string, error) {
			var rr mcp.ReadResourceRequest
			rr.Params.URI = uri
			res, err := c.ReadResource(ctx, rr)
			if err != nil {
				return "", err
			}
			return res.Contents[0].(mcp.TextResourceContents).Text, nil
		}
		// The templates are tried in no fixed order: ask often enough
		// that each server's would come first.
		for range 20 {
			_, err := read("docs://secret-plan")
			require.ErrorContains(t, err, "matches resource templates of more than one server")
		}
		require.Empty(t, downstreamCalls(t, logA, ""))
		require.Empty(t, downstreamCalls(t, logB, ""))
		list, _, err := e.svc.ListPermissions(ctx, e.approver, agentotp.PermissionFilter{Page: agentotp.Page{Limit: 10}})
		require.NoError(t, err)
		require.Empty(t, list, "nothing was asked")

		// A URI only one template matches, and a listed resource, still read.
		text, err := read("other://x")
		require.NoError(t, err)
		require.Equal(t, "from template {+anything}", text)
		text, err = read("mem://readme")
		require.NoError(t, err)
		require.Equal(t, "hello from downstream", text)
		require.Equal(t, []dsCall{{"resources/read", map[string]any{"uri": "mem://readme"}}}, downstreamCalls(t, logA, ""))
		require.Equal(t, []dsCall{{"resources/read", map[string]any{"uri": "other://x"}}}, downstreamCalls(t, logB, ""))
	})

	t.Run("streamable HTTP downstream and upstream", func(t *testing.T) {
		url := startHTTPDownstream(t, bin, filepath.Join(t.TempDir(), "log"))
		e := newGWEnv(t, "NORMAL")
		g, _ := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{{Name: "web", URL: url}}})

		// The gateway itself over streamable HTTP, as `agentotp gateway
		// --transport http` serves it.
		key := "ak_thisIsTheGatewayClientsKey0000000"
		srv := httptest.NewServer(mcpserver.SingleAgent(key, e.perms(), e.identity(), g.HTTP(mcpserver.HTTPOptions{})))
		t.Cleanup(srv.Close)
		tr, err := transport.NewStreamableHTTP(srv.URL+"/mcp", transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + key}))
		require.NoError(t, err)
		c := initLegacy(t, client.NewClient(tr, client.WithProtocolVersion(mcp.ProtocolVersion20251125)))

		tools := rawTools(t, c)
		require.Contains(t, tools, "web__search")
		require.Contains(t, string(tools["web__search"]["inputSchema"]), `"anyOf"`)
		r := call(t, c, "web__echo", map[string]any{"text": "over http"})
		require.False(t, r.isError, r.text)
		require.Equal(t, "echo: over http", r.text)
		r = call(t, c, "web__delete_item", map[string]any{"id": "root"})
		require.True(t, r.isError)
		require.Contains(t, r.text, "denied")
	})

	t.Run("SSE downstream", func(t *testing.T) {
		log := filepath.Join(t.TempDir(), "log")
		url := startHTTPDownstream(t, bin, log, "-sse")
		e := newGWEnv(t, "NORMAL")
		_, c := startGateway(t, e, mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{{Name: "old", URL: url, Transport: mcpserver.TransportSSE}}})
		require.Contains(t, string(rawTools(t, c)["old__search"]["inputSchema"]), `"$defs"`)
		r := call(t, c, "old__echo", map[string]any{"text": "over sse"})
		require.False(t, r.isError, r.text)
		require.Equal(t, "echo: over sse", r.text)
		require.Equal(t, []dsCall{{"echo", map[string]any{"text": "over sse"}}}, downstreamCalls(t, log, ""))
	})
}

// progressOf collects the progress notifications c receives, and returns
// what it has so far.
func progressOf(c *client.Client) func() []map[string]any {
	var mu sync.Mutex
	var got []map[string]any
	c.OnNotification(func(n mcp.JSONRPCNotification) {
		if n.Method == string(mcp.MethodNotificationProgress) {
			mu.Lock()
			got = append(got, n.Params.AdditionalFields)
			mu.Unlock()
		}
	})
	return func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// startHTTPDownstream runs the downstream binary over streamable HTTP and
// returns its endpoint URL.
func startHTTPDownstream(t *testing.T, bin, log string, flags ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-http", "127.0.0.1:0"}, flags...)...)
	cmd.Env = []string{"DOWNSTREAM_LOG=" + log}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	require.True(t, ok, line)
	return url
}

func TestGatewayOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		ds   []mcpserver.Downstream
		err  string
	}{
		{"no servers", nil, "no downstream servers"},
		{"bad name", []mcpserver.Downstream{{Name: "a__b", Command: "x"}}, "server name"},
		{"trailing underscore", []mcpserver.Downstream{{Name: "a_", Command: "x"}}, "server name"},
		{"both", []mcpserver.Downstream{{Name: "a", Command: "x", URL: "http://x"}}, "not both"},
		{"neither", []mcpserver.Downstream{{Name: "a"}}, "set command"},
		{"bad url", []mcpserver.Downstream{{Name: "a", URL: "ftp://x"}}, "http://"},
		{"sse command", []mcpserver.Downstream{{Name: "a", Command: "x", Transport: "sse"}}, "stdio"},
		{"twice", []mcpserver.Downstream{{Name: "a", Command: "x"}, {Name: "a", Command: "y"}}, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mcpserver.NewGateway(mcpserver.GatewayOptions{Servers: tc.ds})
			require.ErrorContains(t, err, tc.err)
		})
	}
	require.True(t, mcpserver.ValidServerName("fs"))
	require.True(t, mcpserver.ValidServerName("my_files-2"))
	require.False(t, mcpserver.ValidServerName(""))
	require.False(t, mcpserver.ValidServerName("a.b"))
}
