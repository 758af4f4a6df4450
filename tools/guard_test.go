package tools_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tmc/langchaingo/agents"
	"github.com/tmc/langchaingo/chains"
	"github.com/tmc/langchaingo/llms/fake"
	"github.com/tmc/langchaingo/schema"
	lctools "github.com/tmc/langchaingo/tools"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/agentotp/agentotp/tools"
)

var (
	_ tools.Authorizer = (*agentotp.AgentSession)(nil)
	_ tools.Authorizer = (*otpclient.Client)(nil)
)

const denyReason = "test policy: never allowed"

// Actions starting with auto. are approved, deny. denied, the rest wait for
// a human.
var prefixPolicy = agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	switch {
	case strings.HasPrefix(in.Action, "auto."):
		return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Reason: "auto-approved"}, nil
	case strings.HasPrefix(in.Action, "deny."):
		return agentotp.Decision{Effect: agentotp.EffectDeny, Reason: denyReason}, nil
	}
	return agentotp.Decision{Effect: agentotp.EffectRequireApproval}, nil
})

type env struct {
	svc     *agentotp.Service
	url     string
	admin   *otpclient.Admin
	agent   *agentotp.Agent
	key     agentotp.Secret
	session *agentotp.AgentSession
}

// newEnv runs the real service on SQLite, in process and behind the HTTP API.
func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(nil)
	url := "http://" + srv.Listener.Addr().String()
	svc := agentotp.NewService(store, agentotp.Options{Evaluator: prefixPolicy, PublicURL: url, WaitPoll: 20 * time.Millisecond})
	srv.Config.Handler = httpapi.New(svc, httpapi.Options{RateLimit: -1, PublicURL: url})
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, store.Close())
	})
	adminKey := agentotp.NewUserKey()
	_, err = svc.EnsureAdmin(ctx, adminKey)
	require.NoError(t, err)
	agent, key, err := svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "agent"})
	require.NoError(t, err)
	return &env{svc: svc, url: url, admin: otpclient.NewAdmin(url, adminKey.Reveal()), agent: agent, key: key,
		session: svc.AgentSession(agentotp.Principal{Agent: agent})}
}

func (e *env) client() *otpclient.Client { return otpclient.New(e.url, e.key.Reveal()) }

// decideWhenPending answers the first pending request for action.
// decideAsync decides in the background, like a human would, and makes the
// test wait for that answer to land before the server shuts down.
func (e *env) decideAsync(t *testing.T, action string, d otpclient.Decision) {
	done := make(chan struct{})
	go func() { defer close(done); e.decideWhenPending(t, action, d) }()
	t.Cleanup(func() { <-done })
}

func (e *env) decideWhenPending(t *testing.T, action string, d otpclient.Decision) {
	for range 500 {
		list, _, err := e.admin.Approvals(context.Background(), agentotp.StatusPending, otpclient.ListOptions{Limit: 100})
		if err != nil {
			t.Error(err)
			return
		}
		for _, p := range list {
			if p.Action == action {
				if _, err := e.admin.Decide(context.Background(), p.ID, d); err != nil {
					t.Error(err)
				}
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%s never became pending", action)
}

// recorder is the tool being guarded. It records each run and what the
// server said about the permission at that moment.
type recorder struct {
	name  string
	mu    sync.Mutex
	runs  []string
	check func(ctx context.Context)
}

func (r *recorder) Name() string        { return r.name }
func (r *recorder) Description() string { return "sends an email" }
func (r *recorder) Call(ctx context.Context, input string) (string, error) {
	if r.check != nil {
		r.check(ctx)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs = append(r.runs, input)
	return "sent: " + input, nil
}

func (r *recorder) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.runs...)
}

// TestAgentRun drives a langchaingo one-shot agent with a scripted model:
// the guarded tool runs only after a human approves (with the use already
// spent), and on denial the model reads the reason while the tool never
// runs and the run still finishes normally.
func TestAgentRun(t *testing.T) {
	tests := []struct {
		name     string
		decision otpclient.Decision
		runs     int
		observe  []string
	}{
		{name: "approved", decision: otpclient.Decision{Approved: true, Reason: "go ahead"}, runs: 1,
			observe: []string{"sent: hello bob"}},
		{name: "denied", decision: otpclient.Decision{Approved: false, Reason: "no emails on Sunday"}, runs: 0,
			observe: []string{"Permission denied for send_email", "no emails on Sunday", "did not run"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			client := e.client()
			inner := &recorder{name: "send_email"}
			var permStatus atomic.Value
			inner.check = func(ctx context.Context) {
				list, _, err := e.admin.Approvals(ctx, agentotp.StatusUsed, otpclient.ListOptions{})
				require.NoError(t, err)
				permStatus.Store(len(list))
			}
			llm := fake.NewFakeLLM([]string{
				"Thought: I must email Bob.\nAction: send_email\nAction Input: hello bob",
				"Thought: I now know the final answer\nFinal Answer: done",
			})
			guarded := tools.GuardAll([]lctools.Tool{inner}, client, tools.WithAction("mail.%s"), tools.WithWait(10*time.Second))
			ex := agents.NewExecutor(agents.NewOneShotAgent(llm, guarded), agents.WithMaxIterations(3),
				agents.WithReturnIntermediateSteps())
			e.decideAsync(t, "mail.send_email", tt.decision)

			out, err := chains.Call(context.Background(), ex, map[string]any{"input": "email bob"})
			require.NoError(t, err, "a denial must not abort the run")
			require.Equal(t, "done", out["output"])
			steps := out["intermediateSteps"].([]schema.AgentStep)
			require.Len(t, steps, 1)
			for _, want := range tt.observe {
				require.Contains(t, steps[0].Observation, want)
			}
			require.Len(t, inner.calls(), tt.runs)
			if tt.runs > 0 {
				require.Equal(t, 1, permStatus.Load(), "the use was spent before the tool ran")
			}
		})
	}
}

func TestGuard(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	errHook := errors.New("hook says stop")
	tests := []struct {
		name    string
		opts    []tools.Option
		auth    func() tools.Authorizer
		input   string
		decide  *otpclient.Decision
		want    []string
		runs    int
		wantErr error
	}{
		{name: "auto-approved runs the tool", opts: []tools.Option{tools.WithAction("auto.send")},
			input: "hi", want: []string{"sent: hi"}, runs: 1},
		{name: "policy denial is text", opts: []tools.Option{tools.WithAction("deny.send")},
			input: "hi", want: []string{"Permission denied", denyReason}},
		{name: "wait runs out: pending is text", opts: []tools.Option{tools.WithAction("human.send"), tools.WithWait(200 * time.Millisecond)},
			input: "hi", want: []string{"still waiting for a human decision", "perm_"}},
		{name: "human approves within the wait", opts: []tools.Option{tools.WithAction("human.ok"), tools.WithWait(10 * time.Second)},
			decide: &otpclient.Decision{Approved: true}, input: "hi", want: []string{"sent: hi"}, runs: 1},
		{name: "approver adds a limit the use does not meet: the use is refused, tool does not run",
			opts:   []tools.Option{tools.WithAction("human.narrow"), tools.WithWait(10 * time.Second)},
			decide: &otpclient.Decision{Approved: true, ScopeModifications: map[string]any{"allowed_input": []any{"something else"}}},
			input:  "hi", want: []string{"could not be used", "did not run"}},
		{name: "approver lowers a numeric limit: the use is refused, tool does not run",
			opts: []tools.Option{tools.WithAction("human.cap"), tools.WithWait(10 * time.Second),
				tools.WithScope(func(string) (map[string]any, error) { return map[string]any{"max_emails": 50}, nil })},
			decide: &otpclient.Decision{Approved: true, ScopeModifications: map[string]any{"max_emails": 1}},
			input:  "hi", want: []string{"could not be used", "did not run"}},
		{name: "scope mapping error is text, nothing asked",
			opts: []tools.Option{tools.WithAction("auto.send"), tools.WithScope(func(string) (map[string]any, error) {
				return nil, errors.New("want JSON")
			})},
			input: "hi", want: []string{"Invalid input", "want JSON"}},
		{name: "custom resource, scope and details",
			opts: []tools.Option{tools.WithAction("auto.send"), tools.WithResource(func(in string) string { return "email:" + in }),
				tools.WithScope(func(string) (map[string]any, error) { return map[string]any{"max_emails": 1}, nil }),
				tools.WithDetails(func(string) map[string]any { return map[string]any{"emails": 1} })},
			input: "bob", want: []string{"sent: bob"}, runs: 1},
		{name: "hook vetoes an approval: nothing spent",
			opts: []tools.Option{tools.WithAction("auto.send"), tools.WithHook(func(_ context.Context, o *tools.Outcome) error {
				require.True(t, o.Allowed)
				o.Allowed, o.Message = false, "vetoed by hook"
				return nil
			})},
			input: "hi", want: []string{"vetoed by hook"}},
		{name: "hook cannot approve a denial",
			opts: []tools.Option{tools.WithAction("deny.send"), tools.WithHook(func(_ context.Context, o *tools.Outcome) error {
				o.Allowed = true
				return nil
			})},
			input: "hi", want: []string{"Permission denied"}},
		{name: "hook error aborts",
			opts: []tools.Option{tools.WithAction("auto.send"), tools.WithHook(func(context.Context, *tools.Outcome) error {
				return errHook
			})},
			input: "hi", wantErr: errHook},
		{name: "unreachable server fails closed with an error",
			auth: func() tools.Authorizer {
				return otpclient.New("http://127.0.0.1:1", "ak_x", otpclient.WithRetries(0, 0, 0))
			},
			opts: []tools.Option{tools.WithAction("auto.send")}, input: "hi", wantErr: errors.New("")},
	}
	for _, tt := range tests {
		for _, via := range []string{"session", "client"} {
			t.Run(tt.name+"/"+via, func(t *testing.T) {
				var auth tools.Authorizer = e.session
				if via == "client" {
					auth = e.client()
				}
				if tt.auth != nil {
					auth = tt.auth()
				}
				inner := &recorder{name: "send"}
				g := tools.Guard(inner, auth, tt.opts...)
				require.Equal(t, "send", g.Name())
				if tt.decide != nil {
					e.decideAsync(t, actionOf(tt.opts), *tt.decide)
				}
				out, err := g.Call(ctx, tt.input)
				if tt.wantErr != nil {
					require.Error(t, err)
					if tt.wantErr.Error() != "" {
						require.ErrorIs(t, err, tt.wantErr)
					}
				} else {
					require.NoError(t, err)
				}
				for _, w := range tt.want {
					require.Contains(t, out, w)
				}
				require.Len(t, inner.calls(), tt.runs)
			})
		}
	}
}

// actionOf reads the action a guard built from opts would ask for.
func actionOf(opts []tools.Option) string {
	var got string
	probe := tools.Guard(&recorder{name: "x"}, authFunc(func(req agentotp.PermissionRequest) { got = req.Action }), opts...)
	_, _ = probe.Call(context.Background(), "")
	return got
}

type authFunc func(agentotp.PermissionRequest)

func (f authFunc) Authorize(_ context.Context, req agentotp.PermissionRequest, _ time.Duration) (*agentotp.Permission, agentotp.Secret, error) {
	f(req)
	return &agentotp.Permission{Status: agentotp.StatusDenied}, "", nil
}

func (authFunc) Spend(context.Context, agentotp.PermissionID, agentotp.Secret, map[string]any) error {
	return nil
}

// TestGuardPicksUpPendingDecision: a call that ran out of waiting leaves
// its request pending; the same call again picks up that request's
// decision instead of asking the human a second time.
func TestGuardPicksUpPendingDecision(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	inner := &recorder{name: "send"}
	g := tools.Guard(inner, e.client(), tools.WithAction("human.send"), tools.WithWait(100*time.Millisecond))
	out, err := g.Call(ctx, "hi")
	require.NoError(t, err)
	require.Contains(t, out, "still waiting")
	require.Empty(t, inner.calls())

	list, _, err := e.admin.Approvals(ctx, agentotp.StatusPending, otpclient.ListOptions{})
	require.NoError(t, err)
	require.Len(t, list, 1)
	_, err = e.admin.Approve(ctx, list[0].ID, "")
	require.NoError(t, err)

	out, err = g.Call(ctx, "hi")
	require.NoError(t, err)
	require.Equal(t, "sent: hi", out)
	page, err := e.admin.Audit(ctx, otpclient.AuditQuery{EventType: "request", Limit: 100})
	require.NoError(t, err)
	require.Len(t, page.Events, 1, "the human was asked once")

	// Once used, the same input asks anew.
	out, err = g.Call(ctx, "hi")
	require.NoError(t, err)
	require.Contains(t, out, "still waiting")
}

func TestRequestPermissionTool(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tests := []struct {
		input string
		want  []string
	}{
		{input: `{"action":"auto.report","scope":{"max_rows":5},"reason":"weekly report"}`,
			want: []string{"Permission granted for auto.report", "token otp_", `"max_rows":5`}},
		{input: "deny.drop", want: []string{"Permission denied", denyReason}},
		{input: `{"scope":{}}`, want: []string{`"action" is required`}},
		{input: `{"action":`, want: []string{"Invalid input"}},
	}
	for _, via := range []string{"session", "client"} {
		var auth tools.Authorizer = e.session
		if via == "client" {
			auth = e.client()
		}
		tool := tools.RequestPermission(auth, tools.WithWait(0))
		require.Equal(t, "request_permission", tool.Name())
		for _, tt := range tests {
			t.Run(via+"/"+tt.input, func(t *testing.T) {
				out, err := tool.Call(ctx, tt.input)
				require.NoError(t, err)
				for _, w := range tt.want {
					require.Contains(t, out, w)
				}
			})
		}
	}
}
