package agentotp_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// Retention: Prune deletes permissions decided (denied, expired, used,
// revoked) longer ago than its cutoff; pending requests and live grants stay
// however old. The pruned permissions' audit events stay, the chain still
// verifies, and the pruning itself is an audit event.
func TestPruneDecidedPermissions(t *testing.T) {
	f := newFixture(t)
	a := f.agent("pruned")
	req := func(eff agentotp.Effect, action string) *agentotp.Permission {
		f.eff.Store(int32(eff))
		perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: action, ApprovalTTL: time.Hour})
		require.NoError(t, err)
		return perm
	}
	denied := req(agentotp.EffectDeny, "denied")
	used, tok := f.granted(a, 1)
	f.eff.Store(int32(agentotp.EffectAutoApprove)) // the policy is asked again at use
	res, err := f.svc.Use(f.ctx, a, used.ID, tok, nil)
	require.NoError(t, err)
	require.True(t, res.Success)
	revoked := req(agentotp.EffectRequireApproval, "revoked")
	_, err = f.svc.Revoke(f.ctx, a, revoked.ID, "")
	require.NoError(t, err)
	humanDenied := req(agentotp.EffectRequireApproval, "human-denied")
	_, err = f.svc.Decide(f.ctx, f.admin, humanDenied.ID, agentotp.DecideInput{Approved: false, Reason: "no"})
	require.NoError(t, err)
	expired := req(agentotp.EffectRequireApproval, "expired")
	f.eff.Store(int32(agentotp.EffectRequireApproval))
	oldPending, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "old-pending", ApprovalTTL: 24 * time.Hour})
	require.NoError(t, err)
	f.clock.Add(2 * time.Hour)
	n, err := f.svc.ExpireDue(f.ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	gone := []*agentotp.Permission{denied, used, revoked, humanDenied, expired}

	// Decided an hour after the others: still within retention.
	f.clock.Add(time.Hour)
	recent := req(agentotp.EffectDeny, "recent")
	f.clock.Add(30*24*time.Hour - time.Hour + time.Minute) // 30 days and a minute after the first five were decided
	live, _ := f.granted(a, 1)                             // a live grant is never pruned
	// The old pending request is past its window but not swept yet: only
	// final statuses are pruned, however old the row.
	kept := []*agentotp.Permission{recent, oldPending, live}

	before := f.auditCount()
	n, err = f.svc.Prune(f.ctx, f.admin, 30*24*time.Hour)
	require.NoError(t, err)
	require.Equal(t, len(gone), n)
	for _, p := range gone {
		_, _, err := f.svc.GetPermission(f.ctx, f.admin, p.ID, 0)
		require.ErrorIs(t, err, agentotp.ErrNotFound, p.Action)
		require.NotEmpty(t, f.events(p.ID), "%s: its audit events stay", p.Action)
	}
	for _, p := range kept {
		_, _, err := f.svc.GetPermission(f.ctx, f.admin, p.ID, 0)
		require.NoError(t, err, p.Action)
	}
	require.Equal(t, before+1, f.auditCount(), "one prune event, nothing deleted from the trail")

	events, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{Type: agentotp.EventPrune})
	require.NoError(t, err)
	require.Len(t, events, 1)
	e := events[0]
	require.Equal(t, "user", e.ActorType)
	require.Equal(t, float64(len(gone)), e.Details["count"])
	require.Equal(t, "720h0m0s", e.Details["olderThan"])
	require.Equal(t, f.clock.Now().Add(-30*24*time.Hour).Format(time.RFC3339Nano), e.Details["before"])

	rep, err := f.svc.VerifyAudit(f.ctx, f.admin)
	require.NoError(t, err)
	require.True(t, rep.OK, "%+v", rep)

	// Nothing more to prune: no further event.
	n, err = f.svc.Prune(f.ctx, f.admin, 30*24*time.Hour)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, before+1, f.auditCount())
}

func TestPruneRights(t *testing.T) {
	f := newFixture(t)
	for _, p := range []agentotp.Principal{f.agent("a"), f.approver("bob")} {
		_, err := f.svc.Prune(f.ctx, p, time.Hour)
		require.ErrorIs(t, err, agentotp.ErrForbidden)
	}
	_, err := f.svc.Prune(f.ctx, f.admin, -time.Second)
	require.ErrorIs(t, err, agentotp.ErrValidation)
	_, err = f.svc.Prune(f.ctx, agentotp.SystemPrincipal, time.Hour)
	require.NoError(t, err)
}

// A backlog larger than one batch is pruned completely, one prune event
// per batch.
func TestPruneBacklogInBatches(t *testing.T) {
	f := newFixture(t)
	a := f.agent("busy")
	now := f.clock.Now()
	require.NoError(t, f.store.Update(f.ctx, func(tx agentotp.Tx) error {
		for range 1100 {
			err := tx.CreatePermission(f.ctx, &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: a.Agent.ID,
				Action: "x", Status: agentotp.StatusDenied, CreatedAt: now, UpdatedAt: now, Uses: 1})
			if err != nil {
				return err
			}
		}
		return nil
	}))
	f.clock.Add(time.Hour)
	n, err := f.svc.Prune(f.ctx, agentotp.SystemPrincipal, time.Minute)
	require.NoError(t, err)
	require.Equal(t, 1100, n)
	events, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{Type: agentotp.EventPrune})
	require.NoError(t, err)
	require.Len(t, events, 3)
	var counts []any
	for _, e := range events {
		require.Equal(t, "system", e.ActorType)
		counts = append(counts, e.Details["count"])
	}
	require.ElementsMatch(t, []any{500.0, 500.0, 100.0}, counts)
}

// RunPruner prunes at once and then every interval, until its context ends.
func TestRunPruner(t *testing.T) {
	f := newFixture(t)
	f.eff.Store(int32(agentotp.EffectDeny))
	a := f.agent("x")
	_, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	f.clock.Add(2 * time.Hour)
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.svc.RunPruner(ctx, time.Hour, 10*time.Millisecond) }()
	require.Eventually(t, func() bool {
		_, total, err := f.svc.ListPermissions(f.ctx, f.admin, agentotp.PermissionFilter{})
		return err == nil && total == 0
	}, 5*time.Second, 5*time.Millisecond)
	_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "y"})
	require.NoError(t, err)
	f.clock.Add(2 * time.Hour)
	require.Eventually(t, func() bool {
		_, total, err := f.svc.ListPermissions(f.ctx, f.admin, agentotp.PermissionFilter{})
		return err == nil && total == 0
	}, 5*time.Second, 5*time.Millisecond, "pruned again on the next tick")
	cancel()
	<-done
}

// auditCount is the number of events in the trail.
func (f *fixture) auditCount() int64 {
	f.t.Helper()
	rep, err := f.svc.VerifyAudit(f.ctx, f.admin)
	require.NoError(f.t, err)
	return rep.Checked
}
