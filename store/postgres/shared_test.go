package postgres_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// terminate ends the server sessions named app (pg_stat_activity's
// application_name) and reports how many it ended.
func terminate(t *testing.T, dsn, app string) int {
	t.Helper()
	var n int
	require.NoError(t, raw(t, dsn).QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, app).Scan(&n))
	return n
}

// watcher collects what WatchPermissions reports.
type watcher struct {
	ids  chan agentotp.PermissionID
	done chan error
}

func watch(t *testing.T, s *postgres.Store) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{ids: make(chan agentotp.PermissionID, 1000), done: make(chan error, 1)}
	go func() { w.done <- s.WatchPermissions(ctx, func(id agentotp.PermissionID) { w.ids <- id }) }()
	t.Cleanup(func() {
		cancel()
		require.ErrorIs(t, <-w.done, context.Canceled)
	})
	return w
}

// next waits up to d for id (skipping others) and reports how long it took.
func (w *watcher) next(t *testing.T, want agentotp.PermissionID, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(d)
	for {
		select {
		case id := <-w.ids:
			if id == want {
				return time.Since(start)
			}
		case <-deadline:
			t.Fatalf("no notification %q within %v", want, d)
		}
	}
}

func awaitListening(t *testing.T, dsn string) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		err := raw(t, dsn).QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'agentotp-listen' AND query LIKE 'LISTEN%'`).Scan(&n)
		return err == nil && n > 0
	}, 5*time.Second, 10*time.Millisecond)
}

func TestWatchPermissions(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	a, b := open(t, dsn, postgres.Options{}), open(t, dsn, postgres.Options{})
	agent := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "watched", KeyHash: "h"}
	require.NoError(t, a.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, agent) }))
	w := watch(t, b)
	awaitListening(t, dsn)

	change := func(s *postgres.Store, st agentotp.Status) agentotp.PermissionID {
		p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Status: st, Uses: 1}
		require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreatePermission(ctx, p) }))
		return p.ID
	}

	t.Run("a change on another instance arrives within a second", func(t *testing.T) {
		id := change(a, agentotp.StatusPending)
		took := w.next(t, id, time.Second)
		t.Logf("notified after %v", took)
		// Updates notify too, and a rolled-back change does not.
		require.NoError(t, a.Update(ctx, func(tx agentotp.Tx) error {
			p, err := tx.Permission(ctx, id)
			if err != nil {
				return err
			}
			p.Status = agentotp.StatusDenied
			return tx.UpdatePermission(ctx, p, agentotp.StatusPending)
		}))
		w.next(t, id, time.Second)
		ghost := agentotp.NewPermissionID()
		_ = a.Update(ctx, func(tx agentotp.Tx) error {
			_ = tx.CreatePermission(ctx, &agentotp.Permission{ID: ghost, AgentID: agent.ID, Status: agentotp.StatusPending})
			return context.Canceled
		})
		after := change(a, agentotp.StatusPending)
		for id := range w.ids {
			require.NotEqual(t, ghost, id, "a rolled-back change is never announced")
			if id == after {
				break
			}
		}
	})

	t.Run("a lost connection reconnects and asks for a re-read", func(t *testing.T) {
		require.Equal(t, 1, terminate(t, dsn, "agentotp-listen"))
		w.next(t, "", 5*time.Second)
		awaitListening(t, dsn)
		id := change(a, agentotp.StatusPending)
		w.next(t, id, time.Second)
	})

	t.Run("close ends the watch", func(t *testing.T) {
		s, err := postgres.Open(ctx, dsn, postgres.Options{})
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { done <- s.WatchPermissions(ctx, func(agentotp.PermissionID) {}) }()
		require.NoError(t, s.Close())
		select {
		case err := <-done:
			require.ErrorIs(t, err, agentotp.ErrUnavailable)
		case <-time.After(5 * time.Second):
			t.Fatal("WatchPermissions still runs after Close")
		}
	})
}

// killLeader ends the server session that holds a lease, as a crash of
// the leader's host or a failover would, and reports how many it ended.
func killLeader(t *testing.T, dsn string) int {
	t.Helper()
	var n int
	require.NoError(t, raw(t, dsn).QueryRow(context.Background(), `SELECT count(pg_terminate_backend(l.pid))
		FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'agentotp-lease'
		AND a.datname = current_database()`).Scan(&n))
	return n
}

// TestLead runs one lease on three stores sharing a database and checks
// that exactly one runs the job at any time, through hand-overs: the
// leader's session killed by the server, the leader's store closed, the
// leader's caller leaving.
func TestLead(t *testing.T) {
	const retry = 100 * time.Millisecond
	dsn := pgtest.NewDatabase(t)
	var (
		running  atomic.Int32
		overlaps atomic.Int32
		mu       sync.Mutex
		leader   = -1
		terms    []int
	)
	type instance struct {
		s      *postgres.Store
		cancel context.CancelFunc
		done   chan error
	}
	start := func(i int) *instance {
		s, err := postgres.Open(context.Background(), dsn, postgres.Options{})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		in := &instance{s: s, cancel: cancel, done: make(chan error, 1)}
		go func() {
			in.done <- s.Lead(ctx, "sweeper", retry, func(ctx context.Context) {
				if running.Add(1) > 1 {
					overlaps.Add(1)
				}
				mu.Lock()
				leader = i
				terms = append(terms, i)
				mu.Unlock()
				<-ctx.Done()
				mu.Lock()
				leader = -1
				mu.Unlock()
				running.Add(-1)
			})
		}()
		return in
	}
	instances := []*instance{start(0), start(1), start(2)}
	stopped := map[int]bool{}
	t.Cleanup(func() {
		for i, in := range instances {
			in.cancel()
			if !stopped[i] {
				<-in.done
			}
			_ = in.s.Close()
		}
	})
	state := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return leader, len(terms)
	}
	// awaitTerm waits for a term after the first n, by another instance than
	// not, and returns its leader.
	awaitTerm := func(n, not int) int {
		var l, got int
		require.Eventually(t, func() bool { l, got = state(); return got > n && l >= 0 && l != not },
			20*retry+2*time.Second, 5*time.Millisecond)
		return l
	}

	l := awaitTerm(0, -1)
	time.Sleep(3 * retry)
	_, n := state()
	require.Equal(t, 1, n, "the leader keeps the lease while its session lives")

	for range 5 {
		_, n := state()
		began := time.Now()
		require.Equal(t, 1, killLeader(t, dsn))
		l = awaitTerm(n, -1)
		t.Logf("leader's session killed: instance %d leads after %v", l, time.Since(began))
	}

	// The leader's store closes (its process stops): another takes over.
	_, n = state()
	began := time.Now()
	require.NoError(t, instances[l].s.Close())
	next := awaitTerm(n, l)
	require.ErrorIs(t, <-instances[l].done, agentotp.ErrUnavailable)
	stopped[l] = true
	t.Logf("leader closed: instance %d leads after %v", next, time.Since(began))
	require.Less(t, time.Since(began), 10*retry+time.Second, "hand-over within a few retries")

	// The leader's caller stops leading (serve shutting down).
	_, n = state()
	instances[next].cancel()
	require.ErrorIs(t, <-instances[next].done, context.Canceled)
	stopped[next] = true
	awaitTerm(n, next)

	require.Zero(t, overlaps.Load(), "two instances ran the job at once; terms: %v", terms)
}

// A job that returns while its instance still holds the lease runs again
// after retry, on the same instance; separate names lead separately.
func TestLeadRerunsAndNamesAreSeparate(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, b := open(t, dsn, postgres.Options{}), open(t, dsn, postgres.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var runsA, runsB atomic.Int32
	doneA, doneB := make(chan error, 1), make(chan error, 1)
	go func() { doneA <- a.Lead(ctx, "one", 20*time.Millisecond, func(context.Context) { runsA.Add(1) }) }()
	go func() { doneB <- b.Lead(ctx, "two", 20*time.Millisecond, func(context.Context) { runsB.Add(1) }) }()
	require.Eventually(t, func() bool { return runsA.Load() >= 3 && runsB.Load() >= 3 }, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-doneA, context.Canceled)
	require.ErrorIs(t, <-doneB, context.Canceled)
}
