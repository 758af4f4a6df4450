package agentotp_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

// fakeClock is a movable clock: tests move time instead of sleeping.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	t     *testing.T
	ctx   context.Context
	store agentotp.Store
	svc   *agentotp.Service
	clock *fakeClock
	admin agentotp.Principal
	// adminKey is the bootstrap admin's key.
	adminKey agentotp.Secret
	eff      atomic.Int32 // the effect the test evaluator returns
}

func newFixture(t *testing.T, mods ...func(*agentotp.Options)) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, ctx: ctx, store: st, clock: &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}}
	f.eff.Store(int32(agentotp.EffectRequireApproval))
	opts := agentotp.Options{
		Clock: f.clock.Now, WaitPoll: 20 * time.Millisecond,
		Evaluator: agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.Effect(f.eff.Load()), Rule: "test"}, nil
		}),
	}
	for _, m := range mods {
		m(&opts)
	}
	f.svc = agentotp.NewService(st, opts)
	key := agentotp.NewUserKey()
	_, err = f.svc.EnsureAdmin(ctx, key)
	require.NoError(t, err)
	f.admin, err = f.svc.Authenticate(ctx, key.Reveal())
	require.NoError(t, err)
	f.adminKey = key
	return f
}

// second creates another admin and returns it.
func (f *fixture) second() agentotp.Principal {
	f.t.Helper()
	u, _, err := f.svc.CreateUser(f.ctx, f.admin, agentotp.UserInput{Name: "second-admin", Role: agentotp.RoleAdmin})
	require.NoError(f.t, err)
	return agentotp.Principal{User: u}
}

func (f *fixture) agent(name string) agentotp.Principal {
	f.t.Helper()
	_, key, err := f.svc.CreateAgent(f.ctx, f.admin, agentotp.AgentInput{Name: name})
	require.NoError(f.t, err)
	p, err := f.svc.Authenticate(f.ctx, key.Reveal())
	require.NoError(f.t, err)
	return p
}

func (f *fixture) approver(name string) agentotp.Principal {
	f.t.Helper()
	_, key, err := f.svc.CreateUser(f.ctx, f.admin, agentotp.UserInput{Name: name, Role: agentotp.RoleApprover})
	require.NoError(f.t, err)
	p, err := f.svc.Authenticate(f.ctx, key.Reveal())
	require.NoError(f.t, err)
	return p
}

// granted returns an auto-approved permission with uses uses and its token.
func (f *fixture) granted(p agentotp.Principal, uses int) (*agentotp.Permission, string) {
	f.t.Helper()
	prev := f.eff.Swap(int32(agentotp.EffectAutoApprove))
	defer f.eff.Store(prev)
	perm, tok, err := f.svc.RequestPermission(f.ctx, p, agentotp.PermissionRequest{Action: "gmail.send", Uses: uses})
	require.NoError(f.t, err)
	require.Equal(f.t, agentotp.StatusApproved, perm.Status)
	require.NotEmpty(f.t, tok.Reveal())
	return perm, tok.Reveal()
}

func (f *fixture) events(id agentotp.PermissionID) []agentotp.EventType {
	f.t.Helper()
	list, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{PermissionID: id, Ascending: true, Limit: 100})
	require.NoError(f.t, err)
	var out []agentotp.EventType
	for _, e := range list {
		out = append(out, e.Type)
	}
	return out
}

// A refused use keeps small details in the audit trail, and only the
// SHA-256 and size of large ones: refusals cost the agent nothing, and
// must not let it grow the trail by 64 KiB a request.
func TestRejectedUseAuditIsBounded(t *testing.T) {
	f := newFixture(t)
	f.eff.Store(int32(agentotp.EffectAutoApprove))
	a := f.agent("a")
	perm, tok := f.granted(a, 1)
	big := map[string]any{"body": strings.Repeat("x", 4000)}
	small := map[string]any{"to": "bob@example.com"}
	for _, details := range []map[string]any{small, big} {
		res, err := f.svc.Use(f.ctx, a, perm.ID, "otp_"+strings.Repeat("A", 32), details)
		require.NoError(t, err)
		require.False(t, res.Success)
	}
	// Refused in the request's own transaction too.
	_, _, used, err := f.svc.RequestAndUse(f.ctx, a, agentotp.PermissionRequest{Action: "x", Scope: map[string]any{"max_n": 1.0}},
		map[string]any{"n": 2.0, "body": strings.Repeat("y", 4000)})
	require.NoError(t, err)
	require.False(t, used.Success)

	list, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{Type: agentotp.EventUseRejected, Ascending: true, Limit: 10})
	require.NoError(t, err)
	require.Len(t, list, 3)
	require.Equal(t, small, list[0].Details["actionDetails"])
	for _, e := range list[1:] {
		require.NotContains(t, e.Details, "actionDetails")
		require.Len(t, e.Details["actionDetailsSha256"], 64)
		require.Greater(t, e.Details["actionDetailsBytes"], 4000.0)
	}
	require.Equal(t, agentotp.ArgsHash(big), list[1].Details["actionDetailsSha256"])
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok, nil)
	require.NoError(t, err)
	require.True(t, res.Success, "a refusal spends nothing: %s", res.Reason)
}

func TestTokenBinding(t *testing.T) {
	f := newFixture(t)
	a, b := f.agent("a"), f.agent("b")
	permA, tokA := f.granted(a, 1)
	permA2, tokA2 := f.granted(a, 1)
	permB, _ := f.granted(b, 1)

	use := func(p agentotp.Principal, id agentotp.PermissionID, tok string) (agentotp.UseResult, error) {
		return f.svc.Use(f.ctx, p, id, tok, nil)
	}
	// Another permission of the same agent.
	res, err := use(a, permA2.ID, tokA)
	require.NoError(t, err)
	require.False(t, res.Success)
	require.Equal(t, agentotp.ReasonTokenMismatch, res.Reason)
	// Another agent presenting a stolen token: B cannot even see A's permission.
	_, err = use(b, permA.ID, tokA)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
	res, err = use(b, permB.ID, tokA)
	require.NoError(t, err)
	require.False(t, res.Success)
	// The genuine use works once.
	res, err = use(a, permA.ID, tokA)
	require.NoError(t, err)
	require.True(t, res.Success)
	require.Equal(t, 0, res.UsesRemaining)
	res, err = use(a, permA.ID, tokA)
	require.NoError(t, err)
	require.False(t, res.Success)
	require.Equal(t, agentotp.ReasonTokenUsed, res.Reason)
	// Revoked.
	_, err = f.svc.Revoke(f.ctx, a, permA2.ID, "changed my mind")
	require.NoError(t, err)
	res, err = use(a, permA2.ID, tokA2)
	require.NoError(t, err)
	require.False(t, res.Success)
	require.Equal(t, agentotp.ReasonRevoked, res.Reason)
	// Every refusal is audited and spent nothing.
	require.Equal(t, []agentotp.EventType{agentotp.EventRequest, agentotp.EventApprove,
		agentotp.EventUseRejected, agentotp.EventRevoke, agentotp.EventUseRejected}, f.events(permA2.ID))
}

func TestTokenExpiryBoundary(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	perm, tok := f.granted(a, 3)
	exp := perm.TokenExpiresAt
	require.Equal(t, f.clock.Now().Add(agentotp.DefaultTokenTTL), exp)

	f.clock.Set(exp.Add(-time.Nanosecond))
	v, err := f.svc.Verify(f.ctx, a, perm.ID, tok)
	require.NoError(t, err)
	require.True(t, v.Valid)
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok, nil)
	require.NoError(t, err)
	require.True(t, res.Success)

	for _, at := range []time.Time{exp, exp.Add(time.Nanosecond), exp.Add(time.Hour)} {
		f.clock.Set(at)
		v, err := f.svc.Verify(f.ctx, a, perm.ID, tok)
		require.NoError(t, err)
		require.False(t, v.Valid)
		require.Equal(t, agentotp.ReasonTokenExpired, v.Reason)
		res, err := f.svc.Use(f.ctx, a, perm.ID, tok, nil)
		require.NoError(t, err)
		require.False(t, res.Success, "use at %s", at)
		got, _, err := f.svc.GetPermission(f.ctx, a, perm.ID, 0)
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusExpired, got.Status, "reads treat past-due as expired")
	}
	n, err := f.svc.ExpireDue(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	stored, err := f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusExpired, stored.Status)
	require.Equal(t, 2, stored.UsesRemaining, "the refused uses spent nothing")
}

func TestConcurrentUseThroughService(t *testing.T) {
	for _, uses := range []int{1, 5} {
		f := newFixture(t)
		a := f.agent("a")
		perm, tok := f.granted(a, uses)
		var ok atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				res, err := f.svc.Use(f.ctx, a, perm.ID, tok, nil)
				if err == nil && res.Success {
					ok.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		require.Equal(t, int32(uses), ok.Load(), "uses=%d", uses)
		got, err := f.store.Permission(f.ctx, perm.ID)
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusUsed, got.Status)
	}
}

func TestHumanApprovalDeliversTokenOnce(t *testing.T) {
	f := newFixture(t)
	a, b := f.agent("a"), f.agent("b")
	alice := f.approver("alice")
	perm, tok, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "bank.transfer", Scope: map[string]any{"amount": 50.0}})
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusPending, perm.Status)
	require.Empty(t, tok.Reveal())

	// No agent can decide, not even the requester.
	_, err = f.svc.Decide(f.ctx, a, perm.ID, agentotp.DecideInput{Approved: true})
	require.ErrorIs(t, err, agentotp.ErrForbidden)

	decided, err := f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true, ScopeModifications: map[string]any{"amount": 500.0}})
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusApproved, decided.Status)
	require.Equal(t, 50.0, decided.GrantedScope["amount"], "an approver can only narrow")

	// Staff and other agents never get the token.
	_, staffTok, err := f.svc.GetPermission(f.ctx, alice, perm.ID, 0)
	require.NoError(t, err)
	require.Empty(t, staffTok.Reveal())
	_, _, err = f.svc.GetPermission(f.ctx, b, perm.ID, 0)
	require.ErrorIs(t, err, agentotp.ErrNotFound)

	// 20 concurrent reads by the owner: exactly one carries the token.
	var got []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, tok, err := f.svc.GetPermission(f.ctx, a, perm.ID, 0)
			require.NoError(t, err)
			if tok != "" {
				mu.Lock()
				got = append(got, tok.Reveal())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, got, 1)
	_, again, err := f.svc.GetPermission(f.ctx, a, perm.ID, 0)
	require.NoError(t, err)
	require.Empty(t, again.Reveal())
	res, err := f.svc.Use(f.ctx, a, perm.ID, got[0], map[string]any{"amount": 50.0})
	require.NoError(t, err)
	require.True(t, res.Success)
}

func TestLongPollWakesOnDecision(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	alice := f.approver("alice")
	perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, _ = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: false, Reason: "no"})
	}()
	start := time.Now()
	got, tok, err := f.svc.GetPermission(f.ctx, a, perm.ID, 10*time.Second)
	require.NoError(t, err)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, agentotp.StatusDenied, got.Status)
	require.Equal(t, "no", got.DecisionReason)
	require.Empty(t, tok.Reveal())
}

func TestConcurrentDecisions(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	alice, bob := f.approver("alice"), f.approver("bob")
	for i := range 10 {
		perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
		require.NoError(t, err)
		start := make(chan struct{})
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for j, p := range []agentotp.Principal{alice, bob} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[j] = f.svc.Decide(f.ctx, p, perm.ID, agentotp.DecideInput{Approved: j == 0})
			}()
		}
		close(start)
		wg.Wait()
		wins := 0
		for _, err := range errs {
			if err == nil {
				wins++
			} else {
				require.ErrorIs(t, err, agentotp.ErrConflict, "round %d", i)
			}
		}
		require.Equal(t, 1, wins, "round %d", i)
		ev := f.events(perm.ID)
		require.Contains(t, ev, agentotp.EventDecideRejected)
		require.Len(t, ev, 3) // request, the winning decision, the rejected one
	}
}

func TestQuorumCountsDistinctApprovers(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Quorum: 2, Approvers: []string{"approver"}}, nil
		})
	})
	a := f.agent("a")
	alice, bob := f.approver("alice"), f.approver("bob")
	perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	got, err := f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusPending, got.Status)
	_, err = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true})
	require.ErrorIs(t, err, agentotp.ErrConflict, "the same approver counts once")
	got, err = f.svc.Decide(f.ctx, bob, perm.ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusApproved, got.Status)
}

// A vote counts toward a quorum only while its approver still may
// decide: disabled, deleted or demoted since, it does not make it up.
func TestQuorumCountsOnlyCurrentApprovers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		revoke func(f *fixture, id agentotp.UserID)
	}{
		{"disabled", func(f *fixture, id agentotp.UserID) {
			off := false
			_, err := f.svc.UpdateUser(f.ctx, f.admin, id, agentotp.UserPatch{Active: &off})
			require.NoError(f.t, err)
		}},
		{"no longer named by the rule", func(f *fixture, id agentotp.UserID) {
			name := "anna"
			_, err := f.svc.UpdateUser(f.ctx, f.admin, id, agentotp.UserPatch{Name: &name})
			require.NoError(f.t, err)
		}},
		{"deleted", func(f *fixture, id agentotp.UserID) {
			require.NoError(f.t, f.svc.DeleteUser(f.ctx, f.admin, id))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *agentotp.Options) {
				o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
					return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Quorum: 2, Approvers: []string{"ann", "bob", "cat"}}, nil
				})
			})
			a := f.agent("a")
			ann, bob, cat := f.approver("ann"), f.approver("bob"), f.approver("cat")
			perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
			require.NoError(t, err)
			_, err = f.svc.Decide(f.ctx, ann, perm.ID, agentotp.DecideInput{Approved: true})
			require.NoError(t, err)
			tc.revoke(f, ann.User.ID)
			got, err := f.svc.Decide(f.ctx, bob, perm.ID, agentotp.DecideInput{Approved: true})
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusPending, got.Status, "ann's vote no longer counts")
			got, err = f.svc.Decide(f.ctx, cat, perm.ID, agentotp.DecideInput{Approved: true})
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusApproved, got.Status)
		})
	}
}

func TestApproverListIsEnforced(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Approvers: []string{"alice"}}, nil
		})
	})
	a := f.agent("a")
	alice, bob := f.approver("alice"), f.approver("bob")
	perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	_, err = f.svc.Decide(f.ctx, bob, perm.ID, agentotp.DecideInput{Approved: true})
	require.ErrorIs(t, err, agentotp.ErrForbidden)
	_, err = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
}

func TestPendingExpiresAndLateApprovalFails(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	alice := f.approver("alice")
	perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", ApprovalTTL: time.Minute})
	require.NoError(t, err)
	f.clock.Add(time.Minute)
	_, err = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true})
	require.ErrorIs(t, err, agentotp.ErrConflict, "approval after the window is refused")
	n, err := f.svc.ExpireDue(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got, _, err := f.svc.GetPermission(f.ctx, a, perm.ID, 0)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusExpired, got.Status)
	require.Equal(t, "timeout", got.DecidedBy)
	require.Equal(t, []agentotp.EventType{agentotp.EventRequest, agentotp.EventDecideRejected, agentotp.EventExpire}, f.events(perm.ID))

	// An approved token that the agent never collected expires too.
	perm2, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", TTL: time.Minute})
	require.NoError(t, err)
	_, err = f.svc.Decide(f.ctx, alice, perm2.ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	f.clock.Add(time.Minute)
	_, tok, err := f.svc.GetPermission(f.ctx, a, perm2.ID, 0)
	require.NoError(t, err)
	require.Empty(t, tok.Reveal(), "no token is minted for a lapsed approval")
	n, err = f.svc.ExpireDue(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

func TestEvaluatorErrorFailsClosed(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "broken"}, errors.New("no such key: x")
		})
	})
	a := f.agent("a")
	perm, tok, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusDenied, perm.Status)
	require.Empty(t, tok.Reveal())
	list, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{PermissionID: perm.ID, Ascending: true})
	require.NoError(t, err)
	dec := list[0].Details["decision"].(map[string]any)
	require.Equal(t, "broken", dec["rule"])
	require.Contains(t, dec["error"], "no such key")
}

// failingAudit makes every AppendAudit fail, as a full disk would.
type failingAudit struct{ agentotp.Store }

type failingTx struct{ agentotp.Tx }

func (s failingAudit) Update(ctx context.Context, fn func(agentotp.Tx) error) error {
	return s.Store.Update(ctx, func(tx agentotp.Tx) error { return fn(failingTx{tx}) })
}

func (failingTx) AppendAudit(context.Context, *agentotp.AuditEvent) error {
	return errors.New("disk full")
}

func TestAuditFailureFailsTheChange(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	perm, tok := f.granted(a, 1)
	broken := agentotp.NewService(failingAudit{f.store}, agentotp.Options{Clock: f.clock.Now,
		Evaluator: agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove}, nil
		})})
	_, _, err := broken.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.Error(t, err)
	_, err = broken.Use(f.ctx, a, perm.ID, tok, nil)
	require.Error(t, err, "a use whose audit cannot be written does not happen")
	got, err := f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, 1, got.UsesRemaining)
	list, total, err := f.store.Permissions(f.ctx, agentotp.PermissionFilter{Page: agentotp.Page{Page: 1, Limit: 10}})
	require.NoError(t, err)
	require.Equal(t, 1, total)
	require.Len(t, list, 1)
}

func TestIdempotentRequest(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	req := agentotp.PermissionRequest{Action: "x", IdempotencyKey: "k-1"}
	p1, _, err := f.svc.RequestPermission(f.ctx, a, req)
	require.NoError(t, err)
	p2, _, err := f.svc.RequestPermission(f.ctx, a, req)
	require.NoError(t, err)
	require.Equal(t, p1.ID, p2.ID)
	_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "y", IdempotencyKey: "k-1"})
	require.ErrorIs(t, err, agentotp.ErrConflict)
	// The same key from another agent is another request.
	p3, _, err := f.svc.RequestPermission(f.ctx, f.agent("b"), req)
	require.NoError(t, err)
	require.NotEqual(t, p1.ID, p3.ID)
}

// TestIdempotentRetryPastLimits: a retry is answered from the permission
// its key made even when a new request would be refused (the pending cap
// or the storage quota is reached), and 100 concurrent attempts with one
// key make one permission and one audit trail.
func TestIdempotentRetryPastLimits(t *testing.T) {
	for _, limit := range []string{"pending cap", "storage quota"} {
		t.Run(limit, func(t *testing.T) {
			f := newFixture(t, func(o *agentotp.Options) {
				o.MaxPendingPerAgent = 2
				if limit == "storage quota" {
					o.MaxPendingPerAgent, o.MaxStoredBytesPerAgent = 100, 1
				}
			})
			a := f.agent("a")
			req := agentotp.PermissionRequest{Action: "x", IdempotencyKey: "k-1"}
			first, _, err := f.svc.RequestPermission(f.ctx, a, req)
			require.NoError(t, err)
			if limit == "pending cap" {
				_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "y"})
				require.NoError(t, err)
			}
			_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "z", IdempotencyKey: "k-2"})
			require.ErrorIs(t, err, agentotp.ErrRateLimited, "a new request is refused")
			again, _, err := f.svc.RequestPermission(f.ctx, a, req)
			require.NoError(t, err, "a retry is answered")
			require.Equal(t, first.ID, again.ID)
			_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "other", IdempotencyKey: "k-1"})
			require.ErrorIs(t, err, agentotp.ErrConflict, "the key with another request")
		})
	}

	t.Run("100 at once", func(t *testing.T) {
		f := newFixture(t) // requests wait for a person: a retry re-issues no token
		a := f.agent("a")
		req := agentotp.PermissionRequest{Action: "x", IdempotencyKey: "storm"}
		ids := make([]agentotp.PermissionID, 100)
		var wg sync.WaitGroup
		errs := make(chan error, len(ids))
		for i := range ids {
			wg.Go(func() {
				p, _, err := f.svc.RequestPermission(f.ctx, a, req)
				if err != nil {
					errs <- err
					return
				}
				ids[i] = p.ID
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		for _, id := range ids {
			require.Equal(t, ids[0], id, "every attempt answers with the one permission")
		}
		_, total, err := f.store.Permissions(f.ctx, agentotp.PermissionFilter{Page: agentotp.Page{Page: 1, Limit: 10}})
		require.NoError(t, err)
		require.Equal(t, 1, total)
		events, err := f.store.AuditEvents(f.ctx, agentotp.AuditFilter{PermissionID: ids[0]})
		require.NoError(t, err)
		require.Len(t, events, 1, "one request event: the retries' inserts were rolled back")
	})
}

func TestUseEnforcesScope(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Scope: map[string]any{"max_emails": 1.0, "recipient": "client@example.com"}}, nil
		})
	})
	a := f.agent("a")
	perm, tok, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "gmail.send", Uses: 2})
	require.NoError(t, err)
	for _, details := range []map[string]any{{"emails": 2.0}, {"recipient": "attacker@evil.com"}} {
		res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), details)
		require.NoError(t, err)
		require.False(t, res.Success)
		require.Contains(t, res.Reason, "outside the granted scope")
	}
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), map[string]any{"emails": 1.0, "recipient": "client@example.com"})
	require.NoError(t, err)
	require.True(t, res.Success)
	require.Equal(t, 1, res.UsesRemaining, "refused uses spent nothing")
}

func TestDisabledAgentAndWrongKeys(t *testing.T) {
	f := newFixture(t)
	_, key, err := f.svc.CreateAgent(f.ctx, f.admin, agentotp.AgentInput{Name: "a"})
	require.NoError(t, err)
	p, err := f.svc.Authenticate(f.ctx, key.Reveal())
	require.NoError(t, err)
	for _, bad := range []string{"", "ak_", agentotp.NewAgentKey().Reveal(), flipLast(key.Reveal()), "uk_" + key.Reveal()[3:]} {
		_, err := f.svc.Authenticate(f.ctx, bad)
		require.ErrorIs(t, err, agentotp.ErrUnauthorized, bad)
	}
	off := false
	_, err = f.svc.UpdateAgent(f.ctx, f.admin, p.Agent.ID, agentotp.AgentPatch{Active: &off})
	require.NoError(t, err)
	_, err = f.svc.Authenticate(f.ctx, key.Reveal())
	require.ErrorIs(t, err, agentotp.ErrForbidden)
	// Agents hold no admin powers.
	_, _, err = f.svc.CreateAgent(f.ctx, p, agentotp.AgentInput{Name: "b"})
	require.ErrorIs(t, err, agentotp.ErrForbidden)
}

func TestSystemDecidesAndSessionCollectsToken(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	sess := f.svc.AgentSession(a)
	req := agentotp.PermissionRequest{Action: "x", IdempotencyKey: "retry-me"}
	perm, tok, err := sess.Authorize(f.ctx, req, 0)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusPending, perm.Status)
	require.Empty(t, tok.Reveal())
	got, err := f.svc.Decide(f.ctx, agentotp.SystemPrincipal, perm.ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	require.Equal(t, "system", got.DecidedBy)
	// A retry with the same key finds the approval and collects the token.
	again, tok, err := sess.Authorize(f.ctx, req, 0)
	require.NoError(t, err)
	require.Equal(t, perm.ID, again.ID)
	require.True(t, agentotp.ValidTokenFormat(tok.Reveal()))
	require.NoError(t, sess.Spend(f.ctx, perm.ID, tok, nil))
	require.ErrorIs(t, sess.Spend(f.ctx, perm.ID, tok, nil), agentotp.ErrConflict)
}

// TestApproverRightsCheckedAtDecision: a user disabled or downgraded while a
// request waits can no longer decide it; keys are resolved on
// every call, so nothing stale is cached.
func TestApproverRightsCheckedAtDecision(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	_, key, err := f.svc.CreateUser(f.ctx, f.admin, agentotp.UserInput{Name: "bob", Role: agentotp.RoleApprover})
	require.NoError(t, err)
	bob, err := f.svc.Authenticate(f.ctx, key.Reveal())
	require.NoError(t, err)
	perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)

	off := false
	_, err = f.svc.UpdateUser(f.ctx, f.admin, bob.User.ID, agentotp.UserPatch{Active: &off})
	require.NoError(t, err)
	_, err = f.svc.Authenticate(f.ctx, key.Reveal())
	require.ErrorIs(t, err, agentotp.ErrForbidden, "a disabled approver's key stops working at once")

	on := true
	_, err = f.svc.UpdateUser(f.ctx, f.admin, bob.User.ID, agentotp.UserPatch{Active: &on})
	require.NoError(t, err)
	require.NoError(t, f.svc.DeleteUser(f.ctx, f.admin, bob.User.ID))
	_, err = f.svc.Authenticate(f.ctx, key.Reveal())
	require.ErrorIs(t, err, agentotp.ErrUnauthorized, "a deleted approver's key is unknown")
	got, err := f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusPending, got.Status)
}

// TestDenyRuleStopsIssuedTokens: a policy that starts denying after a token
// was issued refuses its use, spends nothing, and audits why.
func TestDenyRuleStopsIssuedTokens(t *testing.T) {
	f := newFixture(t)
	a := f.agent("a")
	perm, tok := f.granted(a, 2)
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok, nil)
	require.NoError(t, err)
	require.True(t, res.Success)

	f.eff.Store(int32(agentotp.EffectDeny)) // the operator adds a deny rule
	res, err = f.svc.Use(f.ctx, a, perm.ID, tok, nil)
	require.NoError(t, err)
	require.False(t, res.Success)
	require.Contains(t, res.Reason, "refused by policy")
	got, err := f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, 1, got.UsesRemaining)

	f.eff.Store(int32(agentotp.EffectRequireApproval)) // only a deny refuses
	res, err = f.svc.Use(f.ctx, a, perm.ID, tok, nil)
	require.NoError(t, err)
	require.True(t, res.Success)
}

func TestQuorumKeepsEveryNarrowing(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Quorum: 2}, nil
		})
	})
	a := f.agent("a")
	alice, bob := f.approver("alice"), f.approver("bob")
	perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "pay",
		Scope: map[string]any{"max_amount": 1000.0, "to_pattern": `^alice@corp\.example$`}})
	require.NoError(t, err)
	_, err = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true, ScopeModifications: map[string]any{"max_amount": "10"}})
	require.ErrorIs(t, err, agentotp.ErrValidation, "a modification of another type is refused")
	// A vote cannot retarget a text limit for the next approver to carry:
	// NarrowScope would take the new pattern as it is.
	_, err = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true, ScopeModifications: map[string]any{"to_pattern": ".*"}})
	require.ErrorIs(t, err, agentotp.ErrValidation)
	_, err = f.svc.Decide(f.ctx, alice, perm.ID, agentotp.DecideInput{Approved: true, ScopeModifications: map[string]any{"max_amount": 10.0}})
	require.NoError(t, err)
	got, err := f.svc.Decide(f.ctx, bob, perm.ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusApproved, got.Status)
	require.Equal(t, 10.0, got.GrantedScope["max_amount"], "the first approver's narrowing survives the second vote")
	require.Equal(t, `^alice@corp\.example$`, got.GrantedScope["to_pattern"])
	_, tok, err := f.svc.GetPermission(f.ctx, a, perm.ID, 0)
	require.NoError(t, err)
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), map[string]any{"to": "attacker@evil.example", "amount": 5.0})
	require.NoError(t, err)
	require.False(t, res.Success, "the pattern still holds")
}

func TestUseWhenWithoutCheckerRefuses(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove, UseWhen: "false"}, nil
		})
	})
	a := f.agent("a")
	perm, tok, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), nil)
	require.NoError(t, err)
	require.False(t, res.Success, "a condition nobody can check fails closed")
	require.Contains(t, res.Reason, "cannot be checked")
}

func TestObjectSizeBound(t *testing.T) {
	big := map[string]any{"blob": strings.Repeat("x", 65<<10)}
	req := agentotp.PermissionRequest{Action: "x", Scope: big}
	require.Equal(t, agentotp.CodeTooLarge, agentotp.ErrorCode(req.ValidateWithin(agentotp.MaxObjectBytes)))
	ok := agentotp.PermissionRequest{Action: "x", Scope: map[string]any{"blob": strings.Repeat("x", 60<<10)}}
	require.NoError(t, ok.ValidateWithin(agentotp.MaxObjectBytes))
	require.Equal(t, agentotp.CodeTooLarge, agentotp.ErrorCode(ok.Validate()), "the default cap is 8 KiB")
}

// TestRefusedDecisionsAreAudited: an agent approving its own request and a
// user outside the rule's approver list are refused, and both attempts are
// in the audit.
func TestRefusedDecisionsAreAudited(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Approvers: []string{"alice"}}, nil
		})
	})
	a := f.agent("a")
	f.approver("alice")
	bob := f.approver("bob")
	perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	_, err = f.svc.Decide(f.ctx, a, perm.ID, agentotp.DecideInput{Approved: true})
	require.ErrorIs(t, err, agentotp.ErrForbidden)
	_, err = f.svc.Decide(f.ctx, bob, perm.ID, agentotp.DecideInput{Approved: true})
	require.ErrorIs(t, err, agentotp.ErrForbidden)
	list, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{PermissionID: perm.ID, Ascending: true})
	require.NoError(t, err)
	require.Len(t, list, 3)
	require.Equal(t, agentotp.EventDecideRejected, list[1].Type)
	require.Equal(t, "agent", list[1].ActorType)
	require.Equal(t, agentotp.EventDecideRejected, list[2].Type)
	require.Equal(t, string(bob.User.ID), list[2].ActorID)
	got, err := f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusPending, got.Status)
}

func TestNamesShapedLikeIDsRefused(t *testing.T) {
	f := newFixture(t)
	victim := f.agent("victim")
	_, _, err := f.svc.CreateAgent(f.ctx, f.admin, agentotp.AgentInput{Name: string(victim.Agent.ID)})
	require.ErrorIs(t, err, agentotp.ErrValidation)
	_, _, err = f.svc.CreateUser(f.ctx, f.admin, agentotp.UserInput{Name: "usr_x", Role: agentotp.RoleApprover})
	require.ErrorIs(t, err, agentotp.ErrValidation)
	name := "agt_lookalike"
	_, err = f.svc.UpdateAgent(f.ctx, f.admin, victim.Agent.ID, agentotp.AgentPatch{Name: &name})
	require.ErrorIs(t, err, agentotp.ErrValidation)
}

// flipLast returns k with its last character changed, never equal to k.
func flipLast(k string) string {
	last := byte('A')
	if k[len(k)-1] == 'A' {
		last = 'B'
	}
	return k[:len(k)-1] + string(last)
}
