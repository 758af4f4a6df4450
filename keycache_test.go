package agentotp_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// Verified keys are remembered for a second; a change made through the
// same Service takes effect at once, one made by another process sharing
// the store within a second.
func TestKeyCache(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx
	no := false
	role := agentotp.RoleApprover

	for _, tc := range []struct {
		name   string
		user   bool
		change func(t *testing.T, id string) // through the same Service
		code   agentotp.Code
	}{
		{"agent disabled", false, func(t *testing.T, id string) {
			_, err := f.svc.UpdateAgent(ctx, f.admin, agentotp.AgentID(id), agentotp.AgentPatch{Active: &no})
			require.NoError(t, err)
		}, agentotp.CodeForbidden},
		{"agent key rotated", false, func(t *testing.T, id string) {
			_, _, err := f.svc.RotateAgentKey(ctx, f.admin, agentotp.AgentID(id))
			require.NoError(t, err)
		}, agentotp.CodeUnauthorized},
		{"agent deleted", false, func(t *testing.T, id string) {
			require.NoError(t, f.svc.DeleteAgent(ctx, f.admin, agentotp.AgentID(id)))
		}, agentotp.CodeUnauthorized},
		{"user disabled", true, func(t *testing.T, id string) {
			_, err := f.svc.UpdateUser(ctx, f.admin, agentotp.UserID(id), agentotp.UserPatch{Active: &no})
			require.NoError(t, err)
		}, agentotp.CodeForbidden},
		{"user key rotated", true, func(t *testing.T, id string) {
			_, _, err := f.svc.RotateUserKey(ctx, f.admin, agentotp.UserID(id))
			require.NoError(t, err)
		}, agentotp.CodeUnauthorized},
		{"user deleted", true, func(t *testing.T, id string) {
			require.NoError(t, f.svc.DeleteUser(ctx, f.admin, agentotp.UserID(id)))
		}, agentotp.CodeUnauthorized},
	} {
		t.Run(tc.name+", same service: at once", func(t *testing.T) {
			var (
				id  string
				key agentotp.Secret
			)
			if tc.user {
				u, k, err := f.svc.CreateUser(ctx, f.admin, agentotp.UserInput{Name: "u-" + time.Now().Format("150405.000000"), Role: agentotp.RoleAdmin})
				require.NoError(t, err)
				id, key = string(u.ID), k
			} else {
				a, k, err := f.svc.CreateAgent(ctx, f.admin, agentotp.AgentInput{Name: "a-" + time.Now().Format("150405.000000")})
				require.NoError(t, err)
				id, key = string(a.ID), k
			}
			for range 2 { // the second is answered from the cache
				_, err := f.svc.Authenticate(ctx, key.Reveal())
				require.NoError(t, err)
			}
			tc.change(t, id)
			_, err := f.svc.Authenticate(ctx, key.Reveal())
			require.Error(t, err)
			require.Equal(t, tc.code, agentotp.ErrorCode(err))
		})
	}

	t.Run("a role change applies at once", func(t *testing.T) {
		u, key, err := f.svc.CreateUser(ctx, f.admin, agentotp.UserInput{Name: "demoted", Role: agentotp.RoleAdmin})
		require.NoError(t, err)
		p, err := f.svc.Authenticate(ctx, key.Reveal())
		require.NoError(t, err)
		require.Equal(t, agentotp.RoleAdmin, p.Role())
		_, err = f.svc.UpdateUser(ctx, f.admin, u.ID, agentotp.UserPatch{Role: &role})
		require.NoError(t, err)
		p, err = f.svc.Authenticate(ctx, key.Reveal())
		require.NoError(t, err)
		require.Equal(t, agentotp.RoleApprover, p.Role())
	})

	t.Run("callers own their principal", func(t *testing.T) {
		_, key, err := f.svc.CreateAgent(ctx, f.admin, agentotp.AgentInput{Name: "owned"})
		require.NoError(t, err)
		p, err := f.svc.Authenticate(ctx, key.Reveal())
		require.NoError(t, err)
		p.Agent.Name, p.Agent.Active = "changed", false
		again, err := f.svc.Authenticate(ctx, key.Reveal())
		require.NoError(t, err)
		require.Equal(t, "owned", again.Agent.Name)
		require.True(t, again.Agent.Active)
	})

	t.Run("disabled by another process: refused within a second", func(t *testing.T) {
		other := agentotp.NewService(f.store, agentotp.Options{})
		a, key, err := f.svc.CreateAgent(ctx, f.admin, agentotp.AgentInput{Name: "elsewhere"})
		require.NoError(t, err)
		_, err = f.svc.Authenticate(ctx, key.Reveal())
		require.NoError(t, err)
		_, err = other.UpdateAgent(ctx, f.admin, a.ID, agentotp.AgentPatch{Active: &no})
		require.NoError(t, err)
		changed := time.Now()
		for {
			_, err = f.svc.Authenticate(ctx, key.Reveal())
			if err != nil {
				break
			}
			require.Less(t, time.Since(changed), time.Second+100*time.Millisecond, "still accepted after a second")
			time.Sleep(10 * time.Millisecond)
		}
		require.Equal(t, agentotp.CodeForbidden, agentotp.ErrorCode(err))
		require.LessOrEqual(t, time.Since(changed), time.Second+100*time.Millisecond)
	})
}
