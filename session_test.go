package agentotp_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// A session bound to a key for a process's life (agentotp mcp and the
// gateway in embedded mode) stops working once its agent is disabled,
// given a new key or deleted: within the key cache's second, not at the
// process's next start.
func TestAgentSessionForKeyFollowsTheAgent(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(f *fixture, id agentotp.AgentID)
	}{
		{"disabled", func(f *fixture, id agentotp.AgentID) {
			off := false
			_, err := f.svc.UpdateAgent(f.ctx, f.admin, id, agentotp.AgentPatch{Active: &off})
			require.NoError(f.t, err)
		}},
		{"given a new key", func(f *fixture, id agentotp.AgentID) {
			_, _, err := f.svc.RotateAgentKey(f.ctx, f.admin, id)
			require.NoError(f.t, err)
		}},
		{"deleted", func(f *fixture, id agentotp.AgentID) {
			require.NoError(f.t, f.svc.DeleteAgent(f.ctx, f.admin, id))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.eff.Store(int32(agentotp.EffectAutoApprove))
			a, key, err := f.svc.CreateAgent(f.ctx, f.admin, agentotp.AgentInput{Name: "held"})
			require.NoError(t, err)
			s, err := f.svc.AgentSessionForKey(f.ctx, key)
			require.NoError(t, err)
			perm, tok, err := s.Authorize(f.ctx, agentotp.PermissionRequest{Action: "x", Uses: 2}, 0)
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusApproved, perm.Status)

			tc.change(f, a.ID)
			require.Eventually(t, func() bool {
				_, _, err := s.Authorize(f.ctx, agentotp.PermissionRequest{Action: "x"}, 0)
				return err != nil
			}, 3*time.Second, 50*time.Millisecond, "no new permission")
			require.Error(t, s.Spend(f.ctx, perm.ID, tok, nil), "no use of an old one")
		})
	}
}

// useCapture auto-approves with a use condition and records the agent
// CheckUse is given.
type useCapture struct{ agents []*agentotp.Agent }

func (u *useCapture) Evaluate(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
	return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "r", UseWhen: "true"}, nil
}

func (u *useCapture) CheckUse(_ context.Context, a *agentotp.Agent, _ *agentotp.Permission, _ map[string]any, _ time.Time) error {
	u.agents = append(u.agents, a)
	return nil
}

// A use condition sees the agent whole (name, metadata), at a use and at
// a use spent with its request.
func TestUseConditionSeesTheAgent(t *testing.T) {
	u := &useCapture{}
	f := newFixture(t, func(o *agentotp.Options) { o.Evaluator = u })
	_, key, err := f.svc.CreateAgent(f.ctx, f.admin, agentotp.AgentInput{Name: "payer", Metadata: map[string]any{"tier": "restricted"}})
	require.NoError(t, err)
	p, err := f.svc.Authenticate(f.ctx, key.Reveal())
	require.NoError(t, err)
	perm, tok, err := f.svc.RequestPermission(f.ctx, p, agentotp.PermissionRequest{Action: "x"})
	require.NoError(t, err)
	_, err = f.svc.Use(f.ctx, p, perm.ID, tok.Reveal(), nil)
	require.NoError(t, err)
	_, _, _, err = f.svc.RequestAndUse(f.ctx, p, agentotp.PermissionRequest{Action: "x"}, nil)
	require.NoError(t, err)
	require.Len(t, u.agents, 2)
	for _, a := range u.agents {
		require.Equal(t, "payer", a.Name)
		require.Equal(t, "restricted", a.Metadata["tier"])
	}
}
