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

// Budgets and the pending cap are limits: 100 concurrent requests from one
// agent, split over two server processes sharing one SQLite file, never
// get more than the limit allows.
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
`), 0o600))
	data := filepath.Join(dir, "data")
	code, out, errs := run(t, "agents", "create", "racer", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	a := startServeProcess(t, bin, "--data", data, "--policies", pol)
	b := startServeProcess(t, bin, "--data", data, "--policies", pol)

	fire := func(n int, body map[string]any) map[int]int {
		var mu sync.Mutex
		codes := map[int]int{}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			url := a
			if i%2 == 1 {
				url = b
			}
			wg.Go(func() {
				<-start
				status, _ := call(t, "POST", url+"/api/v1/permissions/request", key, body)
				mu.Lock()
				codes[status]++
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

	// The pending cap (100 per agent): 95 waiting, then 40 at once.
	codes = fire(95, map[string]any{"action": "ask.one"})
	require.Equal(t, 95, codes[http.StatusAccepted], codes)
	codes = fire(40, map[string]any{"action": "ask.two"})
	require.Equal(t, 5, codes[http.StatusAccepted], "the cap is 100 pending: %v", codes)
	require.Equal(t, 35, codes[http.StatusTooManyRequests], codes)
}
