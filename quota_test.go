package agentotp_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

// blob returns an object whose JSON is exactly n bytes: {"b":"xxx…"}.
func blob(n int) map[string]any {
	return map[string]any{"b": strings.Repeat("x", n-len(`{"b":""}`))}
}

// The scope, the context and a tool call's annotations are each capped at
// 8 KiB of JSON by default; over it the request is refused with
// PAYLOAD_TOO_LARGE naming the object, its size and the limit, and nothing
// is stored. Options.MaxRequestObjectBytes moves the cap.
func TestRequestObjectCap(t *testing.T) {
	f := newFixture(t)
	a := f.agent("big")
	for _, field := range []string{"scope", "context", "tool.annotations"} {
		t.Run(field, func(t *testing.T) {
			req := func(n int) agentotp.PermissionRequest {
				r := agentotp.PermissionRequest{Action: "x"}
				switch field {
				case "scope":
					r.Scope = blob(n)
				case "context":
					r.Context = blob(n)
				default:
					r.Tool = &agentotp.ToolCall{Name: "write", Annotations: blob(n)}
				}
				return r
			}
			_, _, err := f.svc.RequestPermission(f.ctx, a, req(9321))
			require.Equal(t, agentotp.CodeTooLarge, agentotp.ErrorCode(err), "%v", err)
			var e *agentotp.Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, field+" is 9,321 bytes of JSON; the limit is 8,192", e.Message)
			require.Contains(t, e.Details, field)

			// Far over the cap is the same answer, not a validation error.
			_, _, err = f.svc.RequestPermission(f.ctx, a, req(200<<10))
			require.Equal(t, agentotp.CodeTooLarge, agentotp.ErrorCode(err), "%v", err)
			require.ErrorContains(t, err, "the limit is 8,192")

			_, _, err = f.svc.RequestPermission(f.ctx, a, req(8192))
			require.NoError(t, err, "exactly at the cap is accepted")
		})
	}
	list, _, err := f.svc.ListPermissions(f.ctx, f.admin, agentotp.PermissionFilter{})
	require.NoError(t, err)
	require.Len(t, list, 3, "refused requests store nothing")

	// The key and depth limits still answer as validation errors.
	keys := map[string]any{}
	for i := range agentotp.MaxObjectKeys + 1 {
		keys[fmt.Sprintf("k%03d", i)] = i
	}
	_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", Scope: keys})
	require.ErrorIs(t, err, agentotp.ErrValidation)

	// The setting moves the cap, up to MaxObjectBytes.
	g := newFixture(t, func(o *agentotp.Options) { o.MaxRequestObjectBytes = 16 << 10 })
	b := g.agent("bigger")
	_, _, err = g.svc.RequestPermission(g.ctx, b, agentotp.PermissionRequest{Action: "x", Scope: blob(9321)})
	require.NoError(t, err)
	_, _, err = g.svc.RequestPermission(g.ctx, b, agentotp.PermissionRequest{Action: "x", Context: blob(16<<10 + 1)})
	require.ErrorContains(t, err, "context is 16,385 bytes of JSON; the limit is 16,384")
	h := newFixture(t, func(o *agentotp.Options) { o.MaxRequestObjectBytes = 1 << 20 })
	_, _, err = h.svc.RequestPermission(h.ctx, h.agent("huge"), agentotp.PermissionRequest{Action: "x", Scope: blob(65 << 10)})
	require.ErrorContains(t, err, "the limit is 65,536", "MaxObjectBytes stays the ceiling")
}

// An agent's stored permissions may take at most
// Options.MaxStoredBytesPerAgent, whatever their status; once they do, a
// request is refused with RATE_LIMITED naming the quota, and pruning gives
// room back. Other agents are not affected, and replaying a stored request
// still answers.
func TestStorageQuota(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) { o.MaxStoredBytesPerAgent = 40000 })
	a := f.agent("hoarder")
	big := blob(8192) // stored twice: as asked and as granted
	first, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", Scope: big, IdempotencyKey: "k1"})
	require.NoError(t, err)
	for _, eff := range []agentotp.Effect{agentotp.EffectDeny, agentotp.EffectAutoApprove} {
		f.eff.Store(int32(eff))
		_, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", Scope: big})
		require.NoError(t, err)
	}
	for _, eff := range []agentotp.Effect{agentotp.EffectAutoApprove, agentotp.EffectDeny, agentotp.EffectRequireApproval} {
		f.eff.Store(int32(eff))
		_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
		require.ErrorIs(t, err, agentotp.ErrRateLimited, "effect %v", eff)
		require.ErrorContains(t, err, "storage quota reached: this agent's 3 stored permission requests take ")
		require.ErrorContains(t, err, " KiB of the 39.1 KiB it may keep; decided ones are pruned after the retention period")
		var e *agentotp.Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, "40000", e.Details["quotaBytes"])
	}
	again, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", Scope: big, IdempotencyKey: "k1"})
	require.NoError(t, err, "a retry of a stored request is not a new one")
	require.Equal(t, first.ID, again.ID)
	_, _, err = f.svc.RequestPermission(f.ctx, f.agent("other"), agentotp.PermissionRequest{Action: "x", Scope: big})
	require.NoError(t, err, "the quota is per agent")

	// Pruning the decided one (the denied request; the pending one and
	// the live grant stay) frees room.
	f.clock.Add(time.Second)
	n, err := f.svc.Prune(f.ctx, f.admin, 0)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, _, err = f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
}

// The quota holds under concurrency: 100 simultaneous requests by one
// agent, served by two Services each with its own Store on one database
// file (as two processes would), store exactly as many as fit.
func TestStorageQuotaHoldsUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "agentotp.db")
	req := agentotp.PermissionRequest{Action: "x", Scope: blob(8 << 10)}

	// What one such request takes.
	probe, err := sqlite.Open(ctx, db, sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { probe.Close() })
	svc := agentotp.NewService(probe, agentotp.Options{})
	agent, _, err := svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "probe"})
	require.NoError(t, err)
	_, _, err = svc.RequestPermission(ctx, agentotp.Principal{Agent: agent}, req)
	require.NoError(t, err)
	var one agentotp.StorageUsage
	require.NoError(t, probe.Update(ctx, func(tx agentotp.Tx) (err error) {
		one, err = tx.StorageUsage(ctx, agent.ID)
		return err
	}))
	require.Equal(t, 1, one.Permissions)

	const fit = 20
	var svcs []*agentotp.Service
	for range 2 {
		st, err := sqlite.Open(ctx, db, sqlite.Options{Synchronous: "NORMAL"})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		svcs = append(svcs, agentotp.NewService(st, agentotp.Options{MaxStoredBytesPerAgent: fit * one.Bytes, MaxPendingPerAgent: 1000}))
	}
	agent, _, err = svcs[0].CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "flooder"})
	require.NoError(t, err)
	p := agentotp.Principal{Agent: agent}

	var mu sync.Mutex
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 100 {
		wg.Go(func() {
			<-start
			_, _, err := svcs[i%2].RequestPermission(ctx, p, req)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				outcomes["stored"]++
			case errors.Is(err, agentotp.ErrRateLimited):
				outcomes["refused"]++
			default:
				t.Errorf("request: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	require.Equal(t, map[string]int{"stored": fit, "refused": 100 - fit}, outcomes)
	for _, svc := range svcs {
		_, total, err := svc.ListPermissions(ctx, agentotp.SystemPrincipal, agentotp.PermissionFilter{AgentID: agent.ID})
		require.NoError(t, err)
		require.Equal(t, fit, total)
	}
}
