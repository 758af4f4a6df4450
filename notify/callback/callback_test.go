package callback_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/notify/callback"
)

// hit is one request a receiver got.
type hit struct {
	path   string
	header http.Header
	body   []byte
}

// receiver is an httptest server that records every request and answers
// with respond (200 when nil); n counts from 1.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	hits    []hit
	respond func(n int, w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{respond: respond}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.hits = append(rc.hits, hit{path: r.URL.Path, header: r.Header.Clone(), body: b})
		n := len(rc.hits)
		rc.mu.Unlock()
		if rc.respond != nil {
			rc.respond(n, w, r)
		}
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.hits)
}

func (rc *receiver) got() []hit {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]hit(nil), rc.hits...)
}

// addr is the receiver's "127.0.0.1:PORT".
func (rc *receiver) addr() string { return strings.TrimPrefix(rc.URL, "http://") }

// port is the receiver's port.
func (rc *receiver) port() string { return rc.addr()[strings.LastIndexByte(rc.addr(), ':')+1:] }

// agents is an in-memory callback.Agents.
type agents map[agentotp.AgentID]*agentotp.Agent

func (m agents) Agent(_ context.Context, id agentotp.AgentID) (*agentotp.Agent, error) {
	a, ok := m[id]
	if !ok {
		return nil, agentotp.Errorf(agentotp.CodeNotFound, "agent not found")
	}
	c := *a
	return &c, nil
}

type env struct {
	n       *callback.Notifier
	key     []byte
	agent   *agentotp.Agent
	secret  agentotp.Secret
	results chan callback.Result
}

func newEnv(t *testing.T, hosts []string, mods ...func(*callback.Options)) *env {
	t.Helper()
	e := &env{key: []byte(strings.Repeat("k", 32)), results: make(chan callback.Result, 100)}
	e.agent = &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "a", Active: true, KeyHash: agentotp.NewAgentKey().Hash()}
	e.secret = agentotp.CallbackSecret(e.key, e.agent)
	disabled := &agentotp.Agent{ID: "agt_disabled", KeyHash: "h"}
	opts := callback.Options{
		Hosts: hosts, Key: e.key, Agents: agents{e.agent.ID: e.agent, disabled.ID: disabled},
		Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxRetryAfter: 20 * time.Millisecond,
		Timeout: 5 * time.Second, Attempts: 3,
		Observe: func(r callback.Result) { e.results <- r },
	}
	for _, m := range mods {
		m(&opts)
	}
	n, err := callback.New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	e.n = n
	return e
}

// wait returns the next finished delivery.
func (e *env) wait(t *testing.T) callback.Result {
	t.Helper()
	select {
	case r := <-e.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery finished")
		return callback.Result{}
	}
}

const (
	token       = "otp_0123456789abcdefghijABCDEFGHIJkl"
	scopeSecret = "scope-secret-hunter2"
)

var decided = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

func (e *env) perm(status agentotp.Status, url string) *agentotp.Permission {
	return &agentotp.Permission{
		ID: agentotp.NewPermissionID(), AgentID: e.agent.ID, Action: "gmail.send", Resource: "email:bob@example.com",
		Scope: map[string]any{"password": scopeSecret}, GrantedScope: map[string]any{"password": scopeSecret},
		Context: map[string]any{"why": scopeSecret}, Status: status, CallbackURL: url,
		DecidedBy: "user:usr_x", DecidedAt: decided, DecisionReason: "looks fine",
		TokenHash: agentotp.HashSecret(token), Uses: 1, UsesRemaining: 1,
	}
}

func TestDeliversSignedCallback(t *testing.T) {
	rc := newReceiver(t, nil)
	e := newEnv(t, []string{rc.addr()})
	ctx := context.Background()

	statuses := []agentotp.Status{agentotp.StatusApproved, agentotp.StatusDenied, agentotp.StatusExpired, agentotp.StatusRevoked}
	perms := map[string]*agentotp.Permission{}
	for _, st := range statuses {
		p := e.perm(st, rc.URL+"/hook?agent=a")
		perms[string(p.ID)] = p
		require.NoError(t, e.n.NotifyResolved(ctx, p))
	}
	for range statuses {
		r := e.wait(t)
		require.True(t, r.Delivered(), "%+v", r)
		require.Equal(t, 1, r.Attempts)
		require.Equal(t, http.StatusOK, r.StatusCode)
		require.Equal(t, rc.addr(), r.Host)
	}
	hits := rc.got()
	require.Len(t, hits, len(statuses), "exactly one POST per resolution")
	seen := map[string]bool{}
	for _, h := range hits {
		require.Equal(t, "/hook", h.path)
		require.Equal(t, "application/json", h.header.Get("Content-Type"))
		require.Equal(t, "agentotp-callback/1", h.header.Get("User-Agent"))
		ev, err := otpclient.VerifyCallback(e.secret, h.header.Get(otpclient.CallbackSignatureHeader), h.body, time.Now(), 0)
		require.NoError(t, err)
		p := perms[ev.ID]
		require.NotNil(t, p, "callback for an unknown permission %s", ev.ID)
		require.False(t, seen[ev.ID])
		seen[ev.ID] = true
		require.Equal(t, "permission."+string(p.Status), ev.Event)
		require.Equal(t, p.Status, ev.Status)
		require.Equal(t, h.header.Get(otpclient.CallbackEventIDHeader), ev.EventID)
		require.True(t, strings.HasPrefix(ev.EventID, "dlv_"))
		require.Equal(t, "gmail.send", ev.Action)
		require.Equal(t, "email:bob@example.com", ev.Resource)
		require.Equal(t, string(e.agent.ID), ev.AgentID)
		require.Equal(t, "user", ev.DecidedBy)
		require.True(t, decided.Equal(ev.DecidedAt))
		require.WithinDuration(t, time.Now(), ev.Timestamp, time.Minute)
		require.NotEmpty(t, ev.Reason)

		body := string(h.body)
		for _, leak := range []string{token, agentotp.HashSecret(token), scopeSecret, e.secret.Reveal(), `"token"`} {
			require.NotContains(t, body, leak)
		}
		var raw map[string]any
		require.NoError(t, json.Unmarshal(h.body, &raw))
		require.ElementsMatch(t, []string{"event", "eventId", "id", "status", "action", "resource", "agentId", "reason",
			"decidedBy", "decidedAt", "timestamp"}, keys(raw))
	}

	t.Run("the signature binds secret, body and time", func(t *testing.T) {
		h := hits[0]
		sig := h.header.Get(otpclient.CallbackSignatureHeader)
		tampered := []byte(strings.Replace(string(h.body), `"status":"`, `"status":"x`, 1))
		_, err := otpclient.VerifyCallback(e.secret, sig, tampered, time.Now(), 0)
		require.ErrorIs(t, err, otpclient.ErrCallbackSignature)
		other := agentotp.CallbackSecret(e.key, &agentotp.Agent{ID: e.agent.ID, KeyHash: "rotated"})
		_, err = otpclient.VerifyCallback(other, sig, h.body, time.Now(), 0)
		require.ErrorIs(t, err, otpclient.ErrCallbackSignature)
		_, err = otpclient.VerifyCallback(e.secret, sig, h.body, time.Now().Add(6*time.Minute), 0)
		require.ErrorIs(t, err, otpclient.ErrCallbackSignature, "a replay after the tolerance")
	})

	t.Run("nothing for permissions without a callback, nor for pending ones", func(t *testing.T) {
		require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, "")))
		require.NoError(t, e.n.NotifyPending(ctx, e.perm(agentotp.StatusPending, rc.URL), e.agent))
		require.Never(t, func() bool { return rc.count() != len(statuses) }, 100*time.Millisecond, 10*time.Millisecond)
	})
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestNeverContactsUnlistedHosts(t *testing.T) {
	ctx := context.Background()
	unlisted := newReceiver(t, nil)
	listed := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, unlisted.URL+"/stolen", http.StatusFound)
		}
	})

	t.Run("refused before sending", func(t *testing.T) {
		e := newEnv(t, []string{listed.addr()})
		for name, url := range map[string]string{
			"unlisted address":                  unlisted.URL + "/cb",
			"unlisted port of a listed address": "http://127.0.0.1:" + unlisted.port() + "/cb",
			"loopback name of an unlisted port": "http://localhost:" + unlisted.port() + "/cb",
			"loopback name of the listed port":  "http://localhost:" + listed.port() + "/cb",
			"not a URL":                         "ftp://" + listed.addr(),
		} {
			err := e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, url))
			require.Error(t, err, name)
			r := e.wait(t)
			require.Zero(t, r.Attempts, name)
			require.Error(t, r.Err, name)
		}
	})

	t.Run("a listed name resolving to an unlisted internal address", func(t *testing.T) {
		e := newEnv(t, []string{listed.addr(), "rebind.test:" + unlisted.port()})
		callback.SetLookup(e.n, func(context.Context, string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1")}, nil
		})
		require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, "http://rebind.test:"+unlisted.port()+"/cb")))
		r := e.wait(t)
		require.ErrorContains(t, r.Err, "refused to connect to 127.0.0.1")
		require.Equal(t, 1, r.Attempts, "an SSRF refusal is not retried")
	})

	t.Run("a redirect from the listed receiver", func(t *testing.T) {
		e := newEnv(t, []string{listed.addr()})
		require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, listed.URL+"/redirect")))
		r := e.wait(t)
		require.Equal(t, http.StatusFound, r.StatusCode)
		require.ErrorContains(t, r.Err, "redirects are not followed")
		require.Equal(t, 1, r.Attempts)
	})

	t.Run("internal addresses only when listed themselves", func(t *testing.T) {
		for name, tc := range map[string]struct {
			hosts []string
			ok    bool
		}{
			"localhost with the port":   {[]string{"hooks.test:" + listed.port(), "localhost:" + listed.port()}, true},
			"the address with the port": {[]string{"hooks.test:" + listed.port(), "127.0.0.1:" + listed.port()}, true},
			"the address, any port":     {[]string{"hooks.test:" + listed.port(), "127.0.0.1"}, true},
			"another address":           {[]string{"hooks.test:" + listed.port(), "127.0.0.2:" + listed.port()}, false},
			"localhost on another port": {[]string{"hooks.test:" + listed.port(), "localhost:1"}, false},
			"only the name":             {[]string{"hooks.test:" + listed.port()}, false},
		} {
			e := newEnv(t, tc.hosts)
			callback.SetLookup(e.n, func(context.Context, string) ([]netip.Addr, error) {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			})
			before := listed.count()
			require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, "http://hooks.test:"+listed.port()+"/cb")))
			r := e.wait(t)
			require.Equal(t, tc.ok, r.Delivered(), "%s: %v", name, r.Err)
			if !tc.ok {
				require.Equal(t, before, listed.count(), name)
			}
		}
	})

	require.Zero(t, unlisted.count(), "the unlisted receiver was contacted")
}

func TestRetries(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name      string
		statuses  []int // answers in order; the last repeats
		header    http.Header
		delivered bool
		attempts  int
	}{
		{"500 then 200", []int{500, 200}, nil, true, 2},
		{"429 with Retry-After then 200", []int{429, 200}, http.Header{"Retry-After": {"1"}}, true, 2},
		{"503 until the attempts run out", []int{503}, nil, false, 3},
		{"400 is not retried", []int{400}, nil, false, 1},
		{"404 is not retried", []int{404}, nil, false, 1},
		{"204 is success", []int{204}, nil, true, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
				for k, v := range tc.header {
					w.Header()[k] = v
				}
				w.WriteHeader(tc.statuses[min(n, len(tc.statuses))-1])
			})
			e := newEnv(t, []string{rc.addr()})
			require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusDenied, rc.URL)))
			r := e.wait(t)
			require.Equal(t, tc.delivered, r.Delivered(), "%v", r.Err)
			require.Equal(t, tc.attempts, r.Attempts)
			require.Equal(t, tc.attempts, rc.count())
			ids := map[string]bool{}
			for _, h := range rc.got() {
				_, err := otpclient.VerifyCallback(e.secret, h.header.Get(otpclient.CallbackSignatureHeader), h.body, time.Now(), 0)
				require.NoError(t, err, "every attempt is signed")
				ids[h.header.Get(otpclient.CallbackEventIDHeader)] = true
			}
			require.Len(t, ids, 1, "retries keep the event id")
		})
	}

	t.Run("network errors are retried", func(t *testing.T) {
		rc := newReceiver(t, nil)
		url := rc.URL
		rc.Close()
		e := newEnv(t, []string{strings.TrimPrefix(url, "http://")})
		require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusDenied, url)))
		r := e.wait(t)
		require.False(t, r.Delivered())
		require.Equal(t, 3, r.Attempts)
		require.NotContains(t, r.Err.Error(), "/", "errors do not repeat the URL")
	})

	t.Run("Retry-After", func(t *testing.T) {
		now := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
		require.Equal(t, 7*time.Second, callback.RetryAfter("7", now))
		require.Equal(t, 90*time.Second, callback.RetryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now))
		require.Zero(t, callback.RetryAfter("soon", now))
		require.Zero(t, callback.RetryAfter("-3", now))
		require.Zero(t, callback.RetryAfter(now.Add(-time.Hour).Format(http.TimeFormat), now))
	})
}

func TestAgentStateAtSendTime(t *testing.T) {
	ctx := context.Background()
	rc := newReceiver(t, nil)
	e := newEnv(t, []string{rc.addr()})
	for name, id := range map[string]agentotp.AgentID{"disabled": "agt_disabled", "unknown": agentotp.NewAgentID(), "deleted": ""} {
		p := e.perm(agentotp.StatusApproved, rc.URL)
		p.AgentID = id
		_ = e.n.NotifyResolved(ctx, p)
		r := e.wait(t)
		require.False(t, r.Delivered(), name)
	}
	require.Zero(t, rc.count())
}

func TestQueueBoundAndClose(t *testing.T) {
	ctx := context.Background()
	release := make(chan struct{})
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) { <-release })
	defer close(release)
	e := newEnv(t, []string{rc.addr()}, func(o *callback.Options) { o.QueueSize = 1; o.Concurrency = 1 })
	require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, rc.URL)))
	err := e.n.NotifyResolved(ctx, e.perm(agentotp.StatusDenied, rc.URL))
	require.ErrorContains(t, err, "queue full")
	require.False(t, e.wait(t).Delivered())
	release <- struct{}{}
	require.True(t, e.wait(t).Delivered())

	t.Run("Close ends retries at once", func(t *testing.T) {
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
		e := newEnv(t, []string{rc.addr()}, func(o *callback.Options) { o.Backoff, o.MaxBackoff = time.Hour, time.Hour })
		require.NoError(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, rc.URL)))
		require.Eventually(t, func() bool { return rc.count() == 1 }, 5*time.Second, 5*time.Millisecond)
		start := time.Now()
		require.NoError(t, e.n.Close())
		require.Less(t, time.Since(start), 2*time.Second)
		r := e.wait(t)
		require.ErrorContains(t, r.Err, "closed")
		require.Error(t, e.n.NotifyResolved(ctx, e.perm(agentotp.StatusApproved, rc.URL)), "closed notifiers queue nothing")
	})
}

func TestNewRefusesBadOptions(t *testing.T) {
	key := []byte(strings.Repeat("k", 32))
	for name, o := range map[string]callback.Options{
		"bad host":   {Hosts: []string{"https://x"}, Key: key, Agents: agents{}},
		"short key":  {Key: key[:31], Agents: agents{}},
		"no agents":  {Key: key},
		"empty host": {Hosts: []string{""}, Key: key, Agents: agents{}},
	} {
		_, err := callback.New(o)
		require.Error(t, err, name)
	}
}

func TestPublicAddresses(t *testing.T) {
	for addr, want := range map[string]bool{
		"93.184.216.34": true, "8.8.8.8": true, "2606:4700:4700::1111": true,
		"127.0.0.1": false, "127.1.2.3": false, "::1": false, "::ffff:127.0.0.1": false,
		"10.1.2.3": false, "172.16.0.1": false, "172.31.255.255": false, "192.168.1.1": false,
		"fc00::1": false, "fd12:3456::1": false,
		"169.254.169.254": false, "fe80::1": false,
		"100.64.0.1": false, "100.127.255.254": false,
		"0.0.0.0": false, "::": false, "0.1.2.3": false,
		"224.0.0.1": false, "239.1.1.1": false, "ff02::1": false, "255.255.255.255": false, "240.0.0.1": false,
		"64:ff9b::7f00:1": false, "64:ff9b::808:808": true, "2002:a00:1::": false, "2002:808:808::": true,
		"172.32.0.1": true, "100.128.0.1": true,
	} {
		require.Equal(t, want, callback.Public(netip.MustParseAddr(addr)), addr)
	}
}
