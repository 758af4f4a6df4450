package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp/httpapi"
)

// TestLongPoll: a GET with ?wait returns as soon as a human decides, with
// the token, not when the wait runs out.
func TestLongPoll(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("waiter")

	t.Run("approve wakes the waiter with the token", func(t *testing.T) {
		p := e.pending(agent.Key, "deploy.prod")
		type result struct {
			r       resp
			err     error
			elapsed time.Duration
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			r, err := e.try(context.Background(), "GET", "/api/v1/permissions/"+p.ID+"?wait=5s", agent.Key, nil)
			done <- result{r, err, time.Since(start)}
		}()
		time.Sleep(300 * time.Millisecond) // let the waiter park
		select {
		case res := <-done:
			t.Fatalf("long-poll returned before the decision: %s", res.r.Body)
		default:
		}
		decided := time.Now()
		e.decide(e.adminKey, p.ID, true, "go").data(t, http.StatusOK, nil)
		res := <-done
		require.NoError(t, res.err)
		var got permView
		res.r.data(t, http.StatusOK, &got)
		require.Equal(t, "approved", got.Status)
		require.True(t, strings.HasPrefix(got.Token, "otp_"), "token %q", got.Token)
		// Had the 5 s deadline ended the wait, the answer would be the
		// stale pending state without a token; timing limits are generous
		// because CI machines are shared.
		require.Less(t, res.elapsed, 5*time.Second, "returned before the wait ran out")
		require.Less(t, time.Since(decided), 3*time.Second, "woken promptly by the decision")
		require.True(t, e.use(agent.Key, p.ID, got.Token, nil).Success)
	})

	t.Run("deny wakes the waiter", func(t *testing.T) {
		p := e.pending(agent.Key, "deploy.prod")
		done := make(chan resp, 1)
		go func() {
			r, _ := e.try(context.Background(), "GET", "/api/v1/permissions/"+p.ID+"?wait=5", agent.Key, nil)
			done <- r
		}()
		time.Sleep(200 * time.Millisecond)
		e.decide(e.adminKey, p.ID, false, "nope").data(t, http.StatusOK, nil)
		select {
		case r := <-done:
			var got permView
			r.data(t, http.StatusOK, &got)
			require.Equal(t, "denied", got.Status)
			require.Empty(t, got.Token)
		case <-time.After(3 * time.Second):
			t.Fatal("long-poll did not return after the denial")
		}
	})

	t.Run("times out still pending", func(t *testing.T) {
		p := e.pending(agent.Key, "deploy.prod")
		start := time.Now()
		var got permView
		e.do("GET", "/api/v1/permissions/"+p.ID+"?wait=300ms", agent.Key, nil).data(t, http.StatusOK, &got)
		require.Equal(t, "pending", got.Status)
		require.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
	})

	t.Run("no wait on a decided permission", func(t *testing.T) {
		p := e.grant(agent.Key, nil)
		start := time.Now()
		e.do("GET", "/api/v1/permissions/"+p.ID+"?wait=30s", agent.Key, nil).data(t, http.StatusOK, nil)
		require.Less(t, time.Since(start), 2*time.Second)
	})

	t.Run("bad wait values", func(t *testing.T) {
		p := e.pending(agent.Key, "deploy.prod")
		for _, w := range []string{"abc", "-1s", "-5", "5x", "1e3", "99999999999999999999h"} {
			r := e.do("GET", "/api/v1/permissions/"+p.ID+"?wait="+w, agent.Key, nil)
			er := r.fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
			require.Contains(t, er.Message, "wait", w)
		}
	})

	t.Run("client leaving ends the wait", func(t *testing.T) {
		p := e.pending(agent.Key, "deploy.prod")
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := e.try(ctx, "GET", "/api/v1/permissions/"+p.ID+"?wait=60s", agent.Key, nil)
		require.Error(t, err)
		// The permission is still resolvable afterwards.
		e.decide(e.adminKey, p.ID, true, "").data(t, http.StatusOK, nil)
		e.fetchToken(agent.Key, p.ID)
	})
}

type sseEvent struct {
	Name string
	Data permView
	Raw  string
}

// readSSE parses events from a text/event-stream body onto out.
func readSSE(body *bufio.Reader, out chan<- sseEvent) {
	defer close(out)
	var ev sseEvent
	for {
		line, err := body.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if ev.Raw != "" {
				_ = json.Unmarshal([]byte(ev.Raw), &ev.Data)
				out <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "event:"):
			ev.Name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			ev.Raw += strings.TrimSpace(strings.TrimPrefix(line, "data:"))
		}
	}
}

func nextEvent(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		require.True(t, ok, "stream ended early")
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5 s")
	}
	return sseEvent{}
}

// TestEvents reads the Server-Sent Events stream with a real client:
// pending, then approved with the token (once), then used, then the end.
func TestEvents(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("listener")
	p := e.pending(agent.Key, "deploy.prod")

	req, err := http.NewRequest("GET", e.srv.URL+"/api/v1/permissions/"+p.ID+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+agent.Key)
	req.Header.Set("Accept", "text/event-stream")
	res, err := e.client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	require.NotEmpty(t, res.Header.Get("X-Request-Id"))

	events := make(chan sseEvent, 16)
	go readSSE(bufio.NewReader(res.Body), events)

	ev := nextEvent(t, events)
	require.Equal(t, "status", ev.Name)
	require.Equal(t, "pending", ev.Data.Status)
	require.Equal(t, p.ID, ev.Data.ID)
	require.Empty(t, ev.Data.Token)

	e.decide(e.adminKey, p.ID, true, "ship it").data(t, http.StatusOK, nil)
	ev = nextEvent(t, events)
	require.Equal(t, "approved", ev.Data.Status)
	require.True(t, strings.HasPrefix(ev.Data.Token, "otp_"), "approved event carries the token: %s", ev.Raw)
	token := ev.Data.Token

	// The token went to the stream; a plain GET does not repeat it.
	var got permView
	e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &got)
	require.Empty(t, got.Token)

	require.True(t, e.use(agent.Key, p.ID, token, nil).Success)
	ev = nextEvent(t, events)
	require.Equal(t, "used", ev.Data.Status)
	require.Empty(t, ev.Data.Token)

	select {
	case extra, ok := <-events:
		require.False(t, ok, "stream must end after a terminal status, got %s", extra.Raw)
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end after the permission was used")
	}
}

func TestEventsTerminalAndErrors(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("listener2")

	// A permission that is already terminal yields one event and ends.
	p := e.request(agent.Key, map[string]any{"action": "deny.x"}, http.StatusOK)
	res, err := e.try(context.Background(), "GET", "/api/v1/permissions/"+p.ID+"/events", agent.Key, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.Status)
	require.Equal(t, 1, strings.Count(string(res.Body), "event: status"))
	require.Contains(t, string(res.Body), `"status":"denied"`)

	// Errors before the stream starts are ordinary JSON envelopes.
	e.do("GET", "/api/v1/permissions/perm_nope/events", agent.Key, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("GET", "/api/v1/permissions/"+p.ID+"/events", "", nil).fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
}

// TestEventsHeartbeat: an idle stream gets keep-alive comments so proxies
// do not cut it.
func TestEventsHeartbeat(t *testing.T) {
	defer httpapi.SetSSEHeartbeat(30 * time.Millisecond)()
	e := newTestServer(t)
	agent := e.createAgent("idle")
	p := e.pending(agent.Key, "deploy.prod")
	req, err := http.NewRequest("GET", e.srv.URL+"/api/v1/permissions/"+p.ID+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "bearer "+agent.Key) // the scheme is case-insensitive
	res, err := e.client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	rd := bufio.NewReader(res.Body)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		if line == ": keep-alive\n" {
			return
		}
	}
	t.Fatal("no keep-alive comment on an idle stream")
}

// TestEventsHeartbeatOutlivesNoStream: clients that leave event streams
// around a keep-alive tick never get a keep-alive written into a finished
// response (which panicked outside any handler and killed the server).
func TestEventsHeartbeatOutlivesNoStream(t *testing.T) {
	defer httpapi.SetSSEHeartbeat(time.Millisecond)()
	e := newTestServer(t)
	agent := e.createAgent("restless")
	p := e.pending(agent.Key, "deploy.prod")
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 100 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(2+(i*7+g)%10)*time.Millisecond)
				_, _ = e.try(ctx, "GET", "/api/v1/permissions/"+p.ID+"/events", agent.Key, nil)
				cancel()
			}
		})
	}
	wg.Wait()
	got := e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil)
	require.Equal(t, http.StatusOK, got.Status, "the server is still up")
}

// TestWaiterCap: one key cannot hold more than MaxWaiters long-polls open.
func TestWaiterCap(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("hoarder")
	p := e.pending(agent.Key, "needs.human")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range httpapi.MaxWaiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = e.try(ctx, "GET", "/api/v1/permissions/"+p.ID+"?wait=30s", agent.Key, nil)
		}()
	}
	api := e.srv.Config.Handler.(*httpapi.Server)
	require.Eventually(t, func() bool { return api.OpenWaits() == httpapi.MaxWaiters }, 10*time.Second, 10*time.Millisecond)
	e.do("GET", "/api/v1/permissions/"+p.ID+"?wait=1s", agent.Key, nil).fail(t, http.StatusTooManyRequests, "RATE_LIMITED")
	e.do("GET", "/api/v1/permissions/"+p.ID+"/events", agent.Key, nil).fail(t, http.StatusTooManyRequests, "RATE_LIMITED")
	// A plain read (no wait) is not a waiter.
	e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, nil)
	cancel()
	wg.Wait()
}
