package agentotp_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

type resolvedLog struct {
	mu  sync.Mutex
	got []agentotp.Status
}

func (r *resolvedLog) NotifyPending(context.Context, *agentotp.Permission, *agentotp.Agent) error {
	return nil
}

func (r *resolvedLog) NotifyResolved(_ context.Context, p *agentotp.Permission) error {
	r.mu.Lock()
	r.got = append(r.got, p.Status)
	r.mu.Unlock()
	return nil
}

func (r *resolvedLog) statuses() []agentotp.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]agentotp.Status(nil), r.got...)
}

// A request announced by one process and decided by another (the CLI on
// the same data directory) still reaches the first one's notifier, once.
func TestDecisionsElsewhereReachTheNotifier(t *testing.T) {
	rec := &resolvedLog{}
	f := newFixture(t, func(o *agentotp.Options) { o.Notifier = rec })
	other := agentotp.NewService(f.store, agentotp.Options{Clock: f.clock.Now})
	agent := f.agent("a")
	perm, _, err := f.svc.RequestPermission(f.ctx, agent, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)

	_, err = other.Decide(f.ctx, agentotp.SystemPrincipal, perm.ID, agentotp.DecideInput{Approved: false, Reason: "no"})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	go f.svc.RunSweeper(ctx, 20*time.Millisecond)
	require.Eventually(t, func() bool { return len(rec.statuses()) == 1 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond) // more sweeps: still once
	require.Equal(t, []agentotp.Status{agentotp.StatusDenied}, rec.statuses())
}
