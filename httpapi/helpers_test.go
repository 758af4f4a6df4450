package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
)

// fakeClock is a movable clock shared by the service under test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Actions starting with these prefixes get the matching policy effect from
// the default test evaluator; anything else needs a human.
const (
	autoPrefix = "auto."
	denyPrefix = "deny."
)

const denyReason = "test policy: this action is never allowed"

// prefixEvaluator decides by the action's prefix, the smallest policy that
// lets one server exercise all three effects.
var prefixEvaluator = agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	switch {
	case strings.HasPrefix(in.Action, autoPrefix):
		return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "test-auto", Reason: "auto-approved by test policy"}, nil
	case strings.HasPrefix(in.Action, denyPrefix):
		return agentotp.Decision{Effect: agentotp.EffectDeny, Rule: "test-deny", Reason: denyReason}, nil
	}
	return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "test-human", Reason: "a human must approve"}, nil
})

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

type envOptions struct {
	rateLimit     float64
	evaluator     agentotp.Evaluator
	logger        *slog.Logger
	maxPending    int
	callbackHosts []string
	callbackKey   []byte
}

type envOption func(*envOptions)

func withRateLimit(perSecond float64) envOption {
	return func(o *envOptions) { o.rateLimit = perSecond }
}

func withEvaluator(e agentotp.Evaluator) envOption {
	return func(o *envOptions) { o.evaluator = e }
}

func withLogger(l *slog.Logger) envOption {
	return func(o *envOptions) { o.logger = l }
}

func withMaxPending(n int) envOption {
	return func(o *envOptions) { o.maxPending = n }
}

// withCallbacks sets the callback allow-list and the callback key.
func withCallbacks(hosts []string, key []byte) envOption {
	return func(o *envOptions) { o.callbackHosts, o.callbackKey = hosts, key }
}

// testEnv is a real server: SQLite in a temp dir, the service with a fake
// clock, the HTTP API behind httptest, and a bootstrap admin.
type testEnv struct {
	t        testing.TB
	clock    *fakeClock
	store    *sqlite.Store
	dbPath   string
	svc      *agentotp.Service
	srv      *httptest.Server
	client   *http.Client
	adminKey string
}

func newTestServer(t testing.TB, opts ...envOption) *testEnv {
	t.Helper()
	o := envOptions{rateLimit: -1, evaluator: prefixEvaluator}
	for _, f := range opts {
		f(&o)
	}
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "agentotp.db")
	store, err := sqlite.Open(ctx, dbPath, sqlite.Options{})
	require.NoError(t, err)
	clock := newFakeClock()
	srv := httptest.NewUnstartedServer(nil)
	publicURL := "http://" + srv.Listener.Addr().String()
	svc := agentotp.NewService(store, agentotp.Options{
		Clock: clock.Now, Evaluator: o.evaluator, Logger: o.logger, PublicURL: publicURL,
		MaxPendingPerAgent: o.maxPending, CallbackHosts: o.callbackHosts,
	})
	srv.Config.Handler = httpapi.New(svc, httpapi.Options{PublicURL: publicURL, RateLimit: o.rateLimit, Logger: o.logger,
		CallbackKey: o.callbackKey})
	srv.Config.MaxHeaderBytes = 16 << 10
	srv.Listener = httpapi.JSONErrors(srv.Listener) // as serve runs it
	srv.Start()
	adminKey := agentotp.NewUserKey()
	_, err = svc.EnsureAdmin(ctx, adminKey)
	require.NoError(t, err)
	tr := &http.Transport{MaxIdleConnsPerHost: 64, MaxIdleConns: 256}
	e := &testEnv{t: t, clock: clock, store: store, dbPath: dbPath, svc: svc, srv: srv,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, adminKey: adminKey.Reveal()}
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		tr.CloseIdleConnections()
		require.NoError(t, store.Close())
	})
	return e
}

// resp is one HTTP answer, body fully read.
type resp struct {
	Status int
	Header http.Header
	Body   []byte
}

type apiError struct {
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Details map[string]string `json:"details"`
}

type envelopeJSON struct {
	Success *bool           `json:"success"`
	Data    json.RawMessage `json:"data"`
	Meta    json.RawMessage `json:"meta"`
	Error   *apiError       `json:"error"`
}

func (r resp) envelope(t testing.TB) envelopeJSON {
	t.Helper()
	var env envelopeJSON
	require.NoError(t, json.Unmarshal(r.Body, &env), "body: %s", r.Body)
	require.NotNil(t, env.Success, "envelope without success: %s", r.Body)
	return env
}

// data decodes the success envelope's data into v after checking status.
func (r resp) data(t testing.TB, status int, v any) {
	t.Helper()
	require.Equal(t, status, r.Status, "body: %s", r.Body)
	env := r.envelope(t)
	require.True(t, *env.Success, "body: %s", r.Body)
	if v != nil {
		require.NoError(t, json.Unmarshal(env.Data, v), "data: %s", env.Data)
	}
}

// fail checks the documented error envelope and returns its error.
func (r resp) fail(t testing.TB, status int, code string) apiError {
	t.Helper()
	require.Equal(t, status, r.Status, "body: %s", r.Body)
	require.Contains(t, r.Header.Get("Content-Type"), "application/json")
	env := r.envelope(t)
	require.False(t, *env.Success, "body: %s", r.Body)
	require.NotNil(t, env.Error, "body: %s", r.Body)
	require.Equal(t, code, env.Error.Code, "body: %s", r.Body)
	require.NotEmpty(t, env.Error.Message)
	require.Nil(t, env.Data)
	return *env.Error
}

// do sends a request. body is raw when []byte or string, JSON otherwise.
func (e *testEnv) do(method, path, key string, body any, hdr ...string) resp {
	e.t.Helper()
	r, err := e.try(context.Background(), method, path, key, body, hdr...)
	require.NoError(e.t, err)
	return r
}

// tryResp is do for other goroutines: a transport error becomes a
// response with status 0 that the test goroutine then rejects.
func (e *testEnv) tryResp(method, path, key string, body any) resp {
	r, err := e.try(context.Background(), method, path, key, body)
	if err != nil {
		return resp{Body: []byte(err.Error())}
	}
	return r
}

func (e *testEnv) try(ctx context.Context, method, path, key string, body any, hdr ...string) (resp, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return resp{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+path, rd)
	if err != nil {
		return resp{}, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := e.client.Do(req)
	if err != nil {
		return resp{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return resp{}, err
	}
	return resp{Status: res.StatusCode, Header: res.Header, Body: b}, nil
}

// Wire shapes as a v0.1.1 client reads them.

type permView struct {
	ID             string         `json:"id"`
	Status         string         `json:"status"`
	Token          string         `json:"token"`
	Action         string         `json:"action"`
	Resource       string         `json:"resource"`
	Scope          map[string]any `json:"scope"`
	RequestedScope map[string]any `json:"requestedScope"`
	Context        map[string]any `json:"context"`
	ExpiresAt      string         `json:"expiresAt"`
	ApprovalURL    string         `json:"approvalUrl"`
	WaitURL        string         `json:"waitUrl"`
	WebhookURL     string         `json:"webhookUrl"`
	CallbackURL    string         `json:"callbackUrl"`
	Reason         string         `json:"reason"`
	DecisionReason string         `json:"decisionReason"`
	DecidedBy      string         `json:"decidedBy"`
	DecisionID     string         `json:"decisionId"`
	UsesRemaining  *int           `json:"usesRemaining"`
	AgentID        string         `json:"agentId"`
	AgentName      string         `json:"agentName"`
}

func (p permView) expiresAt(t testing.TB) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, p.ExpiresAt)
	require.NoError(t, err)
	return ts
}

type verifyView struct {
	Valid         bool           `json:"valid"`
	Scope         map[string]any `json:"scope"`
	UsesRemaining *int           `json:"usesRemaining"`
	ExpiresAt     string         `json:"expiresAt"`
	Reason        string         `json:"reason"`
}

type useView struct {
	Success       bool   `json:"success"`
	UsesRemaining int    `json:"usesRemaining"`
	Reason        string `json:"reason"`
}

type agentView struct {
	ID             string         `json:"id"`
	Name           string         `json:"name"`
	Description    string         `json:"description"`
	APIKey         string         `json:"apiKey"`
	APIKeyPrefix   string         `json:"apiKeyPrefix"`
	CallbackSecret string         `json:"callbackSecret"`
	Metadata       map[string]any `json:"metadata"`
	IsActive       bool           `json:"isActive"`
}

type userView struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Role       string `json:"role"`
	TelegramID int64  `json:"telegramId"`
	APIKey     string `json:"apiKey"`
	IsActive   bool   `json:"isActive"`
}

type auditView struct {
	ID                  string         `json:"id"`
	Seq                 int64          `json:"seq"`
	EventType           string         `json:"eventType"`
	ActorType           string         `json:"actorType"`
	ActorID             string         `json:"actorId"`
	AgentID             string         `json:"agentId"`
	PermissionRequestID string         `json:"permissionRequestId"`
	RequestID           string         `json:"requestId"`
	Details             map[string]any `json:"details"`
	Hash                string         `json:"hash"`
}

type cursorMeta struct {
	Limit      int    `json:"limit"`
	HasMore    bool   `json:"hasMore"`
	NextCursor string `json:"nextCursor"`
}

// Actors.

type actor struct {
	ID  string
	Key string
}

func (e *testEnv) createAgent(name string) actor {
	e.t.Helper()
	var a agentView
	e.do("POST", "/api/v1/agents", e.adminKey, map[string]any{"name": name, "description": "test agent " + name}).
		data(e.t, http.StatusCreated, &a)
	require.True(e.t, strings.HasPrefix(a.APIKey, "ak_"), "agent key %q", a.APIKey)
	return actor{ID: a.ID, Key: a.APIKey}
}

func (e *testEnv) createUser(name, role string) actor {
	e.t.Helper()
	var u userView
	e.do("POST", "/api/v1/users", e.adminKey, map[string]any{"name": name, "role": role}).
		data(e.t, http.StatusCreated, &u)
	require.True(e.t, strings.HasPrefix(u.APIKey, "uk_"), "user key %q", u.APIKey)
	return actor{ID: u.ID, Key: u.APIKey}
}

// request asks for a permission and checks the status code.
func (e *testEnv) request(key string, body map[string]any, status int) permView {
	e.t.Helper()
	var p permView
	e.do("POST", "/api/v1/permissions/request", key, body).data(e.t, status, &p)
	return p
}

// grant returns an auto-approved permission with its token.
func (e *testEnv) grant(key string, body map[string]any) permView {
	e.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	if _, ok := body["action"]; !ok {
		body["action"] = "auto.test"
	}
	p := e.request(key, body, http.StatusCreated)
	require.Equal(e.t, "approved", p.Status)
	require.True(e.t, agentotp.ValidTokenFormat(p.Token), "token %q", p.Token)
	return p
}

// pending returns a permission waiting for a human.
func (e *testEnv) pending(key string, action string) permView {
	e.t.Helper()
	p := e.request(key, map[string]any{"action": action}, http.StatusAccepted)
	require.Equal(e.t, "pending", p.Status)
	return p
}

func (e *testEnv) decide(key, id string, approved bool, reason string) resp {
	e.t.Helper()
	return e.do("POST", "/api/v1/permissions/"+id+"/decide", key, map[string]any{"approved": approved, "reason": reason})
}

// fetchToken reads a human-approved permission as its agent and returns
// the one-time token.
func (e *testEnv) fetchToken(key, id string) permView {
	e.t.Helper()
	var p permView
	e.do("GET", "/api/v1/permissions/"+id, key, nil).data(e.t, http.StatusOK, &p)
	require.Equal(e.t, "approved", p.Status)
	require.True(e.t, agentotp.ValidTokenFormat(p.Token), "token %q", p.Token)
	return p
}

func (e *testEnv) verify(key, id, token string) verifyView {
	e.t.Helper()
	var v verifyView
	e.do("POST", "/api/v1/permissions/"+id+"/verify", key, map[string]any{"token": token}).data(e.t, http.StatusOK, &v)
	return v
}

func (e *testEnv) use(key, id, token string, details map[string]any) useView {
	e.t.Helper()
	body := map[string]any{"token": token}
	if details != nil {
		body["actionDetails"] = details
	}
	var u useView
	e.do("POST", "/api/v1/permissions/"+id+"/use", key, body).data(e.t, http.StatusOK, &u)
	return u
}

// auditOf lists a permission's audit events, oldest first.
func (e *testEnv) auditOf(id string) []auditView {
	e.t.Helper()
	var ev []auditView
	e.do("GET", "/api/v1/audit/permissions/"+id, e.adminKey, nil).data(e.t, http.StatusOK, &ev)
	return ev
}

func eventTypes(ev []auditView) []string {
	out := make([]string, 0, len(ev))
	for _, e := range ev {
		out = append(out, e.EventType)
	}
	return out
}
