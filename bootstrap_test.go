package agentotp_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// The environment's admin key creates the first admin once; what admins
// later do to that user — rotate its key, disable it, delete it — is never
// undone by a restart (EnsureAdmin runs at every start).
func TestBootstrapAdminIsCreatedOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(f *fixture, admin *agentotp.User)
	}{
		{"rotated", func(f *fixture, admin *agentotp.User) {
			_, _, err := f.svc.RotateUserKey(f.ctx, f.admin, admin.ID)
			require.NoError(t, err)
		}},
		{"disabled", func(f *fixture, admin *agentotp.User) {
			off := false
			_, err := f.svc.UpdateUser(f.ctx, f.second(), admin.ID, agentotp.UserPatch{Active: &off})
			require.NoError(t, err)
		}},
		{"deleted", func(f *fixture, admin *agentotp.User) {
			require.NoError(t, f.svc.DeleteUser(f.ctx, f.second(), admin.ID))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			key := agentotp.NewUserKey()
			// newFixture bootstrapped with its own key: a second start
			// with another key changes nothing.
			created, err := f.svc.EnsureAdmin(f.ctx, key)
			require.NoError(t, err)
			require.False(t, created)
			_, err = f.svc.Authenticate(f.ctx, key.Reveal())
			require.ErrorIs(t, err, agentotp.ErrUnauthorized)

			tc.change(f, f.admin.User)
			before, _, err := f.svc.ListUsers(f.ctx, agentotp.SystemPrincipal, agentotp.Page{Limit: 100})
			require.NoError(t, err)
			created, err = f.svc.EnsureAdmin(f.ctx, f.adminKey)
			require.NoError(t, err)
			require.False(t, created, "a restart must not undo an admin's change")
			after, _, err := f.svc.ListUsers(f.ctx, agentotp.SystemPrincipal, agentotp.Page{Limit: 100})
			require.NoError(t, err)
			require.Equal(t, before, after)
			p, err := f.svc.Authenticate(f.ctx, f.adminKey.Reveal())
			if err == nil {
				require.NotEqual(t, agentotp.RoleAdmin, p.Role())
			}
		})
	}
}
