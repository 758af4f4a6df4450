//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

const twoInstancePolicies = `
- name: two instances auto-approve
  conditions:
    action: {startsWith: auto.}
  action: auto_approve
  token: {uses: 100}
`

// postgresServer starts a throwaway PostgreSQL for one test and returns a
// DSN of a fresh database on it: skipped when PostgreSQL is absent,
// failed under CI=true.
func postgresServer(t *testing.T) string {
	t.Helper()
	srv, err := pgtest.Start(pgtest.Options{Durable: true})
	if err != nil {
		missingTool(t, "PostgreSQL: %v", err)
	}
	t.Cleanup(srv.Stop)
	db, err := srv.CreateDatabase(context.Background())
	require.NoError(t, err)
	return srv.TCPDSN(db)
}

// Two `agentotp serve` processes on one PostgreSQL database behave as one:
// a decision on B reaches A's long-poll at once, one token's uses split
// over both are spent exactly as granted, and when one is killed under
// load the other keeps serving and the audit trail verifies.
func TestTwoInstancesOnePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and two servers")
	}
	// The test server trusts loopback connections; the password is there
	// to check that no message or log line repeats it.
	dsn := strings.Replace(postgresServer(t), "postgres@", "postgres:pw-never-logged@", 1)
	bin := plainAgentotp(t)
	dir := t.TempDir()
	policies := filepath.Join(dir, "policies.yaml")
	require.NoError(t, os.WriteFile(policies, []byte(twoInstancePolicies), 0o600))
	keyHex := make([]byte, 32)
	_, _ = rand.Read(keyHex)
	admin := agentotp.NewUserKey().Reveal()
	vars := []string{"AGENTOTP_AUDIT_KEY=" + hex.EncodeToString(keyHex), "AGENTOTP_ADMIN_KEY=" + admin}
	start := func(name string) *serveProc {
		return startServeEnv(t, bin, vars, "--db", dsn, "--data", filepath.Join(dir, name), "--policies", policies)
	}
	a, b := start("a"), start("b")
	c := newAPIClient()
	keys := createAgents(t, c, a.url, admin, "two", 4)

	t.Run("a decision on B wakes the long-poll on A within a second", func(t *testing.T) {
		var p wirePerm
		c.must(t, "POST", a.url+"/api/v1/permissions/request", keys[0], map[string]any{"action": "human.deploy"}, http.StatusAccepted, &p)
		got := make(chan wirePerm, 1)
		go func() {
			var q wirePerm
			status, r, err := c.do(context.Background(), "GET", a.url+"/api/v1/permissions/"+p.ID+"?wait=30s", keys[0], nil)
			if err == nil && status == http.StatusOK {
				_ = json.Unmarshal(r.Data, &q)
			}
			got <- q
		}()
		time.Sleep(300 * time.Millisecond) // A's long-poll is waiting
		decided := time.Now()
		c.must(t, "POST", b.url+"/api/v1/permissions/"+p.ID+"/decide", admin, map[string]any{"approved": true, "reason": "from B"}, http.StatusOK, nil)
		select {
		case q := <-got:
			require.Equal(t, "approved", q.Status)
			require.NotEmpty(t, q.Token, "A hands the agent its token")
			// Woken by the change feed: the fallback re-read comes only
			// every second.
			took := time.Since(decided)
			t.Logf("A answered %s after B's decision", took)
			require.Less(t, took, 500*time.Millisecond)
		case <-time.After(5 * time.Second):
			t.Fatal("A's long-poll did not answer")
		}
	})

	t.Run("100 uses of one token split over both instances succeed exactly as granted", func(t *testing.T) {
		var p wirePerm
		c.must(t, "POST", a.url+"/api/v1/permissions/request", keys[1], map[string]any{"action": "auto.spend", "uses": 60}, http.StatusCreated, &p)
		var ok, refused atomic.Int32
		var wg sync.WaitGroup
		for i := range 100 {
			url := a.url
			if i%2 == 1 {
				url = b.url
			}
			wg.Go(func() {
				status, r, err := c.do(context.Background(), "POST", url+"/api/v1/permissions/"+p.ID+"/use", keys[1], map[string]any{"token": p.Token})
				if err != nil || status != http.StatusOK {
					t.Errorf("use: %v HTTP %d", err, status)
					return
				}
				var u struct{ Success bool }
				_ = json.Unmarshal(r.Data, &u)
				if u.Success {
					ok.Add(1)
				} else {
					refused.Add(1)
				}
			})
		}
		wg.Wait()
		require.EqualValues(t, 60, ok.Load(), "exactly the granted uses")
		require.EqualValues(t, 40, refused.Load())
	})

	t.Run("the CLI works on the database: pending, approve, export, prune", func(t *testing.T) {
		var p wirePerm
		c.must(t, "POST", b.url+"/api/v1/permissions/request", keys[0], map[string]any{"action": "human.cli"}, http.StatusAccepted, &p)
		cli := func(args ...string) string {
			t.Helper()
			code, out, errs := runEnv(t, vars, append(args, "--db", dsn, "--data", filepath.Join(dir, "cli"))...)
			require.Equal(t, 0, code, "%v: %s %s", args, out, errs)
			require.NotContains(t, out+errs, "pw-never-logged")
			return out
		}
		require.Contains(t, cli("pending"), p.ID)
		cli("approve", p.ID, "--reason", "from the CLI")
		var q wirePerm
		c.must(t, "GET", a.url+"/api/v1/permissions/"+p.ID, keys[0], nil, http.StatusOK, &q)
		require.Equal(t, "approved", q.Status, "instance A sees the CLI's decision")
		require.NotEmpty(t, q.Token)
		require.Contains(t, cli("audit", "export"), p.ID)
		require.Contains(t, cli("prune", "--older-than", "0s"), "pruned")
	})

	t.Run("bench spreads its load over both and times PostgreSQL's own commits", func(t *testing.T) {
		granted := func(p *serveProc) float64 {
			res, err := http.Get(p.url + "/metrics")
			require.NoError(t, err)
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			m := regexp.MustCompile(`(?m)^agentotp_http_requests_total\{code="201",route="POST /api/v1/permissions/request"\} (\S+)$`).FindSubmatch(body)
			if m == nil {
				return 0
			}
			n, err := strconv.ParseFloat(string(m[1]), 64)
			require.NoError(t, err)
			return n
		}
		before := []float64{granted(a), granted(b)}
		code, out, errs := runEnv(t, vars, "bench", "--url", a.url+","+b.url, "--one-call", "--concurrency", "4", "--agents", "2",
			"--duration", "1s", "--baseline", "--baseline-db", dsn, "--baseline-duration", "300ms", "--json")
		require.Equal(t, 0, code, "%s %s", out, errs)
		require.NotContains(t, out+errs, "pw-never-logged")
		var rep struct {
			Cycles           int64
			Failures         int64
			BaselinePostgres bool
			Runs             []struct {
				Baseline float64 `json:"baselineCommitsPerSec"`
				Ratio    float64 `json:"ratio"`
			}
		}
		require.NoError(t, json.Unmarshal([]byte(out), &rep))
		require.Positive(t, rep.Cycles)
		require.Zero(t, rep.Failures)
		require.True(t, rep.BaselinePostgres)
		require.Positive(t, rep.Runs[0].Baseline)
		require.Positive(t, rep.Runs[0].Ratio)
		for i, p := range []*serveProc{a, b} {
			require.Greater(t, granted(p), before[i], "instance %d got load", i)
		}
	})

	t.Run("kill -9 one instance under load: the other keeps serving, the trail verifies", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var onB, failedB atomic.Int32
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for ctx.Err() == nil {
					url := a.url
					if w%2 == 1 {
						url = b.url
					}
					status, _, err := c.do(ctx, "POST", url+"/api/v1/permissions/request", keys[2+w%2],
						map[string]any{"action": "auto.load", "use": map[string]any{}})
					if url == b.url && ctx.Err() == nil {
						if err != nil || status != http.StatusCreated {
							failedB.Add(1)
						} else {
							onB.Add(1)
						}
					}
				}
			})
		}
		time.Sleep(500 * time.Millisecond)
		a.kill9(t)
		before := onB.Load()
		time.Sleep(time.Second)
		cancel()
		wg.Wait()
		require.Zero(t, failedB.Load(), "B answered every request while A died: %s", b.stderr)
		require.NotContains(t, a.stderr.String()+b.stderr.String(), "pw-never-logged")
		require.Greater(t, onB.Load(), before, "B kept serving")

		code, out, errs := runEnv(t, vars, "audit", "verify", "--db", dsn, "--data", filepath.Join(dir, "b"))
		require.Equal(t, 0, code, "audit verify: %s %s", out, errs)
		require.Regexp(t, regexp.MustCompile(`(?i)ok|verified`), out)
	})
}

// runEnv runs one CLI command in process with AGENTOTP_ variables
// (KEY=VALUE) as its environment.
func runEnv(t *testing.T, vars []string, args ...string) (int, string, string) {
	t.Helper()
	m := map[string]string{}
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	withEnv(t, m)
	return run(t, args...)
}
