package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestConcurrentUse: 200 goroutines spend one single-use token through
// HTTP; exactly one succeeds.
func TestConcurrentUse(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("racer")
	p := e.grant(agent.Key, nil)

	const n = 200
	var (
		wins, losses atomic.Int32
		wg           sync.WaitGroup
		start        = make(chan struct{})
		errs         = make(chan error, n)
	)
	for range n {
		wg.Go(func() {
			<-start
			r, err := e.try(context.Background(), "POST", "/api/v1/permissions/"+p.ID+"/use", agent.Key,
				map[string]any{"token": p.Token})
			if err != nil {
				errs <- err
				return
			}
			var env struct {
				Success bool    `json:"success"`
				Data    useView `json:"data"`
			}
			if r.Status != http.StatusOK || json.Unmarshal(r.Body, &env) != nil || !env.Success {
				errs <- &unexpected{r}
				return
			}
			if env.Data.Success {
				wins.Add(1)
			} else {
				losses.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, 1, wins.Load(), "exactly one use may succeed")
	require.EqualValues(t, n-1, losses.Load())

	ev := e.auditOf(p.ID)
	counts := map[string]int{}
	for _, x := range ev {
		counts[x.EventType]++
	}
	require.Equal(t, 1, counts["use"])
	require.Equal(t, n-1, counts["use_rejected"], "every refused use is audited")
}

// TestConcurrentMultiUse: 50 goroutines on a 5-use token → exactly 5.
func TestConcurrentMultiUse(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("multi")
	p := e.grant(agent.Key, map[string]any{"uses": 5})
	var wins atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 50 {
		wg.Go(func() {
			<-start
			r, err := e.try(context.Background(), "POST", "/api/v1/permissions/"+p.ID+"/use", agent.Key,
				map[string]any{"token": p.Token})
			if err != nil || r.Status != http.StatusOK {
				return
			}
			var env struct {
				Data useView `json:"data"`
			}
			if json.Unmarshal(r.Body, &env) == nil && env.Data.Success {
				wins.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	require.EqualValues(t, 5, wins.Load())
	var got permView
	e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &got)
	require.Equal(t, "used", got.Status)
	require.Equal(t, 0, *got.UsesRemaining)
}

// TestConcurrentDecide: two deciders released at the same instant; one
// wins, the other gets 409, and both attempts are in the audit.
func TestConcurrentDecide(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("decided")
	alice := e.createUser("alice", "approver")
	bob := e.createUser("bob", "approver")

	for round := range 20 {
		p := e.pending(agent.Key, "deploy.prod")
		// Alternate approve/deny pairs and same-verdict pairs.
		votes := []struct {
			key      string
			approved bool
		}{{alice.Key, true}, {bob.Key, round%2 == 0}}
		var (
			wg     sync.WaitGroup
			start  = make(chan struct{})
			status [2]int
			errs   [2]error
		)
		for i, v := range votes {
			wg.Go(func() {
				<-start
				r, err := e.try(context.Background(), "POST", "/api/v1/permissions/"+p.ID+"/decide", v.key,
					map[string]any{"approved": v.approved, "reason": "race"})
				status[i], errs[i] = r.Status, err
			})
		}
		close(start)
		wg.Wait()
		require.NoError(t, errs[0])
		require.NoError(t, errs[1])
		require.ElementsMatch(t, []int{http.StatusOK, http.StatusConflict}, status[:], "round %d", round)

		ev := eventTypes(e.auditOf(p.ID))
		require.Len(t, ev, 3, "round %d: %v", round, ev)
		require.Equal(t, "request", ev[0])
		require.Contains(t, []string{"approve", "deny"}, ev[1], "round %d: %v", round, ev)
		require.Equal(t, "decide_rejected", ev[2], "round %d: %v", round, ev)

		// The stored outcome is the winner's.
		winner := 0
		if status[1] == http.StatusOK {
			winner = 1
		}
		var got permView
		e.do("GET", "/api/v1/permissions/"+p.ID, e.adminKey, nil).data(t, http.StatusOK, &got)
		want := "denied"
		if votes[winner].approved {
			want = "approved"
		}
		require.Equal(t, want, got.Status, "round %d", round)
	}
}

type unexpected struct{ r resp }

func (u *unexpected) Error() string { return "unexpected response " + string(u.r.Body) }
