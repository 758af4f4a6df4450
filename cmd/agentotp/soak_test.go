//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPendingMemory: with 1,000 requests waiting for a human and 200 agents
// long-polling for their answer, the server process stays within 150 MB
// of resident memory.
func TestPendingMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	withEnv(t, nil)
	bin := plainAgentotp(t)
	srv := startServe(t, bin, "--data", filepath.Join(t.TempDir(), "data"))
	require.NotEmpty(t, srv.admin)
	c := newAPIClient()
	const agents, perAgent = 200, 5
	keys := createAgents(t, c, srv.url, srv.admin, "waiter", agents)

	// Requests the size an agent sends: a resource, a scope and a reason.
	reason := strings.Repeat("Sending the monthly invoice to the client named in the resource. ", 4)
	first := make([]string, agents)
	var wg sync.WaitGroup
	errs := make(chan error, agents)
	sem := make(chan struct{}, 16)
	for i, key := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			for j := range perAgent {
				status, r, err := c.do(context.Background(), "POST", srv.url+"/api/v1/permissions/request", key, map[string]any{
					"action": "gmail.send", "resource": fmt.Sprintf("email:client-%d-%d@example.com", i, j),
					"scope":   map[string]any{"max_emails": 1, "subject_pattern": "^Invoice.*", "recipients": []string{"a@example.com", "b@example.com"}},
					"context": map[string]any{"reason": reason, "ticket": fmt.Sprintf("INV-%06d", i*perAgent+j)},
				})
				var p wirePerm
				if err == nil && status == http.StatusAccepted {
					err = json.Unmarshal(r.Data, &p)
				} else if err == nil {
					err = fmt.Errorf("request: HTTP %d %+v", status, r.Error)
				}
				if err != nil {
					errs <- err
					return
				}
				if j == 0 {
					first[i] = p.ID
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	idleRSS, idleGoroutines := srv.status(t, "VmRSS"), srv.metric(t, "go_goroutines")

	ctx, cancel := context.WithCancel(context.Background())
	var early atomic.Int64
	for i, key := range keys {
		wg.Go(func() {
			_, _, err := c.do(ctx, "GET", srv.url+"/api/v1/permissions/"+first[i]+"?wait=60s", key, nil)
			if err == nil {
				early.Add(1) // answered before anyone decided
			}
		})
	}
	defer func() { cancel(); wg.Wait() }()
	require.Eventually(t, func() bool { return srv.metric(t, "go_goroutines") >= idleGoroutines+agents }, 20*time.Second, 50*time.Millisecond,
		"every long-poll is held by the server")
	rss, peak := srv.status(t, "VmRSS"), srv.status(t, "VmHWM")
	t.Logf("%d pending, %d long-polls: VmRSS %.1f MB (%.1f MB before the long-polls), VmHWM %.1f MB, heap in use %.1f MB, %.0f goroutines",
		agents*perAgent, agents, float64(rss)/1024, float64(idleRSS)/1024, float64(peak)/1024,
		srv.metric(t, "go_memstats_heap_inuse_bytes")/(1<<20), srv.metric(t, "go_goroutines"))
	require.LessOrEqual(t, rss, int64(150*1024), "resident memory in kB")
	require.LessOrEqual(t, peak, int64(150*1024), "peak resident memory in kB")
	require.Zero(t, early.Load())
}

const soakPolicies = `
- name: soak auto
  conditions:
    action: {startsWith: auto.}
  action: auto_approve
  scopeTemplate: {max_items: 1}
- name: soak deny
  conditions:
    action: {startsWith: deny.}
  action: deny
`

// TestSoak (make soak; AGENTOTP_SOAK=60s) runs mixed load against a serve
// process: two-call and one-call cycles, human approvals and denials,
// policy denials, long-polls that time out, admin reads and metric
// scrapes. After a warm-up and again after the soak, with the load stopped
// and idle connections closed, the goroutine count and the heap in use
// must be back where they were.
func TestSoak(t *testing.T) {
	spec := os.Getenv("AGENTOTP_SOAK")
	if spec == "" {
		t.Skip("set AGENTOTP_SOAK=60s (make soak) to run the soak")
	}
	soak, err := time.ParseDuration(spec)
	require.NoError(t, err)
	withEnv(t, nil)
	bin := plainAgentotp(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policies.yaml")
	require.NoError(t, os.WriteFile(pol, []byte(soakPolicies), 0o600))
	srv := startServe(t, bin, "--data", filepath.Join(dir, "data"), "--policies", pol)
	c := newAPIClient()
	keys := createAgents(t, c, srv.url, srv.admin, "soak", 16)

	settle := func() (goroutines, heap float64, rss int64) {
		c.http.CloseIdleConnections()
		http.DefaultClient.CloseIdleConnections()
		prev := -1.0
		for range 30 {
			time.Sleep(500 * time.Millisecond)
			g := srv.metric(t, "go_goroutines")
			if g == prev {
				break
			}
			prev = g
		}
		heap = srv.metric(t, "go_memstats_heap_inuse_bytes")
		for range 5 {
			time.Sleep(200 * time.Millisecond)
			heap = min(heap, srv.metric(t, "go_memstats_heap_inuse_bytes"))
		}
		return prev, heap, srv.status(t, "VmRSS")
	}

	warm := soakLoad(t, c, srv, keys, 10*time.Second)
	g0, h0, r0 := settle()
	n := soakLoad(t, c, srv, keys, soak)
	g1, h1, r1 := settle()
	t.Logf("warm-up %v, soak %v", warm, n)
	t.Logf("after warm-up: %.0f goroutines, heap in use %.1f MB, VmRSS %.1f MB", g0, h0/(1<<20), float64(r0)/1024)
	t.Logf("after %v:     %.0f goroutines, heap in use %.1f MB, VmRSS %.1f MB, VmHWM %.1f MB", soak, g1, h1/(1<<20), float64(r1)/1024,
		float64(srv.status(t, "VmHWM"))/1024)
	require.LessOrEqual(t, g1, g0+5, "goroutines")
	// The heap in use moves with the collector's pace; a leak of even a
	// few hundred bytes per request would add tens of MB over the soak.
	require.LessOrEqual(t, h1, 1.5*h0+8<<20, "heap in use")
	require.LessOrEqual(t, r1, int64(150*1024), "resident memory in kB")
}

// soakLoad runs the soak's workers for d, fails the test on any wrong
// answer, and returns how many of each flow completed.
func soakLoad(t *testing.T, c *apiClient, srv *serveProc, keys []string, d time.Duration) map[string]int {
	t.Helper()
	api := srv.url + "/api/v1"
	admin := srv.admin
	type call struct {
		method, url, key string
		body             any
		want             int
	}
	do := func(cl call) (wirePerm, error) {
		status, r, err := c.do(context.Background(), cl.method, cl.url, cl.key, cl.body)
		var p wirePerm
		if err == nil && status != cl.want {
			err = fmt.Errorf("%s %s: HTTP %d %+v, want %d", cl.method, cl.url, status, r.Error, cl.want)
		}
		if err == nil && len(r.Data) > 0 && r.Data[0] == '{' {
			err = json.Unmarshal(r.Data, &p)
		}
		return p, err
	}
	details := map[string]any{"items": 1}
	// Each flow is a sequence of checked steps; a step may use the
	// permission the request step returned.
	type step func(key string, p wirePerm) (wirePerm, error)
	req := func(action string, want int, use bool) step {
		return func(key string, _ wirePerm) (wirePerm, error) {
			body := map[string]any{"action": action, "context": map[string]any{"reason": "soak"}}
			if use {
				body["use"] = map[string]any{"actionDetails": details}
			}
			return do(call{"POST", api + "/permissions/request", key, body, want})
		}
	}
	useTok := func(key string, p wirePerm) (wirePerm, error) {
		status, r, err := c.do(context.Background(), "POST", api+"/permissions/"+p.ID+"/use", key, map[string]any{"token": p.Token, "actionDetails": details})
		var res struct{ Success bool }
		if err == nil {
			err = json.Unmarshal(r.Data, &res)
		}
		if err == nil && (status != http.StatusOK || !res.Success) {
			err = fmt.Errorf("use %s: HTTP %d success=%v %+v", p.ID, status, res.Success, r.Error)
		}
		return p, err
	}
	decide := func(approve bool) step {
		return func(_ string, p wirePerm) (wirePerm, error) {
			_, err := do(call{"POST", api + "/permissions/" + p.ID + "/decide", admin, map[string]any{"approved": approve}, http.StatusOK})
			return p, err
		}
	}
	get := func(query, wantStatus string) step {
		return func(key string, p wirePerm) (wirePerm, error) {
			got, err := do(call{"GET", api + "/permissions/" + p.ID + query, key, nil, http.StatusOK})
			if err == nil && got.Status != wantStatus {
				err = fmt.Errorf("permission %s: %s, want %s", p.ID, got.Status, wantStatus)
			}
			return got, err
		}
	}
	read := func(url, key string) step {
		return func(_ string, p wirePerm) (wirePerm, error) {
			status, _, err := c.do(context.Background(), "GET", url, key, nil)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("GET %s: HTTP %d", url, status)
			}
			return p, err
		}
	}
	scrape := func(_ string, p wirePerm) (wirePerm, error) {
		res, err := http.Get(srv.url + "/metrics")
		if err == nil {
			res.Body.Close()
		}
		return p, err
	}
	workers := []struct {
		name  string
		n     int
		steps []step
	}{
		{"request+use", 4, []step{req("auto.cycle", http.StatusCreated, false), useTok}},
		{"one call", 2, []step{req("auto.once", http.StatusCreated, true)}},
		{"human approves", 1, []step{req("ask.approve", http.StatusAccepted, false), decide(true), get("", "approved"), useTok}},
		{"long-poll times out, human denies", 1, []step{req("ask.wait", http.StatusAccepted, false), get("?wait=1s", "pending"), decide(false)}},
		{"policy denies", 1, []step{req("deny.this", http.StatusOK, false)}},
		{"admin reads", 1, []step{read(api+"/audit?limit=20", admin), read(api+"/audit/stats", admin), read(api+"/agents", admin), scrape}},
	}
	var mu sync.Mutex
	counts := map[string]int{}
	var failure error
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	w := 0
	for _, wk := range workers {
		for range wk.n {
			key := keys[w%len(keys)]
			w++
			wg.Go(func() {
				for time.Now().Before(stop) {
					var p wirePerm
					var err error
					for _, s := range wk.steps {
						if p, err = s(key, p); err != nil {
							break
						}
					}
					mu.Lock()
					if err != nil && failure == nil {
						failure = fmt.Errorf("%s: %w", wk.name, err)
					}
					counts[wk.name]++
					stopNow := failure != nil
					mu.Unlock()
					if stopNow {
						return
					}
				}
			})
		}
	}
	wg.Wait()
	require.NoError(t, failure)
	return counts
}
