package otpclient_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
)

// clock is a movable service clock, started at the real time so that the
// client's own deadline arithmetic stays sensible.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// The test policy decides by action prefix: auto.* approves, deny.* denies,
// anything else waits for a human.
const denyReason = "test policy: never allowed"

var prefixPolicy = agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	switch {
	case strings.HasPrefix(in.Action, "auto."):
		return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "auto", Reason: "auto-approved"}, nil
	case strings.HasPrefix(in.Action, "deny."):
		return agentotp.Decision{Effect: agentotp.EffectDeny, Rule: "deny", Reason: denyReason}, nil
	}
	return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "human", Reason: "a human must approve"}, nil
})

// fault is an injected failure for the next n matching calls.
type fault struct {
	method, suffix string
	n              int
	status         int
	retryAfter     string
	// after runs the real handler first (the server acts), then replaces
	// its answer: the response is lost.
	after bool
	// drop closes the connection instead of answering.
	drop bool
}

// faults wraps the real handler and counts the calls that reach it.
type faults struct {
	mu      sync.Mutex
	next    http.Handler
	pending []*fault
	reached map[string]int // "METHOD suffix" → calls that reached the real handler
}

func (f *faults) add(x fault) {
	f.mu.Lock()
	f.pending = append(f.pending, &x)
	f.mu.Unlock()
}

func routeKey(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasSuffix(p, "/request"), strings.HasSuffix(p, "/use"), strings.HasSuffix(p, "/verify"),
		strings.HasSuffix(p, "/revoke"), strings.HasSuffix(p, "/decide"):
		return r.Method + " " + p[strings.LastIndex(p, "/"):]
	case strings.HasPrefix(p, "/api/v1/permissions/"):
		return r.Method + " /permission"
	}
	return r.Method + " " + p
}

func (f *faults) calls(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reached[key]
}

func (f *faults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := routeKey(r)
	f.mu.Lock()
	var hit *fault
	for _, x := range f.pending {
		if x.n > 0 && x.method == r.Method && strings.HasSuffix(key, x.suffix) {
			x.n--
			hit = x
			break
		}
	}
	f.mu.Unlock()
	if hit == nil || hit.after {
		f.mu.Lock()
		f.reached[key]++
		f.mu.Unlock()
	}
	switch {
	case hit == nil:
		f.next.ServeHTTP(w, r)
		return
	case hit.after:
		f.next.ServeHTTP(httptest.NewRecorder(), r)
	}
	if hit.drop {
		panic(http.ErrAbortHandler)
	}
	if hit.retryAfter != "" {
		w.Header().Set("Retry-After", hit.retryAfter)
	}
	w.Header().Set("X-Request-Id", "injected-"+http.StatusText(hit.status)[:3])
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(hit.status)
	code := map[int]string{429: "RATE_LIMITED", 500: "INTERNAL_ERROR", 503: "SERVICE_UNAVAILABLE"}[hit.status]
	_, _ = w.Write([]byte(`{"success":false,"error":{"code":"` + code + `","message":"injected"}}`))
}

type env struct {
	t        *testing.T
	clock    *clock
	svc      *agentotp.Service
	srv      *httptest.Server
	faults   *faults
	admin    *otpclient.Admin
	adminKey string
	agent    *otpclient.Agent
}

type envOpt func(*httpapi.Options)

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	clk := &clock{t: time.Now()}
	srv := httptest.NewUnstartedServer(nil)
	url := "http://" + srv.Listener.Addr().String()
	svc := agentotp.NewService(store, agentotp.Options{Clock: clk.Now, Evaluator: prefixPolicy, PublicURL: url,
		WaitPoll: 20 * time.Millisecond})
	hopts := httpapi.Options{RateLimit: -1, PublicURL: url}
	for _, o := range opts {
		o(&hopts)
	}
	f := &faults{next: httpapi.New(svc, hopts), reached: map[string]int{}}
	srv.Config.Handler = f
	srv.Start()
	adminKey := agentotp.NewUserKey()
	_, err = svc.EnsureAdmin(ctx, adminKey)
	require.NoError(t, err)
	e := &env{t: t, clock: clk, svc: svc, srv: srv, faults: f, adminKey: adminKey.Reveal(),
		admin: otpclient.NewAdmin(url, adminKey.Reveal(), fast())}
	e.agent = e.newAgent("test-agent")
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		require.NoError(t, store.Close())
	})
	return e
}

// fast keeps retries quick in tests.
func fast() otpclient.Option { return otpclient.WithRetries(3, time.Millisecond, 5*time.Millisecond) }

func (e *env) newAgent(name string) *otpclient.Agent {
	a, err := e.admin.CreateAgent(context.Background(), otpclient.AgentInput{Name: name})
	require.NoError(e.t, err)
	return a
}

func (e *env) client(opts ...otpclient.Option) *otpclient.Client {
	return otpclient.New(e.srv.URL, e.agent.APIKey, append([]otpclient.Option{fast()}, opts...)...)
}

// decideWhenPending decides id (or the first pending request) once it
// shows up in the approval queue.
func (e *env) decide(id string, d otpclient.Decision) {
	_, err := e.admin.Decide(context.Background(), id, d)
	require.NoError(e.t, err)
}

func (e *env) countRequests(t *testing.T) int {
	t.Helper()
	page, err := e.admin.Audit(context.Background(), otpclient.AuditQuery{EventType: "request", Limit: 1000})
	require.NoError(t, err)
	return len(page.Events)
}

// approveWhenPending approves the first pending request for action once it
// shows up in the approval queue.
func (e *env) approveWhenPending(t *testing.T, action string) {
	for range 500 {
		list, _, err := e.admin.Approvals(context.Background(), agentotp.StatusPending, otpclient.ListOptions{Limit: 100})
		if err != nil {
			t.Error(err)
			return
		}
		for _, p := range list {
			if p.Action == action {
				if _, err := e.admin.Approve(context.Background(), p.ID, "ok"); err != nil {
					t.Error(err)
				}
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%s never became pending", action)
}
