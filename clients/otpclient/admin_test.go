package otpclient_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
)

func ptr[T any](v T) *T { return &v }

func TestAdminAgentsAndUsers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	a, err := e.admin.CreateAgent(ctx, otpclient.AgentInput{Name: "bot", Description: "d", Metadata: map[string]any{"team": "x"}})
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(a.APIKey, "ak_"))
	require.Equal(t, "[redacted]", a.Key().String())
	got, err := e.admin.GetAgent(ctx, a.ID)
	require.NoError(t, err)
	require.Empty(t, got.APIKey, "the key is shown once")
	require.Equal(t, "x", got.Metadata["team"])
	list, info, err := e.admin.ListAgents(ctx, otpclient.ListOptions{Limit: 1})
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, 2, info.Total)
	upd, err := e.admin.UpdateAgent(ctx, a.ID, otpclient.AgentPatch{Description: ptr("new")})
	require.NoError(t, err)
	require.Equal(t, "new", upd.Description)
	rot, err := e.admin.RotateAgentKey(ctx, a.ID)
	require.NoError(t, err)
	require.NotEqual(t, a.APIKey, rot.APIKey)
	_, err = otpclient.New(e.srv.URL, a.APIKey, fast()).RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
	require.ErrorIs(t, err, otpclient.ErrUnauthorized, "the old key stops working")
	_, err = otpclient.New(e.srv.URL, rot.APIKey, fast()).RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
	require.NoError(t, err)
	require.NoError(t, e.admin.DeleteAgent(ctx, a.ID))
	_, err = e.admin.GetAgent(ctx, a.ID)
	require.ErrorIs(t, err, otpclient.ErrNotFound)

	u, err := e.admin.CreateUser(ctx, otpclient.UserInput{Name: "alice", Role: "approver", TelegramID: 42})
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(u.APIKey, "uk_"))
	_, err = e.admin.CreateUser(ctx, otpclient.UserInput{Name: "bob", Role: "root"})
	require.ErrorIs(t, err, otpclient.ErrValidation)
	gu, err := e.admin.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(42), gu.TelegramID)
	users, _, err := e.admin.ListUsers(ctx, otpclient.ListOptions{})
	require.NoError(t, err)
	require.Len(t, users, 2) // bootstrap admin and alice
	uu, err := e.admin.UpdateUser(ctx, u.ID, otpclient.UserPatch{Role: ptr("admin")})
	require.NoError(t, err)
	require.Equal(t, "admin", uu.Role)
	ru, err := e.admin.RotateUserKey(ctx, u.ID)
	require.NoError(t, err)
	require.NotEqual(t, u.APIKey, ru.APIKey)

	// An approver decides but cannot manage.
	approver, err := e.admin.CreateUser(ctx, otpclient.UserInput{Name: "carol", Role: "approver"})
	require.NoError(t, err)
	carol := otpclient.NewAdmin(e.srv.URL, approver.APIKey, fast())
	_, _, err = carol.ListAgents(ctx, otpclient.ListOptions{})
	require.ErrorIs(t, err, otpclient.ErrForbidden)
	p, err := e.client().RequestPermission(ctx, otpclient.Request{Action: "human.x"})
	require.NoError(t, err)
	d, err := carol.Deny(ctx, p.ID, "nope")
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusDenied, d.Status)
	staff, err := carol.GetPermission(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, e.agent.ID, staff.AgentID)
	require.Equal(t, "nope", staff.Reason)

	require.NoError(t, e.admin.DeleteUser(ctx, u.ID))
}

func TestAdminPolicies(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pol, err := e.admin.CreatePolicy(ctx, otpclient.PolicyInput{
		Name: ptr("reads"), Priority: ptr(10), Action: ptr("auto_approve"),
		Conditions: map[string]any{"action": map[string]any{"equals": "file.read"}},
		Token:      &otpclient.TokenTerms{TTL: ptr(60), Uses: ptr(2)},
	})
	require.NoError(t, err)
	require.Equal(t, "api", pol.Source)
	require.Equal(t, 60, *pol.Token.TTL)
	_, err = e.admin.CreatePolicy(ctx, otpclient.PolicyInput{Name: ptr("bad"), Action: ptr("maybe")})
	require.ErrorIs(t, err, otpclient.ErrValidation)
	var oe *otpclient.Error
	require.ErrorAs(t, err, &oe)
	require.Contains(t, oe.Details, "action")

	got, err := e.admin.GetPolicy(ctx, pol.ID)
	require.NoError(t, err)
	require.Equal(t, "reads", got.Name)
	upd, err := e.admin.UpdatePolicy(ctx, pol.ID, otpclient.PolicyInput{Priority: ptr(20), IsActive: ptr(false)})
	require.NoError(t, err)
	require.Equal(t, 20, upd.Priority)
	require.False(t, upd.IsActive)
	list, _, err := e.admin.ListPolicies(ctx, otpclient.ListOptions{})
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.NoError(t, e.admin.DeletePolicy(ctx, pol.ID))
	_, err = e.admin.GetPolicy(ctx, pol.ID)
	require.ErrorIs(t, err, otpclient.ErrNotFound)
}

func TestAdminApprovalsAndAudit(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client()
	var ids []string
	for _, action := range []string{"human.a", "human.b", "auto.c"} {
		p, err := c.RequestPermission(ctx, otpclient.Request{Action: action, Scope: map[string]any{"n": 1}})
		require.NoError(t, err)
		ids = append(ids, p.ID)
	}
	queue, info, err := e.admin.Approvals(ctx, "", otpclient.ListOptions{})
	require.NoError(t, err)
	require.Equal(t, 2, info.Total)
	require.Len(t, queue, 2)
	require.Equal(t, map[string]any{"n": float64(1)}, queue[0].RequestedScope)
	d, err := e.admin.Decide(ctx, ids[0], otpclient.Decision{Approved: true, Reason: "ok"})
	require.NoError(t, err)
	require.Empty(t, d.Token, "a decider never sees the token")
	_, err = e.admin.Revoke(ctx, ids[1], "withdrawn")
	require.NoError(t, err)

	page, err := e.admin.Audit(ctx, otpclient.AuditQuery{Limit: 2})
	require.NoError(t, err)
	require.Len(t, page.Events, 2)
	require.True(t, page.HasMore)
	next, err := e.admin.Audit(ctx, otpclient.AuditQuery{Limit: 2, Cursor: page.NextCursor})
	require.NoError(t, err)
	require.Less(t, next.Events[0].Seq, page.Events[1].Seq)

	perm, err := e.admin.AuditPermission(ctx, ids[0])
	require.NoError(t, err)
	var types []string
	for _, ev := range perm.Events {
		types = append(types, ev.EventType)
	}
	require.Equal(t, []string{"request", "approve"}, types)
	byAgent, err := e.admin.AuditAgent(ctx, e.agent.ID, otpclient.AuditQuery{EventType: "request"})
	require.NoError(t, err)
	require.Len(t, byAgent.Events, 3)

	stats, err := e.admin.AuditStats(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(3), stats.ByEventType["request"])
	rep, err := e.admin.VerifyAudit(ctx)
	require.NoError(t, err)
	require.True(t, rep.OK)

	var n int64
	require.NoError(t, e.admin.ExportAudit(ctx, func(ev otpclient.AuditEvent) error {
		n++
		require.Equal(t, n, ev.Seq)
		return nil
	}))
	require.Equal(t, rep.Checked, n)
	var buf bytes.Buffer
	require.NoError(t, e.admin.ExportAuditTo(ctx, &buf))
	require.Equal(t, int(n), bytes.Count(buf.Bytes(), []byte("\n")))
	require.NotContains(t, buf.String(), "otp_", "no token in the audit")
}
