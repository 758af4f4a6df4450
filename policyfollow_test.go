package agentotp_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/policy"
	"github.com/agentotp/agentotp/store/sqlite"
)

// flakyPolicies fails the next fail reads of the stored rules.
type flakyPolicies struct {
	agentotp.Store
	fail atomic.Int32
}

func (f *flakyPolicies) Policies(ctx context.Context, pf agentotp.PolicyFilter) ([]*agentotp.Policy, int, error) {
	if f.fail.Add(-1) >= 0 {
		return nil, 0, errors.New("connection reset")
	}
	return f.Store.Policies(ctx, pf)
}

// A reload after a policy change that fails (here on the instance that
// follows another's changes) is tried again until it succeeds: one
// transient error must not leave a disabled auto-approve rule in force.
func TestFollowPoliciesRetriesAFailedReload(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := filepath.Join(t.TempDir(), "agentotp.db")
	open := func(src func(agentotp.Store) policy.Source) (*agentotp.Service, *policy.Engine) {
		st, err := sqlite.Open(ctx, db, sqlite.Options{Synchronous: "NORMAL"})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		eng, err := policy.New(ctx, policy.Options{Source: src(st), Counter: st})
		require.NoError(t, err)
		return agentotp.NewService(st, agentotp.Options{Evaluator: eng}), eng
	}
	a, _ := open(func(st agentotp.Store) policy.Source { return st })
	var flaky *flakyPolicies
	b, engB := open(func(st agentotp.Store) policy.Source { flaky = &flakyPolicies{Store: st}; return flaky })
	go b.RunSweeper(ctx, 20*time.Millisecond)

	pol, err := a.CreatePolicy(ctx, agentotp.SystemPrincipal, &agentotp.Policy{Name: "auto pay", Effect: agentotp.EffectAutoApprove,
		Conditions: map[string]any{"action": map[string]any{"equals": "pay.x"}}, Active: true})
	require.NoError(t, err)
	effect := func() agentotp.Effect {
		d, _ := engB.Evaluate(ctx, agentotp.EvalInput{Action: "pay.x", Agent: &agentotp.Agent{ID: "agt_x", Name: "x"}, Now: time.Now()})
		return d.Effect
	}
	require.Eventually(t, func() bool { return effect() == agentotp.EffectAutoApprove }, 5*time.Second, 10*time.Millisecond)

	flaky.fail.Store(3) // the next three reloads fail
	pol.Active = false
	_, err = a.UpdatePolicy(ctx, agentotp.SystemPrincipal, pol)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return effect() != agentotp.EffectAutoApprove }, 10*time.Second, 10*time.Millisecond)
	require.Negative(t, flaky.fail.Load(), "the failures were met and retried")

	// A reload that keeps failing is retried less and less often: each
	// failure is an audit event, and the sweep runs every 20 ms here.
	flaky.fail.Store(1 << 20)
	pol.Active = true
	_, err = a.UpdatePolicy(ctx, agentotp.SystemPrincipal, pol)
	require.NoError(t, err)
	time.Sleep(time.Second)
	require.LessOrEqual(t, 1<<20-flaky.fail.Load(), int32(4), "at most a few tries in a second (0, 0.25, 0.75 s)")
}
