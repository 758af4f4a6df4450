package mcpserver_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/mcpserver"
	"github.com/agentotp/agentotp/store/sqlite"
)

var update = flag.Bool("update", false, "rewrite golden files")

var (
	_ mcpserver.Permissions = (*agentotp.AgentSession)(nil)
	_ mcpserver.Permissions = (*otpclient.Client)(nil)
)

// testPolicy: auto.* and claude.Read are approved, deny.* and claude.Bash
// denied, everything else waits for a person.
var testPolicy = agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	switch {
	case strings.HasPrefix(in.Action, "auto."), in.Action == "claude.Read":
		return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "auto"}, nil
	case strings.HasPrefix(in.Action, "deny."), in.Action == "claude.Bash":
		return agentotp.Decision{Effect: agentotp.EffectDeny, Rule: "no", Reason: "test policy forbids it"}, nil
	}
	return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "ask"}, nil
})

type env struct {
	svc      *agentotp.Service
	url      string
	mcp      *mcpserver.Server
	approver agentotp.Principal
	adminKey agentotp.Secret
	agents   [2]agentotp.Principal
	keys     [2]agentotp.Secret
	skew     atomic.Int64 // nanoseconds added to the service clock
}

func newEnv(t *testing.T, opts mcpserver.Options) *env {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	e := &env{}
	srv := httptest.NewUnstartedServer(nil)
	e.url = "http://" + srv.Listener.Addr().String()
	e.svc = agentotp.NewService(store, agentotp.Options{
		Evaluator: testPolicy, PublicURL: e.url, WaitPoll: 20 * time.Millisecond,
		Clock: func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) },
	})
	api := httpapi.New(e.svc, httpapi.Options{RateLimit: -1, PublicURL: e.url})
	e.mcp = mcpserver.New(opts)
	h := api.AgentOnly(mcpserver.ServiceAgents(e.svc, e.mcp.HTTP(mcpserver.HTTPOptions{AllowedOrigins: []string{e.url}})))
	api.Handle("/mcp", h)
	api.Handle("/mcp/", h)
	srv.Config.Handler = api
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, store.Close())
	})
	e.adminKey = agentotp.NewUserKey()
	_, err = e.svc.EnsureAdmin(ctx, e.adminKey)
	require.NoError(t, err)
	u, _, err := e.svc.CreateUser(ctx, agentotp.SystemPrincipal, agentotp.UserInput{Name: "ann", Role: agentotp.RoleApprover})
	require.NoError(t, err)
	e.approver = agentotp.Principal{User: u}
	for i, name := range []string{"alpha", "beta"} {
		a, key, err := e.svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: name})
		require.NoError(t, err)
		e.agents[i], e.keys[i] = agentotp.Principal{Agent: a}, key
	}
	return e
}

func initialize(t *testing.T, c *client.Client) *client.Client {
	t.Helper()
	return initClient(t, c, mcp.LATEST_PROTOCOL_VERSION, mcp.Implementation{Name: "test-client", Version: "1.2.3"})
}

// initClient starts c and initializes it as info on protocol version.
func initClient(tb testing.TB, c *client.Client, version string, info mcp.Implementation) *client.Client {
	tb.Helper()
	// Start's context lives as long as the connection (the SSE stream).
	require.NoError(tb, c.Start(context.Background()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var req mcp.InitializeRequest
	req.Params.ProtocolVersion = version
	req.Params.ClientInfo = info
	_, err := c.Initialize(ctx, req)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// pipeClient serves one client over a pair of pipes with the stdio
// framing and returns its (not yet initialized) client.
func pipeClient(tb testing.TB, serve func(ctx context.Context, in io.Reader, out io.Writer) error) *client.Client {
	tb.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, inR, outW) }()
	tb.Cleanup(func() {
		cancel()
		_ = inW.Close()
		require.NoError(tb, <-done)
		_ = outW.Close()
	})
	return client.NewClient(transport.NewIO(outR, inW, io.NopCloser(strings.NewReader(""))),
		client.WithProtocolVersion(mcp.ProtocolVersion20251125))
}

// stdioClient serves agent i in process over a pair of pipes with the
// stdio framing.
func (e *env) stdioClient(t *testing.T, i int) *client.Client {
	t.Helper()
	return e.stdioClientFor(t, e.svc.AgentSession(e.agents[i]), "agent:"+string(e.agents[i].Agent.ID))
}

func (e *env) stdioClientFor(t *testing.T, perms mcpserver.Permissions, identity string) *client.Client {
	t.Helper()
	return initialize(t, pipeClient(t, func(ctx context.Context, in io.Reader, out io.Writer) error {
		return e.mcp.ServeStdio(ctx, perms, identity, in, out)
	}))
}

func (e *env) httpClient(t *testing.T, key agentotp.Secret) *client.Client {
	t.Helper()
	tr, err := transport.NewStreamableHTTP(e.url+"/mcp", transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + key.Reveal()}))
	require.NoError(t, err)
	return initialize(t, client.NewClient(tr, client.WithProtocolVersion(mcp.ProtocolVersion20251125)))
}

func (e *env) sseClient(t *testing.T, key agentotp.Secret) *client.Client {
	t.Helper()
	tr, err := transport.NewSSE(e.url+"/mcp/sse", transport.WithHeaders(map[string]string{"Authorization": "Bearer " + key.Reveal()}))
	require.NoError(t, err)
	return initialize(t, client.NewClient(tr, client.WithProtocolVersion(mcp.ProtocolVersion20251125)))
}

type result struct {
	isError bool
	text    string
	data    map[string]any
}

func call(t *testing.T, c *client.Client, name string, args map[string]any) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	var req mcp.CallToolRequest
	req.Params.Name, req.Params.Arguments = name, args
	res, err := c.CallTool(ctx, req)
	require.NoError(t, err, "%s %v must answer with a tool result, not a protocol error", name, args)
	r := result{isError: res.IsError}
	for _, ct := range res.Content {
		if tc, ok := ct.(mcp.TextContent); ok {
			r.text += tc.Text
		}
	}
	if res.StructuredContent != nil {
		b, err := json.Marshal(res.StructuredContent)
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, &r.data))
	}
	return r
}

// decideSoon decides the agent's pending request for action once it
// appears, as a person would, and makes the test wait for it.
func (e *env) decideSoon(t *testing.T, action string, in agentotp.DecideInput) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx := context.Background()
		for range 1000 {
			list, _, err := e.svc.ListPermissions(ctx, e.approver, agentotp.PermissionFilter{Status: agentotp.StatusPending, Page: agentotp.Page{Limit: 100}})
			if err != nil {
				t.Error(err)
				return
			}
			for _, p := range list {
				if p.Action == action {
					time.Sleep(100 * time.Millisecond) // let the caller start waiting
					if _, err := e.svc.Decide(ctx, e.approver, p.ID, in); err != nil {
						t.Error(err)
					}
					return
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("%s never became pending", action)
	}()
	t.Cleanup(func() { <-done })
}

func TestToolsOverEveryTransport(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	clients := map[string]func(t *testing.T) *client.Client{
		"stdio":           func(t *testing.T) *client.Client { return e.stdioClient(t, 0) },
		"streamable-http": func(t *testing.T) *client.Client { return e.httpClient(t, e.keys[0]) },
		"sse":             func(t *testing.T) *client.Client { return e.sseClient(t, e.keys[0]) },
	}
	for name, open := range clients {
		t.Run(name, func(t *testing.T) {
			c := open(t)
			ctx := context.Background()
			tools, err := c.ListTools(ctx, mcp.ListToolsRequest{})
			require.NoError(t, err)
			var names []string
			for _, tl := range tools.Tools {
				names = append(names, tl.Name)
				require.NotEmpty(t, tl.Description, tl.Name)
			}
			require.ElementsMatch(t, []string{"request_permission", "get_permission", "verify_permission",
				"use_permission", "revoke_permission", "approval_prompt"}, names)

			// Auto-approved: token now; verify does not spend; one use only.
			r := call(t, c, "request_permission", map[string]any{"action": "auto.send", "scope": map[string]any{"max_emails": 1}})
			require.False(t, r.isError, r.text)
			require.Equal(t, "approved", r.data["status"])
			id, tok := r.data["id"].(string), r.data["token"].(string)
			require.True(t, strings.HasPrefix(tok, "otp_"))
			require.Contains(t, r.text, tok)
			r = call(t, c, "verify_permission", map[string]any{"id": id, "token": tok})
			require.False(t, r.isError, r.text)
			require.Equal(t, true, r.data["valid"])
			require.EqualValues(t, 1, r.data["uses_remaining"])
			r = call(t, c, "use_permission", map[string]any{"id": id, "token": tok, "details": map[string]any{"emails": 1}})
			require.False(t, r.isError, r.text)
			require.Equal(t, true, r.data["success"])
			r = call(t, c, "use_permission", map[string]any{"id": id, "token": tok})
			require.True(t, r.isError)
			require.Equal(t, false, r.data["success"])
			require.Equal(t, agentotp.ReasonTokenUsed, r.data["reason"])
			r = call(t, c, "verify_permission", map[string]any{"id": id, "token": tok})
			require.True(t, r.isError)
			require.Equal(t, false, r.data["valid"])

			// Denied by policy: an error result naming the reason.
			r = call(t, c, "request_permission", map[string]any{"action": "deny.wire"})
			require.True(t, r.isError)
			require.Equal(t, "denied", r.data["status"])
			require.Contains(t, r.text, "test policy forbids it")

			// Pending, then approved by a person during a long wait.
			r = call(t, c, "request_permission", map[string]any{"action": "ask." + name, "resource": "x"})
			require.True(t, r.isError)
			require.Equal(t, "pending", r.data["status"])
			id = r.data["id"].(string)
			require.Equal(t, e.url+"/ui/requests/"+id, r.data["approval_url"])
			require.Contains(t, r.text, "call get_permission with id "+id)
			e.decideSoon(t, "ask."+name, agentotp.DecideInput{Approved: true})
			r = call(t, c, "get_permission", map[string]any{"id": id, "wait_seconds": 20})
			require.False(t, r.isError, r.text)
			require.Equal(t, "approved", r.data["status"])
			tok = r.data["token"].(string)
			r = call(t, c, "use_permission", map[string]any{"id": id, "token": tok})
			require.False(t, r.isError, r.text)

			// Pending, then denied by a person.
			r = call(t, c, "request_permission", map[string]any{"action": "ask.deny." + name, "wait_seconds": 0})
			id = r.data["id"].(string)
			e.decideSoon(t, "ask.deny."+name, agentotp.DecideInput{Approved: false, Reason: "not today"})
			r = call(t, c, "get_permission", map[string]any{"id": id, "wait_seconds": 20})
			require.True(t, r.isError)
			require.Equal(t, "denied", r.data["status"])
			require.Contains(t, r.text, "not today")

			// Revoke a pending request; the permission reads revoked.
			r = call(t, c, "request_permission", map[string]any{"action": "ask.revoke." + name})
			id = r.data["id"].(string)
			r = call(t, c, "revoke_permission", map[string]any{"id": id, "reason": "changed my mind"})
			require.False(t, r.isError, r.text)
			require.Equal(t, "revoked", r.data["status"])
			r = call(t, c, "get_permission", map[string]any{"id": id, "wait_seconds": 0})
			require.True(t, r.isError)
			require.Equal(t, "revoked", r.data["status"])
		})
	}
}

func TestExpiredWhileWaiting(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	c := e.httpClient(t, e.keys[0])
	r := call(t, c, "request_permission", map[string]any{"action": "ask.slow"})
	require.Equal(t, "pending", r.data["status"])
	e.skew.Store(int64(agentotp.DefaultApprovalTTL + time.Second))
	r = call(t, c, "get_permission", map[string]any{"id": r.data["id"], "wait_seconds": 5})
	require.True(t, r.isError)
	require.Equal(t, "expired", r.data["status"])
	require.Contains(t, r.text, "Do not act")
}

func TestValidationNamesTheArgument(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	c := e.stdioClient(t, 0)
	cases := []struct {
		tool string
		args map[string]any
		want string
	}{
		{"request_permission", map[string]any{}, "action: is required"},
		{"request_permission", map[string]any{"action": 5}, "action: must be a string"},
		{"request_permission", map[string]any{"action": "a", "scope": "x"}, "scope: must be a JSON object"},
		{"request_permission", map[string]any{"action": "a", "ttl_seconds": 5}, "ttl_seconds: must be a whole number"},
		{"request_permission", map[string]any{"action": "a", "wait_seconds": 56}, "wait_seconds: must be a whole number"},
		{"request_permission", map[string]any{"action": "a", "wait_seconds": 1.5}, "wait_seconds"},
		{"request_permission", map[string]any{"action": "a", "to": "x"}, `unknown argument "to"`},
		{"request_permission", map[string]any{"action": "a\x00b"}, "invalid argument action"},
		{"request_permission", map[string]any{"action": strings.Repeat("a", 300)}, "invalid argument action"},
		{"get_permission", map[string]any{"id": "agt_1"}, "id: is not a permission id"},
		{"verify_permission", map[string]any{"id": string(agentotp.NewPermissionID())}, "token: is required"},
		{"use_permission", map[string]any{"id": string(agentotp.NewPermissionID()), "token": "otp_x", "details": []any{}}, "details: must be a JSON object"},
		{"revoke_permission", map[string]any{}, "id: is required"},
		{"approval_prompt", map[string]any{"tool_name": "Bash"}, "input: is required"},
	}
	for _, tc := range cases {
		r := call(t, c, tc.tool, tc.args)
		require.True(t, r.isError, "%s %v", tc.tool, tc.args)
		require.Contains(t, r.text, tc.want, "%s %v", tc.tool, tc.args)
	}
	// Nothing reached the store.
	n, err := e.svc.Store().CountPermissions(context.Background(), e.agents[0].Agent.ID, "*", time.Time{}, nil)
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestAgentsAreIsolatedOverHTTP(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	a, b := e.httpClient(t, e.keys[0]), e.httpClient(t, e.keys[1])
	r := call(t, a, "request_permission", map[string]any{"action": "auto.x"})
	id, tok := r.data["id"], r.data["token"]
	for _, tc := range []struct {
		tool string
		args map[string]any
	}{
		{"get_permission", map[string]any{"id": id, "wait_seconds": 0}},
		{"verify_permission", map[string]any{"id": id, "token": tok}},
		{"use_permission", map[string]any{"id": id, "token": tok}},
		{"revoke_permission", map[string]any{"id": id}},
	} {
		r := call(t, b, tc.tool, tc.args)
		require.True(t, r.isError, tc.tool)
		require.Contains(t, r.text, "NOT_FOUND", tc.tool)
	}
	// A's token still works for A: B's attempts spent nothing.
	r = call(t, a, "use_permission", map[string]any{"id": id, "token": tok})
	require.False(t, r.isError, r.text)
}

func TestHTTPAuthentication(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	initBody := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}`
	post := func(path, auth string, header map[string]string) *http.Response {
		req, err := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(initBody))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for _, tc := range []struct {
		name, path, auth string
		header           map[string]string
		status           int
	}{
		{"no key", "/mcp", "", nil, http.StatusUnauthorized},
		{"wrong key", "/mcp", "Bearer ak_" + strings.Repeat("A", 32), nil, http.StatusUnauthorized},
		{"not bearer", "/mcp", "Basic " + e.keys[0].Reveal(), nil, http.StatusUnauthorized},
		{"sse without key", "/mcp/sse", "", nil, http.StatusUnauthorized},
		{"a user key", "/mcp", "Bearer " + e.adminKey.Reveal(), nil, http.StatusForbidden},
		{"foreign origin", "/mcp", "Bearer " + e.keys[0].Reveal(), map[string]string{"Origin": "http://evil.example.com"}, http.StatusForbidden},
		{"agent key", "/mcp", "Bearer " + e.keys[0].Reveal(), nil, http.StatusOK},
		{"own origin", "/mcp", "Bearer " + e.keys[0].Reveal(), map[string]string{"Origin": e.url}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(tc.path, tc.auth, tc.header)
			require.Equal(t, tc.status, resp.StatusCode)
			if tc.status == http.StatusUnauthorized {
				require.Equal(t, `Bearer realm="agentotp"`, resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
}

// A session belongs to the agent that opened it: another agent presenting
// its id is told it does not exist, on both HTTP transports.
func TestSessionsAreBoundToTheirAgent(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	c := e.httpClient(t, e.keys[0])
	sid := c.GetSessionId()
	require.NotEmpty(t, sid)
	body := `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`
	for _, tc := range []struct {
		name, method string
		key          agentotp.Secret
		want         int
	}{
		{"owner posts", http.MethodPost, e.keys[0], http.StatusOK},
		{"another agent posts", http.MethodPost, e.keys[1], http.StatusNotFound},
		{"owner listens", http.MethodGet, e.keys[0], http.StatusOK},
		{"another agent listens", http.MethodGet, e.keys[1], http.StatusNotFound},
		{"another agent ends it", http.MethodDelete, e.keys[1], http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The listening stream stays open: end it with the test.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, tc.method, e.url+"/mcp", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set("Mcp-Session-Id", sid)
			req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
			req.Header.Set("Authorization", "Bearer "+tc.key.Reveal())
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, tc.want, resp.StatusCode)
		})
	}

	// SSE: open a stream as A, then post to its session as B.
	req, _ := http.NewRequest(http.MethodGet, e.url+"/mcp/sse", nil)
	req.Header.Set("Authorization", "Bearer "+e.keys[0].Reveal())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	require.NoError(t, err)
	defer resp.Body.Close()
	buf := make([]byte, 512)
	n, err := resp.Body.Read(buf)
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(buf[:n]), "sessionId=")
	require.True(t, ok, string(buf[:n]))
	ssid := strings.Fields(after)[0]
	post := func(key agentotp.Secret) int {
		req, _ := http.NewRequest(http.MethodPost, e.url+"/mcp/message?sessionId="+ssid, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key.Reveal())
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusNotFound, post(e.keys[1]))
	require.Equal(t, http.StatusAccepted, post(e.keys[0]))
}

func TestToolCallsAreAuditedWithTheChannel(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	c := e.httpClient(t, e.keys[0])
	r := call(t, c, "request_permission", map[string]any{"action": "auto.audit"})
	call(t, c, "use_permission", map[string]any{"id": r.data["id"], "token": r.data["token"]})
	events, err := e.svc.Store().AuditEvents(context.Background(), agentotp.AuditFilter{PermissionID: agentotp.PermissionID(r.data["id"].(string)), Limit: 50})
	require.NoError(t, err)
	types := map[agentotp.EventType]bool{}
	for _, ev := range events {
		types[ev.Type] = true
		require.Equal(t, map[string]any{"via": "mcp", "transport": "streamable-http", "client": "test-client", "clientVersion": "1.2.3"},
			ev.Details["channel"], ev.Type)
	}
	require.True(t, types[agentotp.EventRequest] && types[agentotp.EventUse], types)
}

func TestApprovalPrompt(t *testing.T) {
	e := newEnv(t, mcpserver.Options{PromptWait: 10 * time.Second})
	c := e.stdioClient(t, 0)
	prompt := func(tool string, input map[string]any) map[string]any {
		t.Helper()
		r := call(t, c, "approval_prompt", map[string]any{"tool_name": tool, "input": input, "tool_use_id": "toolu_1"})
		require.False(t, r.isError, r.text)
		var out map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.text), &out), r.text)
		return out
	}

	// Allowed by policy: the input goes back unchanged.
	out := prompt("Read", map[string]any{"file_path": "/etc/hosts"})
	require.Equal(t, map[string]any{"behavior": "allow", "updatedInput": map[string]any{"file_path": "/etc/hosts"}}, out)

	// Denied by policy: a message, nothing else.
	out = prompt("Bash", map[string]any{"command": "rm -rf /"})
	require.Equal(t, "deny", out["behavior"])
	require.Contains(t, out["message"], "test policy forbids it")
	require.Len(t, out, 2)

	// Asked: a person approves with a narrowed input, which is what runs.
	input := map[string]any{"file_path": "/tmp/x", "content": "hi", "timeout": 60000.0}
	e.decideSoon(t, "claude.Write", agentotp.DecideInput{Approved: true, ScopeModifications: map[string]any{"timeout": 1000}})
	out = prompt("Write", input)
	require.Equal(t, "allow", out["behavior"], out)
	require.Equal(t, map[string]any{"file_path": "/tmp/x", "content": "hi", "timeout": 1000.0}, out["updatedInput"])

	// That approval was spent: the same call again is a new request.
	list, _, err := e.svc.ListPermissions(context.Background(), e.approver, agentotp.PermissionFilter{Status: agentotp.StatusUsed, Page: agentotp.Page{Limit: 10}})
	require.NoError(t, err)
	var actions []string
	for _, p := range list {
		actions = append(actions, p.Action)
	}
	require.ElementsMatch(t, []string{"claude.Read", "claude.Write"}, actions)
	e.decideSoon(t, "claude.Write", agentotp.DecideInput{Approved: false, Reason: "once is enough"})
	out = prompt("Write", input)
	require.Equal(t, "deny", out["behavior"])
	require.Contains(t, out["message"], "once is enough")
}

// A call still pending when the wait ends denies for now; the same call
// asked again picks up the person's decision instead of asking anew.
func TestApprovalPromptPicksUpALaterDecision(t *testing.T) {
	e := newEnv(t, mcpserver.Options{PromptWait: 200 * time.Millisecond})
	c := e.httpClient(t, e.keys[0])
	input := map[string]any{"url": "https://example.com"}
	r := call(t, c, "approval_prompt", map[string]any{"tool_name": "WebFetch", "input": input})
	require.Contains(t, r.text, `"behavior":"deny"`)
	require.Contains(t, r.text, "approval pending (perm_")
	list, _, err := e.svc.ListPermissions(context.Background(), e.approver, agentotp.PermissionFilter{Status: agentotp.StatusPending, Page: agentotp.Page{Limit: 10}})
	require.NoError(t, err)
	require.Len(t, list, 1)
	_, err = e.svc.Decide(context.Background(), e.approver, list[0].ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	r = call(t, c, "approval_prompt", map[string]any{"tool_name": "WebFetch", "input": input})
	require.JSONEq(t, `{"behavior":"allow","updatedInput":{"url":"https://example.com"}}`, r.text)
	n, err := e.svc.Store().CountPermissions(context.Background(), e.agents[0].Agent.ID, "*", time.Time{}, nil)
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "asking again must not create a second request")
}

// One agent's calls cannot make the server forget another's pending
// approval_prompt calls: the same call asked again still picks up the
// request already waiting for a person.
func TestApprovalPromptKeepsEachAgentsPendingCalls(t *testing.T) {
	e := newEnv(t, mcpserver.Options{PromptWait: time.Millisecond})
	alpha, beta := e.httpClient(t, e.keys[0]), e.httpClient(t, e.keys[1])
	pending := func(c *client.Client, cmd string) string {
		t.Helper()
		r := call(t, c, "approval_prompt", map[string]any{"tool_name": "Write", "input": map[string]any{"cmd": cmd}})
		_, id, ok := strings.Cut(r.text, "approval pending (")
		require.True(t, ok, r.text)
		id, _, _ = strings.Cut(id, ")")
		return id
	}
	first := pending(alpha, "deploy")
	for i := range 1001 {
		call(t, beta, "approval_prompt", map[string]any{"tool_name": "Write", "input": map[string]any{"cmd": fmt.Sprint("junk-", i)}})
	}
	require.Equal(t, first, pending(alpha, "deploy"))
}

// The tool definitions are a contract with every client: golden files,
// rewritten with go test ./mcpserver -update.
func TestToolDefinitionsGolden(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	c := e.stdioClient(t, 0)
	res, err := c.ListTools(context.Background(), mcp.ListToolsRequest{})
	require.NoError(t, err)
	require.Len(t, res.Tools, 6)
	for _, tool := range res.Tools {
		got, err := json.MarshalIndent(tool, "", "  ")
		require.NoError(t, err)
		got = append(got, '\n')
		path := filepath.Join("testdata", "tools", tool.Name+".json")
		if *update {
			require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
			require.NoError(t, os.WriteFile(path, got, 0o644))
		}
		want, err := os.ReadFile(path)
		require.NoError(t, err, "run go test ./mcpserver -update")
		require.Equal(t, string(want), string(got), tool.Name)
		// Honest annotations: reads are read-only, spending destroys.
		a := tool.Annotations
		switch tool.Name {
		case "get_permission", "verify_permission":
			require.True(t, *a.ReadOnlyHint, tool.Name)
		case "use_permission", "revoke_permission":
			require.True(t, *a.DestructiveHint, tool.Name)
			require.False(t, *a.IdempotentHint, tool.Name)
		}
	}
}

// agentotp mcp --url: the tools act through the HTTP API with the agent's
// key, and the server audits the MCP channel the adapter reports.
func TestRemoteAgentOverStdio(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	c := e.stdioClientFor(t, otpclient.New(e.url, e.keys[0].Reveal()), "key:"+e.keys[0].Hash())

	r := call(t, c, "request_permission", map[string]any{"action": "auto.remote", "scope": map[string]any{"max_n": 2}, "ttl_seconds": 60})
	require.False(t, r.isError, r.text)
	id, tok := r.data["id"].(string), r.data["token"].(string)
	r = call(t, c, "use_permission", map[string]any{"id": id, "token": tok, "details": map[string]any{"n": 3}})
	require.True(t, r.isError, "details beyond the scope are refused remotely too")
	r = call(t, c, "use_permission", map[string]any{"id": id, "token": tok, "details": map[string]any{"n": 2}})
	require.False(t, r.isError, r.text)

	r = call(t, c, "request_permission", map[string]any{"action": "ask.remote"})
	require.Equal(t, "pending", r.data["status"])
	require.Equal(t, e.url+"/ui/requests/"+r.data["id"].(string), r.data["approval_url"])
	e.decideSoon(t, "ask.remote", agentotp.DecideInput{Approved: true})
	r = call(t, c, "get_permission", map[string]any{"id": r.data["id"], "wait_seconds": 20})
	require.False(t, r.isError, r.text)
	require.NotEmpty(t, r.data["token"])
	r = call(t, c, "revoke_permission", map[string]any{"id": r.data["id"]})
	require.False(t, r.isError, r.text)

	r = call(t, c, "get_permission", map[string]any{"id": string(agentotp.NewPermissionID()), "wait_seconds": 0})
	require.True(t, r.isError)
	require.Contains(t, r.text, "NOT_FOUND")

	events, err := e.svc.Store().AuditEvents(context.Background(), agentotp.AuditFilter{PermissionID: agentotp.PermissionID(id), Limit: 50})
	require.NoError(t, err)
	require.NotEmpty(t, events)
	for _, ev := range events {
		require.Equal(t, map[string]any{"via": "mcp", "transport": "stdio", "client": "test-client", "clientVersion": "1.2.3"},
			ev.Details["channel"], ev.Type)
	}
}

// /mcp shares the API's per-key rate limit.
func TestMCPIsRateLimitedLikeTheAPI(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	api := httpapi.New(e.svc, httpapi.Options{RateLimit: 1, PublicURL: e.url})
	api.Handle("/mcp", api.AgentOnly(mcpserver.ServiceAgents(e.svc, e.mcp.HTTP(mcpserver.HTTPOptions{}))))
	srv := httptest.NewServer(api)
	defer srv.Close()
	codes := map[int]int{}
	for range 5 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}`))
		req.Header.Set("Authorization", "Bearer "+e.keys[0].Reveal())
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		codes[resp.StatusCode]++
		if resp.StatusCode == http.StatusTooManyRequests {
			require.NotEmpty(t, resp.Header.Get("Retry-After"))
		}
	}
	require.Equal(t, 2, codes[http.StatusOK], codes) // burst 2× of 1/s
	require.Equal(t, 3, codes[http.StatusTooManyRequests], codes)
}

// A client that gives up mid-wait loses nothing: the request stays
// pending and a later call picks up the decision and the token.
func TestClientLeavingMidWaitCanComeBack(t *testing.T) {
	e := newEnv(t, mcpserver.Options{})
	c := e.httpClient(t, e.keys[0])
	r := call(t, c, "request_permission", map[string]any{"action": "ask.later"})
	id := r.data["id"].(string)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var req mcp.CallToolRequest
	req.Params.Name, req.Params.Arguments = "get_permission", map[string]any{"id": id, "wait_seconds": 30}
	_, err := c.CallTool(ctx, req)
	require.Error(t, err, "the client gave up")
	// The decision comes later: after the server has seen the client go
	// (a decision racing the disconnect may go out in the lost answer).
	time.Sleep(200 * time.Millisecond)

	_, err = e.svc.Decide(context.Background(), e.approver, agentotp.PermissionID(id), agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	c2 := e.httpClient(t, e.keys[0]) // a new session, as after a restart
	r = call(t, c2, "get_permission", map[string]any{"id": id, "wait_seconds": 5})
	require.False(t, r.isError, r.text)
	require.NotEmpty(t, r.data["token"])
}
