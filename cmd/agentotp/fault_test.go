//go:build linux

package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const faultPolicies = `
- name: fault tests auto-approve
  conditions:
    action: {startsWith: auto.}
  action: auto_approve
`

// faultSetup makes a data directory with agents (created before any server
// runs) and the policy file, and returns the agents' keys.
func faultSetup(t *testing.T, agents int) (data, policies string, keys []string) {
	t.Helper()
	withEnv(t, nil)
	dir := t.TempDir()
	data, policies = filepath.Join(dir, "data"), filepath.Join(dir, "policies.yaml")
	require.NoError(t, os.WriteFile(policies, []byte(faultPolicies), 0o600))
	for i := range agents {
		code, out, errs := run(t, "agents", "create", fmt.Sprintf("agent-%d", i), "--data", data)
		require.Equal(t, 0, code, errs)
		keys = append(keys, regexp.MustCompile(`ak_\S+`).FindString(out))
	}
	return data, policies, keys
}

// openDB opens a stopped server's database for the final checks.
func openDB(t *testing.T, data string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(data, "agentotp.db")+"?mode=ro")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// useEvents counts the audit trail's use events per permission.
func useEvents(t *testing.T, db *sql.DB) map[string]int {
	t.Helper()
	rows, err := db.Query(`SELECT permission_id, count(*) FROM audit_events WHERE type = 'use' GROUP BY permission_id`)
	require.NoError(t, err)
	defer rows.Close()
	n := map[string]int{}
	for rows.Next() {
		var id string
		var c int
		require.NoError(t, rows.Scan(&id, &c))
		n[id] = c
	}
	require.NoError(t, rows.Err())
	return n
}

func permissionIDs(t *testing.T, db *sql.DB) map[string]bool {
	t.Helper()
	rows, err := db.Query(`SELECT id FROM permissions`)
	require.NoError(t, err)
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		ids[id] = true
	}
	require.NoError(t, rows.Err())
	return ids
}

func auditVerifies(t *testing.T, data string) {
	t.Helper()
	code, out, errs := run(t, "audit", "verify", "--data", data)
	require.Equal(t, 0, code, "%s%s", out, errs)
	require.Contains(t, out, "audit chain OK")
}

// ackedPerm is what an agent was told about one of its requests.
type ackedPerm struct {
	key, token string
	pending    bool // 202: waits for a human
	used       bool // a use was answered with success
}

// TestKillNineUnderLoad kills the server with SIGKILL while many agents run
// request → use cycles through HTTP, twice, and restarts it on the same
// data: every request the server acknowledged is there, no token is spent
// twice (not even by replaying every token after the restart), and the
// audit chain verifies.
func TestKillNineUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs load")
	}
	bin := plainAgentotp(t)
	data, policies, keys := faultSetup(t, 8)
	c := newAPIClient()

	var mu sync.Mutex
	acked := map[string]*ackedPerm{}
	var unexpected []string
	for round := range 2 {
		srv := startServe(t, bin, "--data", data, "--policies", policies)
		var cycles atomic.Int64
		var wg sync.WaitGroup
		for w := range 16 {
			key := keys[w%len(keys)]
			wg.Go(func() {
				for i := 0; ; i++ {
					// Mostly two-call cycles; some spend with the request,
					// some wait for a human (at most 20 per worker).
					body := map[string]any{"action": "auto.cycle", "scope": map[string]any{"max_items": 1}}
					oneCall, ask := i%8 == 3, i%8 == 7 && i < 160
					switch {
					case oneCall:
						body["use"] = map[string]any{"actionDetails": map[string]any{"items": 1}}
					case ask:
						body["action"] = "ask.human"
					}
					status, r, err := c.do(context.Background(), "POST", srv.url+"/api/v1/permissions/request", key, body)
					if err != nil {
						return // the server is gone
					}
					var p wirePerm
					_ = json.Unmarshal(r.Data, &p)
					want := http.StatusCreated
					if ask {
						want = http.StatusAccepted
					}
					if status != want || p.ID == "" {
						mu.Lock()
						unexpected = append(unexpected, fmt.Sprintf("request: HTTP %d %+v", status, r.Error))
						mu.Unlock()
						return
					}
					a := &ackedPerm{key: key, token: p.Token, pending: ask, used: oneCall && p.Use != nil && p.Use.Success}
					mu.Lock()
					acked[p.ID] = a
					mu.Unlock()
					if ask || oneCall {
						continue
					}
					status, r, err = c.do(context.Background(), "POST", srv.url+"/api/v1/permissions/"+p.ID+"/use", key,
						map[string]any{"token": p.Token, "actionDetails": map[string]any{"items": 1}})
					if err != nil {
						return
					}
					var u struct{ Success bool }
					_ = json.Unmarshal(r.Data, &u)
					if status != http.StatusOK || !u.Success {
						mu.Lock()
						unexpected = append(unexpected, fmt.Sprintf("use: HTTP %d %+v", status, r.Error))
						mu.Unlock()
						return
					}
					mu.Lock()
					a.used = true
					mu.Unlock()
					cycles.Add(1)
				}
			})
		}
		// Kill once the load is in full swing, with requests in flight.
		require.Eventually(t, func() bool { return cycles.Load() >= 300 || !srv.running() }, 30*time.Second, 5*time.Millisecond)
		srv.kill9(t)
		wg.Wait()
		require.Empty(t, unexpected, "round %d: every answer before the kill is right", round)
		t.Logf("round %d: killed after %d acknowledged cycles", round, cycles.Load())
	}

	srv := startServe(t, bin, "--data", data, "--policies", policies)
	// Replay every token. One whose use was acknowledged is spent; one
	// whose use may have been cut off by the kill is spent now at most.
	type replay struct {
		id      string
		success []bool
	}
	results := make(chan replay, len(acked))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for id, a := range acked {
		if a.pending || a.token == "" {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := replay{id: id}
			for range 2 {
				var u struct{ Success bool }
				c.must(t, "POST", srv.url+"/api/v1/permissions/"+id+"/use", a.key, map[string]any{"token": a.token, "actionDetails": map[string]any{"items": 1}}, http.StatusOK, &u)
				r.success = append(r.success, u.Success)
			}
			results <- r
		})
	}
	wg.Wait()
	close(results)
	spentNow := map[string]bool{}
	for r := range results {
		a := acked[r.id]
		require.False(t, r.success[1], "%s: a second replay after the restart", r.id)
		if a.used {
			require.False(t, r.success[0], "%s: its use was acknowledged before the kill", r.id)
		}
		spentNow[r.id] = r.success[0]
	}
	for id, a := range acked {
		if a.pending {
			var p wirePerm
			c.must(t, "GET", srv.url+"/api/v1/permissions/"+id, a.key, nil, http.StatusOK, &p)
			require.Equal(t, "pending", p.Status, id)
		}
	}
	srv.stop(t, true)

	db := openDB(t, data)
	present, uses := permissionIDs(t, db), useEvents(t, db)
	for id, n := range uses {
		require.LessOrEqual(t, n, 1, "%s: token used %d times", id, n)
	}
	for id, a := range acked {
		require.True(t, present[id], "%s: acknowledged, then lost", id)
		switch {
		case a.used || spentNow[id]:
			require.Equal(t, 1, uses[id], "%s: an acknowledged use is in the trail once", id)
		case !a.pending:
			// Unacknowledged use (cut off by the kill), refused on replay:
			// it had been committed.
			require.Equal(t, 1, uses[id], "%s: a refused replay means the cut-off use was committed", id)
		}
	}
	t.Logf("%d acknowledged permissions, %d use events, %d tokens first spent after the restart", len(acked), len(uses), countTrue(spentNow))
	auditVerifies(t, data)
}

func countTrue(m map[string]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}

// TestStorageRefusesWrites makes the server's storage refuse writes while it
// serves, by lowering its file size limit: requests, decisions and uses
// answer 503 SERVICE_UNAVAILABLE in the documented envelope, nothing is
// approved or spent, reads and the process go on, and everything works
// again once the storage takes writes. A real full disk (ENOSPC) needs a
// small file system, which needs root; SQLite reports it as SQLITE_FULL
// where this emulation gives a write I/O error, and the store maps both.
func TestStorageRefusesWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := plainAgentotp(t)
	cases := []struct {
		name string
		// fill sends auto-approved requests until the storage refuses;
		// otherwise every write is refused from the start, as on a file
		// system remounted read-only.
		fill bool
	}{
		{name: "read-only from the start"},
		{name: "fills up under load", fill: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, policies, keys := faultSetup(t, 1)
			key := keys[0]
			srv := startServe(t, bin, "--data", data, "--policies", policies)
			admin, err := os.ReadFile(filepath.Join(data, "admin.key"))
			require.NoError(t, err)
			adminKey := string(regexp.MustCompile(`uk_\S+`).Find(admin))
			c := newAPIClient()
			u := srv.url + "/api/v1/permissions"

			var pending, approved wirePerm
			c.must(t, "POST", u+"/request", key, map[string]any{"action": "ask.human"}, http.StatusAccepted, &pending)
			c.must(t, "POST", u+"/request", key, map[string]any{"action": "auto.one", "scope": map[string]any{"max_items": 1}}, http.StatusCreated, &approved)
			acked := map[string]bool{pending.ID: true, approved.ID: true}

			unavailable := func(t *testing.T, what string, status int, r apiResp) {
				t.Helper()
				require.Equal(t, http.StatusServiceUnavailable, status, "%s: %+v %s", what, r.Error, r.Data)
				require.False(t, r.Success)
				require.NotNil(t, r.Error)
				require.Equal(t, "SERVICE_UNAVAILABLE", r.Error.Code)
				require.NotEmpty(t, r.Error.Message)
				require.NotContains(t, r.Error.Message, "sqlite", "the cause goes to the log, not to clients")
				require.Empty(t, r.Data)
			}

			if tc.fill {
				// Near a full disk, small writes may still fit after a large
				// one failed: every answer is right, refused or not.
				srv.setFileSizeLimit(t, largestFile(t, data)+256<<10)
				refused := fill(t, c, u+"/request", key, acked)
				unavailable(t, "the first refused request", refused.status, refused.resp)
			} else {
				srv.setFileSizeLimit(t, 0)
				for name, req := range map[string]struct {
					url, key string
					body     any
				}{
					"request":           {u + "/request", key, map[string]any{"action": "auto.two"}},
					"request with use":  {u + "/request", key, map[string]any{"action": "auto.three", "use": map[string]any{"actionDetails": map[string]any{}}}},
					"request to decide": {u + "/request", key, map[string]any{"action": "ask.again"}},
					"decide":            {u + "/" + pending.ID + "/decide", adminKey, map[string]any{"approved": true}},
					"use":               {u + "/" + approved.ID + "/use", key, map[string]any{"token": approved.Token, "actionDetails": map[string]any{"items": 1}}},
				} {
					status, r, err := c.do(context.Background(), "POST", req.url, req.key, req.body)
					require.NoError(t, err, name)
					unavailable(t, name, status, r)
				}
				var p wirePerm
				c.must(t, "GET", u+"/"+pending.ID, key, nil, http.StatusOK, &p)
				require.Equal(t, "pending", p.Status, "the refused decision did not happen")
			}
			// Reads go on, and the server stays up.
			c.must(t, "GET", u+"/"+approved.ID, key, nil, http.StatusOK, nil)
			c.must(t, "GET", srv.url+"/health", "", nil, http.StatusOK, nil)
			require.True(t, srv.running())

			srv.setFileSizeLimit(t, noLimit)
			var again wirePerm
			require.Eventually(t, func() bool {
				status, r, err := c.do(context.Background(), "POST", u+"/request", key, map[string]any{"action": "auto.after"})
				if err == nil && status == http.StatusCreated {
					require.NoError(t, json.Unmarshal(r.Data, &again))
					return true
				}
				return false
			}, 10*time.Second, 50*time.Millisecond, "the server recovers once writes succeed")
			acked[again.ID] = true
			c.must(t, "POST", u+"/"+pending.ID+"/decide", adminKey, map[string]any{"approved": true}, http.StatusOK, nil)
			var p wirePerm
			c.must(t, "GET", u+"/"+pending.ID, key, nil, http.StatusOK, &p)
			require.Equal(t, "approved", p.Status)
			var used struct {
				Success bool
				Reason  string
			}
			c.must(t, "POST", u+"/"+approved.ID+"/use", key, map[string]any{"token": approved.Token, "actionDetails": map[string]any{"items": 1}}, http.StatusOK, &used)
			require.True(t, used.Success, "the refused use spent nothing: %s", used.Reason)
			srv.stop(t, true)

			db := openDB(t, data)
			present := permissionIDs(t, db)
			for id := range acked {
				require.True(t, present[id], "%s: acknowledged, then lost", id)
			}
			require.Len(t, present, len(acked), "every refused request left nothing behind")
			require.Equal(t, map[string]int{approved.ID: 1}, useEvents(t, db))
			var approvals int
			require.NoError(t, db.QueryRow(`SELECT count(*) FROM audit_events WHERE type = 'approve' AND permission_id = ?`, pending.ID).Scan(&approvals))
			require.Equal(t, 1, approvals, "approved once, after the storage recovered")
			auditVerifies(t, data)
		})
	}
}

// largestFile is the size of the largest file in dir (the database or its
// write-ahead log).
func largestFile(t *testing.T, dir string) uint64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var n int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n = max(n, fi.Size())
		}
	}
	return uint64(n)
}

type refusal struct {
	status int
	resp   apiResp
}

// fill sends auto-approved requests from 8 workers until the storage has
// refused 50 of them; every answer must be 201 (added to acked) or 503.
// Workers finish the request in hand before stopping, so that every
// request sent has its answer.
func fill(t *testing.T, c *apiClient, url, key string, acked map[string]bool) refusal {
	t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	var mu sync.Mutex
	var refused []refusal
	var bad error
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for !stop.Load() && time.Now().Before(deadline) {
				status, r, err := c.do(context.Background(), "POST", url, key, map[string]any{"action": "auto.fill",
					"context": map[string]any{"note": "filler to grow the database by a few pages per request"}})
				mu.Lock()
				switch {
				case err != nil:
					bad = err
				case status == http.StatusCreated:
					var p wirePerm
					_ = json.Unmarshal(r.Data, &p)
					acked[p.ID] = true
				case status == http.StatusServiceUnavailable:
					refused = append(refused, refusal{status, r})
				default:
					bad = fmt.Errorf("HTTP %d %+v: want 201 or 503", status, r.Error)
				}
				if len(refused) >= 50 || bad != nil {
					stop.Store(true)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.NoError(t, bad)
	require.NotEmpty(t, refused, "the storage never filled up")
	t.Logf("%d requests acknowledged, %d refused", len(acked)-2, len(refused))
	return refused[0]
}
