package agentotp_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

// signIn opens a console session for a new approver.
func (f *fixture) signIn(name string) (agentotp.Secret, agentotp.Principal, agentotp.Secret) {
	f.t.Helper()
	_, key, err := f.svc.CreateUser(f.ctx, f.admin, agentotp.UserInput{Name: name, Role: agentotp.RoleApprover})
	require.NoError(f.t, err)
	secret, p, err := f.svc.OpenConsoleSession(f.ctx, key.Reveal())
	require.NoError(f.t, err)
	require.Equal(f.t, name, p.User.Name)
	return secret, p, key
}

func TestConsoleSignIn(t *testing.T) {
	f := newFixture(t)
	agent := f.agent("bot")
	_, agentKey, err := f.svc.RotateAgentKey(f.ctx, f.admin, agent.Agent.ID)
	require.NoError(t, err)
	_, disabledKey, err := f.svc.CreateUser(f.ctx, f.admin, agentotp.UserInput{Name: "off", Role: agentotp.RoleApprover})
	require.NoError(t, err)
	off := false
	offUser, err := f.svc.Authenticate(f.ctx, disabledKey.Reveal())
	require.NoError(t, err)
	_, err = f.svc.UpdateUser(f.ctx, f.admin, offUser.User.ID, agentotp.UserPatch{Active: &off})
	require.NoError(t, err)

	for _, tc := range []struct {
		name    string
		key     string
		code    agentotp.Code
		audited bool
	}{
		{"admin key", f.adminKey.Reveal(), "", false},
		{"agent key", agentKey.Reveal(), agentotp.CodeForbidden, true},
		{"disabled user", disabledKey.Reveal(), agentotp.CodeForbidden, true},
		{"unknown user key", agentotp.NewUserKey().Reveal(), agentotp.CodeUnauthorized, false},
		{"unknown agent key", agentotp.NewAgentKey().Reveal(), agentotp.CodeUnauthorized, false},
		{"garbage", "uk_<script>", agentotp.CodeUnauthorized, false},
		{"session secret is not a key", "cs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", agentotp.CodeUnauthorized, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.consoleEvents(agentotp.EventConsoleSignInRejected))
			secret, p, err := f.svc.OpenConsoleSession(f.ctx, tc.key)
			if tc.code == "" {
				require.NoError(t, err)
				require.Equal(t, agentotp.RoleAdmin, p.Role())
				require.True(t, len(secret.Reveal()) > 20)
				got, err := f.svc.ResumeConsoleSession(f.ctx, secret, true)
				require.NoError(t, err)
				require.Equal(t, p.User.ID, got.User.ID)
				return
			}
			require.Equal(t, tc.code, agentotp.ErrorCode(err))
			require.Empty(t, secret.Reveal())
			after := len(f.consoleEvents(agentotp.EventConsoleSignInRejected))
			if tc.audited {
				require.Equal(t, before+1, after)
			} else {
				require.Equal(t, before, after)
			}
		})
	}
}

func (f *fixture) consoleEvents(typ agentotp.EventType) []*agentotp.AuditEvent {
	f.t.Helper()
	list, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{Type: typ, Limit: 1000})
	require.NoError(f.t, err)
	return list
}

// A session ends when it is signed out, idle, too old, or when its user is
// disabled, deleted or given a new key — and never otherwise.
func TestConsoleSessionEnds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		end   func(f *fixture, secret agentotp.Secret, p agentotp.Principal)
		ended bool
	}{
		{"kept alive by activity", func(f *fixture, secret agentotp.Secret, _ agentotp.Principal) {
			for range 4 {
				f.clock.Add(agentotp.ConsoleIdleTimeout - 2*time.Minute)
				_, err := f.svc.ResumeConsoleSession(f.ctx, secret, true)
				require.NoError(f.t, err)
			}
		}, false},
		{"signed out", func(f *fixture, secret agentotp.Secret, _ agentotp.Principal) {
			require.NoError(f.t, f.svc.CloseConsoleSession(f.ctx, secret))
			require.NoError(f.t, f.svc.CloseConsoleSession(f.ctx, secret), "signing out twice is fine")
		}, true},
		{"idle", func(f *fixture, _ agentotp.Secret, _ agentotp.Principal) {
			f.clock.Add(agentotp.ConsoleIdleTimeout)
		}, true},
		{"a live-update stream does not keep it alive", func(f *fixture, secret agentotp.Secret, _ agentotp.Principal) {
			for range 2 {
				f.clock.Add(agentotp.ConsoleIdleTimeout / 3)
				_, err := f.svc.ResumeConsoleSession(f.ctx, secret, false)
				require.NoError(f.t, err)
			}
			f.clock.Add(agentotp.ConsoleIdleTimeout / 3)
		}, true},
		{"past its lifetime however active", func(f *fixture, secret agentotp.Secret, _ agentotp.Principal) {
			for elapsed := time.Duration(0); elapsed < agentotp.ConsoleSessionLifetime; elapsed += 10 * time.Minute {
				f.clock.Add(10 * time.Minute)
				_, _ = f.svc.ResumeConsoleSession(f.ctx, secret, true)
			}
		}, true},
		{"user disabled", func(f *fixture, _ agentotp.Secret, p agentotp.Principal) {
			off := false
			_, err := f.svc.UpdateUser(f.ctx, f.admin, p.User.ID, agentotp.UserPatch{Active: &off})
			require.NoError(f.t, err)
		}, true},
		{"user deleted", func(f *fixture, _ agentotp.Secret, p agentotp.Principal) {
			require.NoError(f.t, f.svc.DeleteUser(f.ctx, f.admin, p.User.ID))
		}, true},
		{"key rotated", func(f *fixture, _ agentotp.Secret, p agentotp.Principal) {
			_, _, err := f.svc.RotateUserKey(f.ctx, f.admin, p.User.ID)
			require.NoError(f.t, err)
		}, true},
		{"renamed", func(f *fixture, _ agentotp.Secret, p agentotp.Principal) {
			name := "ann2"
			_, err := f.svc.UpdateUser(f.ctx, f.admin, p.User.ID, agentotp.UserPatch{Name: &name})
			require.NoError(f.t, err)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			secret, p, _ := f.signIn("ann")
			tc.end(f, secret, p)
			got, err := f.svc.ResumeConsoleSession(f.ctx, secret, true)
			if !tc.ended {
				require.NoError(t, err)
				require.Equal(t, p.User.ID, got.User.ID)
				return
			}
			require.ErrorIs(t, err, agentotp.ErrUnauthorized)
			_, err = f.store.ConsoleSession(f.ctx, secret.Hash())
			require.ErrorIs(t, err, agentotp.ErrNotFound, "an ended session is deleted")
		})
	}
}

func TestConsoleSessionSecretIsOnlyStoredHashed(t *testing.T) {
	f := newFixture(t)
	secret, _, _ := f.signIn("ann")
	cs, err := f.store.ConsoleSession(f.ctx, secret.Hash())
	require.NoError(t, err)
	require.NotContains(t, cs.Hash, secret.Reveal())
	for _, bad := range []agentotp.Secret{"", agentotp.Secret(secret.Hash()), agentotp.Secret(flipLast(secret.Reveal())), "uk_" + secret[3:]} {
		_, err := f.svc.ResumeConsoleSession(f.ctx, bad, true)
		require.ErrorIs(t, err, agentotp.ErrUnauthorized, "%q", bad.Reveal())
	}
}

func TestConsoleSignInAndOutAreAudited(t *testing.T) {
	f := newFixture(t)
	ctx := agentotp.WithChannel(f.ctx, agentotp.Channel{Via: "console"})
	_, key, err := f.svc.CreateUser(f.ctx, f.admin, agentotp.UserInput{Name: "ann", Role: agentotp.RoleApprover})
	require.NoError(t, err)
	secret, p, err := f.svc.OpenConsoleSession(ctx, key.Reveal())
	require.NoError(t, err)
	require.NoError(t, f.svc.CloseConsoleSession(ctx, secret))

	in, out := f.consoleEvents(agentotp.EventConsoleSignIn), f.consoleEvents(agentotp.EventConsoleSignOut)
	require.Len(t, in, 1)
	require.Len(t, out, 1)
	for _, e := range []*agentotp.AuditEvent{in[0], out[0]} {
		require.Equal(t, "user", e.ActorType)
		require.Equal(t, string(p.User.ID), e.ActorID)
		require.Equal(t, map[string]any{"via": "console"}, e.Details["channel"])
		require.Equal(t, secret.Hash()[:16], e.Details["session"])
		require.NotContains(t, string(e.DetailsJSON), secret.Reveal())
	}
	report, err := f.svc.VerifyAudit(f.ctx, f.admin)
	require.NoError(t, err)
	require.True(t, report.OK, report.Reason)
}

func TestMayDecide(t *testing.T) {
	f := newFixture(t)
	agent := f.agent("bot")
	ann, bob := f.approver("ann"), f.approver("bob")
	perm := &agentotp.Permission{AgentID: agent.Agent.ID, Decision: agentotp.Decision{Approvers: []string{"ann", "admin"}}}
	open := &agentotp.Permission{AgentID: agent.Agent.ID}
	disabled := *ann.User
	disabled.Active = false
	for _, tc := range []struct {
		name string
		p    agentotp.Principal
		perm *agentotp.Permission
		want bool
	}{
		{"named approver", ann, perm, true},
		{"approver not named", bob, perm, false},
		{"admin named by role", f.admin, perm, true},
		{"any approver when the rule names nobody", bob, open, true},
		{"agent", agent, open, false},
		{"disabled user", agentotp.Principal{User: &disabled}, open, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, f.svc.MayDecide(tc.p, tc.perm))
		})
	}
}

// Sessions live in the store: a restarted server (a new Service on the same
// database) still honours them.
func TestConsoleSessionSurvivesARestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentotp.db")
	start := func() (*sqlite.Store, *agentotp.Service) {
		st, err := sqlite.Open(ctx, path, sqlite.Options{Synchronous: "NORMAL"})
		require.NoError(t, err)
		return st, agentotp.NewService(st, agentotp.Options{})
	}
	st, svc := start()
	key := agentotp.NewUserKey()
	_, err := svc.EnsureAdmin(ctx, key)
	require.NoError(t, err)
	secret, p, err := svc.OpenConsoleSession(ctx, key.Reveal())
	require.NoError(t, err)
	require.NoError(t, st.Close())

	st, svc = start()
	defer st.Close()
	got, err := svc.ResumeConsoleSession(ctx, secret, true)
	require.NoError(t, err)
	require.Equal(t, p.User.ID, got.User.ID)
}
