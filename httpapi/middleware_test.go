package httpapi_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// TestRateLimit: beyond the per-principal budget, 429 RATE_LIMITED with a
// Retry-After of at least one second; failed keys are limited per address.
func TestRateLimit(t *testing.T) {
	e := newTestServer(t, withRateLimit(2)) // 2/s, burst 4
	agent := e.createAgent("busy")          // admin: 1 request
	other := e.createAgent("quiet")         // admin: 2 requests

	// burst fires n requests at once, so that the limiter sees them within
	// a few milliseconds however slow the machine is.
	burst := func(n int, send func(i int) resp) (ok []resp, limited int) {
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			out []resp
		)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				r := send(i)
				mu.Lock()
				out = append(out, r)
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		for _, r := range out {
			if r.Status == http.StatusTooManyRequests {
				r.fail(t, http.StatusTooManyRequests, "RATE_LIMITED")
				ra, err := strconv.Atoi(r.Header.Get("Retry-After"))
				require.NoError(t, err, "Retry-After %q", r.Header.Get("Retry-After"))
				require.GreaterOrEqual(t, ra, 1)
				require.LessOrEqual(t, ra, 5)
				// v0.1.1's headers too.
				require.Equal(t, "120", r.Header.Get("X-RateLimit-Limit"))
				require.Equal(t, "0", r.Header.Get("X-RateLimit-Remaining"))
				reset, err := strconv.ParseInt(r.Header.Get("X-RateLimit-Reset"), 10, 64)
				require.NoError(t, err)
				require.InDelta(t, time.Now().UnixMilli(), reset, 5000)
				limited++
			} else {
				ok = append(ok, r)
			}
		}
		return ok, limited
	}

	t.Run("agent burst", func(t *testing.T) {
		ok, limited := burst(12, func(int) resp {
			return e.tryResp("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x"})
		})
		require.GreaterOrEqual(t, limited, 6, "a burst of 12 at 2/s with burst 4 must be limited")
		require.GreaterOrEqual(t, len(ok), 4, "the burst itself is allowed")
		for _, r := range ok {
			r.data(t, http.StatusCreated, nil)
		}
		// Another principal has its own budget.
		e.do("POST", "/api/v1/permissions/request", other.Key, map[string]any{"action": "auto.x"}).data(t, http.StatusCreated, nil)
	})

	t.Run("refusals are limited too", func(t *testing.T) {
		// An agent key on an admin route (403) and a disabled agent's key
		// spend the same budget as any request.
		time.Sleep(2100 * time.Millisecond) // the admin's own budget refills first
		noisy := e.createAgent("noisy")
		_, limited := burst(12, func(int) resp { return e.tryResp("GET", "/api/v1/agents", noisy.Key, nil) })
		require.GreaterOrEqual(t, limited, 6, "403s must be rate limited")
		off := e.createAgent("off")
		e.do("PATCH", "/api/v1/agents/"+off.ID, e.adminKey, map[string]any{"isActive": false}).data(t, http.StatusOK, nil)
		_, limited = burst(12, func(int) resp {
			return e.tryResp("POST", "/api/v1/permissions/request", off.Key, map[string]any{"action": "auto.x"})
		})
		require.GreaterOrEqual(t, limited, 6, "a disabled key must be rate limited")
	})

	t.Run("budget refills", func(t *testing.T) {
		time.Sleep(1100 * time.Millisecond)
		e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x"}).data(t, http.StatusCreated, nil)
	})

	t.Run("failed keys from one address", func(t *testing.T) {
		ok, limited := burst(12, func(i int) resp {
			key := agentotp.NewAgentKey().Reveal()
			if i%3 == 0 {
				key = "ak_garbage"
			}
			return e.tryResp("GET", "/api/v1/agents", key, nil)
		})
		require.GreaterOrEqual(t, limited, 6)
		require.GreaterOrEqual(t, len(ok), 4)
		for _, r := range ok {
			r.fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
		}
		// Requests without any key count against the same address.
		_, limited = burst(8, func(int) resp { return e.tryResp("GET", "/api/v1/agents", "", nil) })
		require.GreaterOrEqual(t, limited, 3)
	})
}

// TestPendingCap: one agent cannot flood the approval queue.
func TestPendingCap(t *testing.T) {
	e := newTestServer(t, withMaxPending(3))
	agent := e.createAgent("flooder")
	for range 3 {
		e.pending(agent.Key, "needs.human")
	}
	e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "needs.human"}).
		fail(t, http.StatusTooManyRequests, "RATE_LIMITED")
	r := e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "needs.human"})
	r.fail(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.NotEmpty(t, r.Header.Get("Retry-After"), "every 429 says when to retry")
	// Auto-approved requests are not queued, so they still work.
	e.grant(agent.Key, nil)
	// Another agent is not affected.
	other := e.createAgent("calm")
	e.pending(other.Key, "needs.human")
}

var hexID = regexp.MustCompile(`^[0-9a-f]{24}$`)

// TestRequestID: every response carries X-Request-Id; a sane caller id is
// echoed (and lands in the audit), a hostile one is replaced.
func TestRequestID(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("traced")

	for _, c := range []struct{ method, path, key string }{
		{"GET", "/health", ""},
		{"GET", "/ready", ""},
		{"GET", "/metrics", ""},
		{"GET", "/nope", ""},
		{"GET", "/api/v1/agents", ""},
		{"GET", "/api/v1/agents", agent.Key},
		{"POST", "/api/v1/permissions/request", agent.Key},
	} {
		r := e.do(c.method, c.path, c.key, nil)
		require.Regexp(t, hexID, r.Header.Get("X-Request-Id"), "%s %s", c.method, c.path)
	}

	r := e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.trace"}, "X-Request-Id", "client-req.42_A")
	require.Equal(t, "client-req.42_A", r.Header.Get("X-Request-Id"))
	var p permView
	r.data(t, http.StatusCreated, &p)
	ev := e.auditOf(p.ID)
	require.NotEmpty(t, ev)
	require.Equal(t, "client-req.42_A", ev[0].RequestID)

	for _, bad := range []string{"has spaces in it", "tab\there", "<script>alert(1)</script>", "ünïcode",
		"a;b=c", strings.Repeat("x", 65), "%0d%0aX-Injected:%201"} {
		r := e.do("GET", "/health", "", nil, "X-Request-Id", bad)
		got := r.Header.Get("X-Request-Id")
		require.NotEqual(t, bad, got)
		require.Regexp(t, hexID, got, "replaced by a fresh id")
	}

	// A folded (multi-line) header over a raw connection: the server
	// either refuses the request or replaces the id; it never echoes it.
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: evil\r\n injected: yes\r\nConnection: close\r\n\r\n")
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode == http.StatusOK {
		require.Regexp(t, hexID, res.Header.Get("X-Request-Id"))
	}
	require.Empty(t, res.Header.Get("Injected"))
}

// TestMetrics: /metrics is Prometheus text on loopback without a key.
func TestMetrics(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("measured")
	e.grant(agent.Key, nil)
	e.do("GET", "/health", "", nil)

	r := e.do("GET", "/metrics", "", nil)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	require.Contains(t, r.Header.Get("Content-Type"), "text/plain")
	body := string(r.Body)
	require.Contains(t, body, "# TYPE agentotp_http_requests_total counter")
	require.Regexp(t, `agentotp_http_requests_total\{code="201",route="POST /api/v1/permissions/request"\} 1`, body)
	require.Regexp(t, `agentotp_http_requests_total\{code="200",route="GET /health"\} [1-9]`, body)
	require.Contains(t, body, "agentotp_http_request_duration_seconds_bucket")
	// Ids never become label values (unbounded cardinality).
	require.NotContains(t, body, "perm_")

	// With a key it is the admin's only.
	e.do("GET", "/metrics", agent.Key, nil).fail(t, http.StatusForbidden, "FORBIDDEN")
	r = e.do("GET", "/metrics", e.adminKey, nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.Contains(t, string(r.Body), "agentotp_http_requests_total")
}

func TestSecurityHeaders(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("hdr")
	r := e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.h"})
	require.Equal(t, http.StatusCreated, r.Status)
	require.Equal(t, "no-store", r.Header.Get("Cache-Control"), "responses with tokens must not be cached")
	require.Equal(t, "nosniff", r.Header.Get("X-Content-Type-Options"))
	require.Equal(t, "application/json; charset=utf-8", r.Header.Get("Content-Type"))
}

// TestStoreDown: with the store gone, /ready is 503, requests fail with an
// error and grant nothing, and /health still answers.
func TestStoreDown(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("orphan")
	require.NoError(t, e.store.Close())
	e.do("GET", "/ready", "", nil).fail(t, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE")
	e.do("GET", "/health", "", nil).data(t, http.StatusOK, nil)
	r := e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x"})
	require.GreaterOrEqual(t, r.Status, 500, "body: %s", r.Body)
	require.NotContains(t, string(r.Body), "otp_")
}
