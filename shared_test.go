package agentotp_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// sharedStore stands for a store several instances share: its change feed
// and lease are driven by the test.
type sharedStore struct {
	agentotp.Store
	mu    sync.Mutex
	feeds []func(agentotp.PermissionID)
	held  atomic.Bool
	runs  atomic.Int32
}

func (s *sharedStore) WatchPermissions(ctx context.Context, fn func(agentotp.PermissionID)) error {
	s.mu.Lock()
	s.feeds = append(s.feeds, fn)
	s.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}

func (s *sharedStore) notify(id agentotp.PermissionID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fn := range s.feeds {
		fn(id)
	}
}

func (s *sharedStore) Lead(ctx context.Context, _ string, retry time.Duration, fn func(context.Context)) error {
	for ctx.Err() == nil {
		if s.held.Load() {
			s.runs.Add(1)
			fn(ctx)
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
	return ctx.Err()
}

var (
	_ agentotp.ChangeFeed = (*sharedStore)(nil)
	_ agentotp.Leaser     = (*sharedStore)(nil)
)

// A decision made by another instance wakes this one's long-poll through
// the change feed, long before its periodic re-read (an hour here).
func TestChangeFeedWakesWaiters(t *testing.T) {
	f := newFixture(t)
	shared := &sharedStore{Store: f.store}
	here := agentotp.NewService(shared, agentotp.Options{Clock: f.clock.Now, WaitPoll: time.Hour})
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	go func() { _ = here.RunChangeFeed(ctx) }()
	require.Eventually(t, func() bool { shared.mu.Lock(); defer shared.mu.Unlock(); return len(shared.feeds) == 1 }, 5*time.Second, time.Millisecond)

	a := f.agent("a")
	alice := f.approver("alice")
	for _, lost := range []bool{false, true} {
		perm, _, err := here.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
		require.NoError(t, err)
		go func() {
			time.Sleep(50 * time.Millisecond)
			_, _ = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true}) // the other instance
			if lost {
				shared.notify("") // notifications were lost: everyone re-reads
			} else {
				shared.notify(perm.ID)
			}
		}()
		start := time.Now()
		got, tok, err := here.GetPermission(f.ctx, a, perm.ID, 30*time.Second)
		require.NoError(t, err)
		require.Less(t, time.Since(start), 5*time.Second)
		require.Equal(t, agentotp.StatusApproved, got.Status)
		require.NotEmpty(t, tok.Reveal())
	}
	require.NoError(t, agentotp.NewService(f.store, agentotp.Options{}).RunChangeFeed(ctx), "no feed: returns at once")
}

// On a shared store only the lease holder expires permissions.
func TestSweeperExpiresOnlyUnderLease(t *testing.T) {
	f := newFixture(t)
	shared := &sharedStore{Store: f.store}
	svc := agentotp.NewService(shared, agentotp.Options{Clock: f.clock.Now})
	a := f.agent("a")
	perm, _, err := svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", ApprovalTTL: time.Minute})
	require.NoError(t, err)
	f.clock.Add(2 * time.Minute)

	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	go svc.RunSweeper(ctx, 20*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	got, err := f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusPending, got.Status, "not the leader: nothing expired")
	require.Zero(t, shared.runs.Load())

	shared.held.Store(true)
	require.Eventually(t, func() bool {
		got, err := f.store.Permission(f.ctx, perm.ID)
		return err == nil && got.Status == agentotp.StatusExpired
	}, 5*time.Second, 10*time.Millisecond, "the leader expires")
}

// reloadCounter is an evaluator that counts reloads of API rules.
type reloadCounter struct {
	agentotp.RequireApprovalEvaluator
	n atomic.Int32
}

func (r *reloadCounter) Reload(context.Context) error { r.n.Add(1); return nil }

// A rule changed through another process sharing the store (a second
// instance, the CLI) is reloaded here at the next sweep.
func TestPolicyChangesElsewhereAreReloaded(t *testing.T) {
	f := newFixture(t)
	eval := &reloadCounter{}
	here := agentotp.NewService(f.store, agentotp.Options{Clock: f.clock.Now, Evaluator: eval})
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	go here.RunSweeper(ctx, 20*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, int32(1), eval.n.Load(), "the first look reloads once, for a change made since the rules were loaded; then nothing changed")

	pol, err := f.svc.CreatePolicy(f.ctx, f.admin, &agentotp.Policy{Name: "elsewhere", Effect: agentotp.EffectAutoApprove, Active: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return eval.n.Load() == 2 }, 5*time.Second, 10*time.Millisecond, "a create elsewhere")
	_, err = f.svc.UpdatePolicy(f.ctx, f.admin, &agentotp.Policy{ID: pol.ID, Name: "elsewhere", Effect: agentotp.EffectDeny, Active: true})
	require.NoError(t, err)
	require.NoError(t, f.svc.DeletePolicy(f.ctx, f.admin, pol.ID))
	require.Eventually(t, func() bool { return eval.n.Load() >= 3 }, 5*time.Second, 10*time.Millisecond, "an update and a delete")
	time.Sleep(100 * time.Millisecond)
	n := eval.n.Load()
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, n, eval.n.Load(), "no reload without a change")
}

// countingNotifier counts what it is told.
type countingNotifier struct{ pending, resolved atomic.Int32 }

func (n *countingNotifier) NotifyPending(context.Context, *agentotp.Permission, *agentotp.Agent) error {
	n.pending.Add(1)
	return nil
}

func (n *countingNotifier) NotifyResolved(context.Context, *agentotp.Permission) error {
	n.resolved.Add(1)
	return nil
}

// The notifiers hear how a request that waited for a person ended, not of
// every policy-approved call spent at once.
func TestNotifiersHearOfRequestsThatWaited(t *testing.T) {
	f := newFixture(t)
	n := &countingNotifier{}
	svc := agentotp.NewService(f.store, agentotp.Options{Clock: f.clock.Now, Notifier: n,
		Evaluator: agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
			if in.Action == "auto" {
				return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "auto"}, nil
			}
			return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "human"}, nil
		})})
	a := f.agent("a")
	_, _, used, err := svc.RequestAndUse(f.ctx, a, agentotp.PermissionRequest{Action: "auto"}, nil)
	require.NoError(t, err)
	require.True(t, used.Success)

	perm, _, err := svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "human"})
	require.NoError(t, err)
	_, err = svc.Decide(f.ctx, f.admin, perm.ID, agentotp.DecideInput{Approved: false, Reason: "no"})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return n.pending.Load() == 1 && n.resolved.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	require.EqualValues(t, 1, n.resolved.Load(), "the auto-approved call was not announced")
}
