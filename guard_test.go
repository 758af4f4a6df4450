package agentotp_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// fakeAuth answers Authorize with a fixed status and records the keys.
type fakeAuth struct {
	status   agentotp.Status
	keys     []string
	err      error // Authorize's error, when set
	spendErr error
	spent    int
}

func (f *fakeAuth) Authorize(_ context.Context, req agentotp.PermissionRequest, _ time.Duration) (*agentotp.Permission, agentotp.Secret, error) {
	f.keys = append(f.keys, req.IdempotencyKey)
	if f.err != nil {
		return nil, "", f.err
	}
	p := &agentotp.Permission{ID: "perm_x", Status: f.status, DecisionReason: "because"}
	if f.status == agentotp.StatusApproved {
		return p, "otp_t", nil
	}
	return p, "", nil
}

func (f *fakeAuth) Spend(context.Context, agentotp.PermissionID, agentotp.Secret, map[string]any) error {
	f.spent++
	return f.spendErr
}

func TestGuardPicksUpPendingCalls(t *testing.T) {
	g := agentotp.NewGuard(0)
	ctx := context.Background()
	a := &fakeAuth{status: agentotp.StatusPending}
	for range 2 {
		v, err := g.Ask(ctx, a, "call-1", "send", agentotp.PermissionRequest{Action: "x"})
		require.NoError(t, err)
		require.False(t, v.Allowed)
		require.Contains(t, v.Message, "approval pending")
	}
	_, err := g.Ask(ctx, a, "call-2", "send", agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	require.Equal(t, a.keys[0], a.keys[1], "the same call asks with the same key")
	require.NotEqual(t, a.keys[0], a.keys[2], "another call asks anew")

	// Once decided, the call is forgotten: asking again is a new request.
	a.status = agentotp.StatusDenied
	v, err := g.Ask(ctx, a, "call-1", "send", agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	require.Contains(t, v.Message, "Permission denied for send. Reason: because.")
	_, err = g.Ask(ctx, a, "call-1", "send", agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	require.NotEqual(t, a.keys[3], a.keys[4])
}

func TestGuardKeepsKeyOnlyWhileItCanBePickedUp(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		same bool
	}{
		// The request may exist and wait: the same call asks with its key.
		{"the server could not be reached", agentotp.Errorf(agentotp.CodeUnavailable, "down"), true},
		{"the wait broke off", context.DeadlineExceeded, true},
		// The server refuses the key for this call: asking with it again
		// would be refused for ever.
		{"the key was used for a different request", agentotp.Errorf(agentotp.CodeConflict, "idempotencyKey was already used for a different request"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := agentotp.NewGuard(0)
			ctx := context.Background()
			a := &fakeAuth{status: agentotp.StatusPending}
			_, err := g.Ask(ctx, a, "call-1", "send", agentotp.PermissionRequest{Action: "x"})
			require.NoError(t, err)
			a.err = tc.err
			_, err = g.Ask(ctx, a, "call-1", "send", agentotp.PermissionRequest{Action: "x"})
			require.ErrorIs(t, err, tc.err)
			a.err = nil
			_, err = g.Ask(ctx, a, "call-1", "send", agentotp.PermissionRequest{Action: "x"})
			require.NoError(t, err)
			require.Equal(t, a.keys[0], a.keys[1])
			require.Equal(t, tc.same, a.keys[1] == a.keys[2], "keys %v", a.keys)
		})
	}
}

func TestGuardSpendsBeforeRunning(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("connection reset")
	for _, tc := range []struct {
		name     string
		status   agentotp.Status
		spendErr error
		ok       bool
		msg      string
		err      error
		spent    int
	}{
		{"approved", agentotp.StatusApproved, nil, true, "", nil, 1},
		{"not approved: nothing spent", agentotp.StatusExpired, nil, false, "expired before anyone approved it", nil, 0},
		{"use refused", agentotp.StatusApproved, agentotp.Errorf(agentotp.CodeConflict, "outside the granted scope"), false,
			"could not be used (outside the granted scope)", nil, 1},
		{"agentotp unreachable", agentotp.StatusApproved, boom, false, "", boom, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := agentotp.NewGuard(0)
			a := &fakeAuth{status: tc.status, spendErr: tc.spendErr}
			v, err := g.Ask(ctx, a, "k", "send", agentotp.PermissionRequest{Action: "x"})
			require.NoError(t, err)
			ok, msg, err := g.Spend(ctx, a, v, "send", nil)
			require.Equal(t, tc.ok, ok)
			require.Contains(t, msg, tc.msg)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tc.spent, a.spent)
		})
	}
}

// 100 concurrent copies of one request carrying its use (one idempotency
// key) spend it once: one answers with the use, the others are retries
// answered from the spent permission, with no token and nothing spent.
func TestRequestAndUseRetriedAtOnce(t *testing.T) {
	f := newFixture(t)
	a := f.agent("gw")
	f.eff.Store(int32(agentotp.EffectAutoApprove))
	req := agentotp.PermissionRequest{Action: "x", IdempotencyKey: "call-1"}
	const n = 100
	var spent, retried atomic.Int64
	ids := make([]agentotp.PermissionID, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			perm, tok, used, err := f.svc.RequestAndUse(f.ctx, a, req, nil)
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			ids[i] = perm.ID
			switch {
			case used != nil && used.Success && tok != "":
				spent.Add(1)
			case used == nil && tok == "" && perm.Status == agentotp.StatusUsed:
				retried.Add(1)
			default:
				t.Errorf("request %d: status %s, use %+v, token %t", i, perm.Status, used, tok != "")
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 1, spent.Load())
	require.EqualValues(t, n-1, retried.Load())
	for _, id := range ids {
		require.Equal(t, ids[0], id)
	}
	events, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{PermissionID: ids[0], Ascending: true})
	require.NoError(t, err)
	require.Len(t, events, 3, "request, approve, one use")
	rep, err := f.svc.VerifyAudit(f.ctx, f.admin)
	require.NoError(t, err)
	require.True(t, rep.OK, "%+v", rep)
}

// An approval at once is asked and spent in one transaction, with Use's
// checks: the audit shows the same events as two steps, and verifies.
func TestRequestAndUseInOneStep(t *testing.T) {
	f := newFixture(t)
	a := f.agent("gw")
	f.eff.Store(int32(agentotp.EffectAutoApprove))
	req := agentotp.PermissionRequest{Action: "x", Scope: map[string]any{"max_n": 2.0}}

	perm, tok, used, err := f.svc.RequestAndUse(f.ctx, a, req, map[string]any{"n": 1.0})
	require.NoError(t, err)
	require.NotEmpty(t, tok)
	require.Equal(t, &agentotp.UseResult{Success: true, UsesRemaining: 0}, used)
	require.Equal(t, agentotp.StatusUsed, perm.Status)
	stored, err := f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusUsed, stored.Status, "stored spent: one write")
	require.Zero(t, stored.UsesRemaining)
	events, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{PermissionID: perm.ID, Ascending: true})
	require.NoError(t, err)
	var types []agentotp.EventType
	for _, e := range events {
		types = append(types, e.Type)
	}
	require.Equal(t, []agentotp.EventType{agentotp.EventRequest, agentotp.EventApprove, agentotp.EventUse}, types)

	perm, _, used, err = f.svc.RequestAndUse(f.ctx, a, req, map[string]any{"n": 5.0})
	require.NoError(t, err)
	require.False(t, used.Success, "outside the scope: refused, nothing spent")
	require.Equal(t, 1, used.UsesRemaining)
	require.Equal(t, agentotp.StatusApproved, perm.Status)

	// Two uses: the first spent with the request, the second by Use with
	// the token; a third is refused.
	req2 := req
	req2.Uses = 2
	perm, tok, used, err = f.svc.RequestAndUse(f.ctx, a, req2, map[string]any{"n": 1.0})
	require.NoError(t, err)
	require.Equal(t, &agentotp.UseResult{Success: true, UsesRemaining: 1}, used)
	require.Equal(t, agentotp.StatusApproved, perm.Status)
	require.Equal(t, 1, perm.UsesRemaining)
	stored, err = f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusApproved, stored.Status)
	require.Equal(t, 1, stored.UsesRemaining)
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), map[string]any{"n": 2.0})
	require.NoError(t, err)
	require.Equal(t, agentotp.UseResult{Success: true, UsesRemaining: 0}, res)
	res, err = f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), map[string]any{"n": 1.0})
	require.NoError(t, err)
	require.False(t, res.Success)
	stored, err = f.store.Permission(f.ctx, perm.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusUsed, stored.Status)

	f.eff.Store(int32(agentotp.EffectRequireApproval))
	perm, _, used, err = f.svc.RequestAndUse(f.ctx, a, req, map[string]any{"n": 1.0})
	require.NoError(t, err)
	require.Nil(t, used, "nothing to spend while pending")
	require.Equal(t, agentotp.StatusPending, perm.Status)

	rep, err := f.svc.VerifyAudit(f.ctx, f.admin)
	require.NoError(t, err)
	require.True(t, rep.OK, "%+v", rep)
}
