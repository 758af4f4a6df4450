package agentotp_test

import (
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
