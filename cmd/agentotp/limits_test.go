package main

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// startServeProcess runs the built binary's serve on data as a separate
// process and returns its URL.
func startServeProcess(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--rate-limit", "-1"}, args...)...)
	cmd.Env = childEnv()
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := regexp.MustCompile(`listening on (http://\S+)`).FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
	}()
	select {
	case u := <-urls:
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not start")
		return ""
	}
}

// Budgets, the pending cap and single use are limits: 100 concurrent
// requests from one agent, split over two server processes sharing one
// SQLite file, never get more than the limit allows, and retries (one
// idempotency key) are answered from the one permission they made.
func TestLimitsHoldAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	withEnv(t, nil)
	bin := buildAgentotp(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "limits.yaml")
	require.NoError(t, os.WriteFile(pol, []byte(`
- name: three an hour
  conditions:
    action: {startsWith: budget.}
  when: approvals("budget.*", duration("1h")) < 3
  action: auto_approve
- name: then no
  priority: -1
  conditions:
    action: {startsWith: budget.}
  action: deny
- name: at once
  conditions:
    action: {startsWith: auto.}
  action: auto_approve
`), 0o600))
	data := filepath.Join(dir, "data")
	code, out, errs := run(t, "agents", "create", "racer", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	a := startServeProcess(t, bin, "--data", data, "--policies", pol)
	b := startServeProcess(t, bin, "--data", data, "--policies", pol)

	var answers []map[string]any // the last fire's answers
	fire := func(n int, body map[string]any) map[int]int {
		var mu sync.Mutex
		codes := map[int]int{}
		answers = nil
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			url := a
			if i%2 == 1 {
				url = b
			}
			wg.Go(func() {
				<-start
				status, data := call(t, "POST", url+"/api/v1/permissions/request", key, body)
				mu.Lock()
				codes[status]++
				answers = append(answers, data)
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		return codes
	}

	codes := fire(100, map[string]any{"action": "budget.send"})
	require.Equal(t, 3, codes[http.StatusCreated], "exactly the budget is auto-approved: %v", codes)
	require.Equal(t, 97, codes[http.StatusOK], "the rest are denied: %v", codes)

	// A request carrying its use, 100 times at once with one key: spent
	// once; every other answer is a retry of the spent permission.
	codes = fire(100, map[string]any{"action": "auto.once", "idempotencyKey": "once-1", "use": map[string]any{}})
	var spent int
	for _, d := range answers {
		require.Equal(t, answers[0]["id"], d["id"], "one permission")
		require.Equal(t, "used", d["status"], d)
		if use, ok := d["use"].(map[string]any); ok {
			require.Equal(t, true, use["success"], d)
			spent++
		}
	}
	require.Equal(t, 1, spent, "spent once: %v", codes)

	// The pending cap (100 per agent): 95 waiting (one with a key), then
	// 40 at once; then, at the cap, retries of the keyed one are answered
	// from it.
	codes = fire(94, map[string]any{"action": "ask.one"})
	require.Equal(t, 94, codes[http.StatusAccepted], codes)
	keyed := map[string]any{"action": "ask.keyed", "idempotencyKey": "wait-1"}
	codes = fire(1, keyed)
	require.Equal(t, 1, codes[http.StatusAccepted], codes)
	waiting := answers[0]["id"]
	codes = fire(40, map[string]any{"action": "ask.two"})
	require.Equal(t, 5, codes[http.StatusAccepted], "the cap is 100 pending: %v", codes)
	require.Equal(t, 35, codes[http.StatusTooManyRequests], codes)
	codes = fire(20, keyed)
	require.Equal(t, 20, codes[http.StatusAccepted], "retries at the cap: %v", codes)
	for _, d := range answers {
		require.Equal(t, waiting, d["id"])
	}
}
