package web_test

import (
	"context"
	"database/sql"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/agentotp/agentotp/web"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fakeClock is a movable clock: tests move time instead of sleeping.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is a console over a real SQLite store, served by httptest.
type env struct {
	t        testing.TB
	ctx      context.Context
	svc      *agentotp.Service
	console  *web.Console
	srv      *httptest.Server
	clock    *fakeClock
	admin    agentotp.Principal
	adminKey agentotp.Secret
	agent    agentotp.Principal
	agentKey agentotp.Secret
	dbPath   string
}

// The test policy asks a person for everything. Actions starting with
// "restricted." may be decided by ann only; "quorum." needs two approvers.
func testPolicy(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	d := agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "ask-a-human", PolicyVersion: "test"}
	switch {
	case strings.HasPrefix(in.Action, "restricted."):
		d.Rule, d.Approvers = "only-ann", []string{"ann"}
	case strings.HasPrefix(in.Action, "quorum."):
		d.Rule, d.Quorum = "two-people", 2
	}
	return d, nil
}

type envOption func(*agentotp.Options, *web.Options)

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentotp.db")
	st, err := sqlite.Open(ctx, path, sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	e := &env{t: t, ctx: ctx, dbPath: path, clock: &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}}
	live := web.NewLive()
	so := agentotp.Options{Clock: e.clock.Now, Notifier: live, WaitPoll: 20 * time.Millisecond,
		Evaluator: agentotp.EvaluatorFunc(testPolicy)}
	wo := web.Options{Live: live}
	for _, o := range opts {
		o(&so, &wo)
	}
	e.svc = agentotp.NewService(st, so)
	e.adminKey = agentotp.NewUserKey()
	_, err = e.svc.EnsureAdmin(ctx, e.adminKey)
	require.NoError(t, err)
	e.admin, err = e.svc.Authenticate(ctx, e.adminKey.Reveal())
	require.NoError(t, err)
	e.agent, e.agentKey = e.newAgent("mail-bot")
	e.console = web.New(e.svc, wo)
	// Tests sign in often from one address; the limit has its own test.
	web.LimitSignIns(e.console, time.Nanosecond, 1000)
	e.srv = httptest.NewServer(e.console)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) newAgent(name string) (agentotp.Principal, agentotp.Secret) {
	e.t.Helper()
	_, key, err := e.svc.CreateAgent(e.ctx, e.admin, agentotp.AgentInput{Name: name})
	require.NoError(e.t, err)
	p, err := e.svc.Authenticate(e.ctx, key.Reveal())
	require.NoError(e.t, err)
	return p, key
}

// user creates a user and returns their key.
func (e *env) user(name string, role agentotp.Role) agentotp.Secret {
	e.t.Helper()
	_, key, err := e.svc.CreateUser(e.ctx, e.admin, agentotp.UserInput{Name: name, Role: role})
	require.NoError(e.t, err)
	return key
}

// ask makes the agent request a permission and returns it, pending.
func (e *env) ask(req agentotp.PermissionRequest) *agentotp.Permission {
	e.t.Helper()
	perm, _, err := e.svc.RequestPermission(e.ctx, e.agent, req)
	require.NoError(e.t, err)
	require.Equal(e.t, agentotp.StatusPending, perm.Status)
	return perm
}

func (e *env) perm(id agentotp.PermissionID) *agentotp.Permission {
	e.t.Helper()
	p, _, err := e.svc.GetPermission(e.ctx, e.admin, id, 0)
	require.NoError(e.t, err)
	return p
}

// browser is one signed-in (or not) visitor: a cookie and the page's CSRF
// token.
type browser struct {
	e      *env
	cookie *http.Cookie
}

// response is a fetched page.
type response struct {
	status   int
	header   http.Header
	body     string
	location string
	cookies  []*http.Cookie
}

var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func (b *browser) do(method, path string, form url.Values, header map[string]string) response {
	b.e.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.srv.URL+path, body)
	require.NoError(b.e.t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if b.cookie != nil {
		req.AddCookie(b.cookie)
	}
	res, err := client.Do(req)
	require.NoError(b.e.t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(b.e.t, err)
	return response{status: res.StatusCode, header: res.Header, body: string(raw), location: res.Header.Get("Location"), cookies: res.Cookies()}
}

func (b *browser) get(path string) response { return b.do(http.MethodGet, path, nil, nil) }

func (b *browser) post(path string, form url.Values) response {
	return b.do(http.MethodPost, path, form, nil)
}

// visitor is a browser without a session.
func (e *env) visitor() *browser { return &browser{e: e} }

// signIn signs in with key and returns the browser holding the session.
func (e *env) signIn(key agentotp.Secret) *browser {
	e.t.Helper()
	b := e.visitor()
	res := b.post("/ui/sign-in", url.Values{"key": {key.Reveal()}})
	require.Equal(e.t, http.StatusSeeOther, res.status, res.body)
	require.Len(e.t, res.cookies, 1)
	b.cookie = res.cookies[0]
	return b
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf reads the CSRF token from a page the browser loads.
func (b *browser) csrf() string {
	b.e.t.Helper()
	res := b.get("/ui/")
	require.Equal(b.e.t, http.StatusOK, res.status)
	m := csrfField.FindStringSubmatch(res.body)
	require.NotNil(b.e.t, m, "no CSRF token on the page")
	return m[1]
}

// decide posts a decision form with the browser's own CSRF token.
func (b *browser) decide(id agentotp.PermissionID, verb string, form url.Values) response {
	b.e.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok {
		form.Set("csrf", b.csrf())
	}
	return b.post("/ui/requests/"+string(id)+"/"+verb, form)
}

// brokeChain edits the first audit event behind the store's back.
func brokeChain(t testing.TB, e *env) {
	t.Helper()
	db, err := sql.Open("sqlite", e.dbPath)
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(`DROP TRIGGER audit_events_no_update`)
	require.NoError(t, err)
	_, err = db.Exec(`UPDATE audit_events SET details_json = '{"edited":true}' WHERE seq = 1`)
	require.NoError(t, err)
}

var tag = regexp.MustCompile(`<[^>]*>`)

// visible is the text of a page as a person reads it: no tags, no escapes.
func visible(body string) string { return unescape(tag.ReplaceAllString(body, "")) }
