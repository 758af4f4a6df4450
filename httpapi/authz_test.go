package httpapi_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// TestCrossAgentAccess: agent A can do nothing to agent B's permission, and
// learns nothing either: every route answers 404 as for a missing id.
func TestCrossAgentAccess(t *testing.T) {
	e := newTestServer(t)
	a := e.createAgent("alice-bot")
	b := e.createAgent("bob-bot")

	grantB := e.grant(b.Key, map[string]any{"uses": 2, "scope": map[string]any{"max_rows": 10}})
	pendB := e.pending(b.Key, "db.export")
	missing := string(agentotp.NewPermissionID())

	for _, target := range []struct{ name, id string }{{"approved", grantB.ID}, {"pending", pendB.ID}, {"missing", missing}} {
		t.Run(target.name, func(t *testing.T) {
			cases := []struct {
				name, method, path string
				body               any
			}{
				{"get", "GET", "/api/v1/permissions/" + target.id, nil},
				{"get wait", "GET", "/api/v1/permissions/" + target.id + "?wait=1s", nil},
				{"events", "GET", "/api/v1/permissions/" + target.id + "/events", nil},
				{"verify", "POST", "/api/v1/permissions/" + target.id + "/verify", map[string]any{"token": grantB.Token}},
				{"use", "POST", "/api/v1/permissions/" + target.id + "/use", map[string]any{"token": grantB.Token}},
				{"revoke", "POST", "/api/v1/permissions/" + target.id + "/revoke", map[string]any{}},
			}
			var bodies []string
			for _, c := range cases {
				r := e.do(c.method, c.path, a.Key, c.body)
				er := r.fail(t, http.StatusNotFound, "NOT_FOUND")
				require.NotContains(t, string(r.Body), b.ID, c.name)
				bodies = append(bodies, er.Message)
			}
			// Same answer as for an id that does not exist.
			for _, m := range bodies {
				require.Equal(t, "permission request not found", m)
			}
		})
	}

	// B's permissions are untouched.
	v := e.verify(b.Key, grantB.ID, grantB.Token)
	require.True(t, v.Valid, v.Reason)
	require.Equal(t, 2, *v.UsesRemaining)
	var p permView
	e.do("GET", "/api/v1/permissions/"+pendB.ID, b.Key, nil).data(t, http.StatusOK, &p)
	require.Equal(t, "pending", p.Status)
	require.Equal(t, []string{"request", "approve"}, eventTypes(e.auditOf(grantB.ID)))
	require.Equal(t, []string{"request"}, eventTypes(e.auditOf(pendB.ID)))
}

// TestRoleMatrix: which key may call which route (an agent never
// decides; approvers decide but do not administer).
func TestRoleMatrix(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("worker")
	approver := e.createUser("approver-1", "approver")
	pend := e.pending(agent.Key, "db.migrate")
	someAgent := string(agentotp.NewAgentID())

	adminOnly := []struct{ method, path string }{
		{"GET", "/api/v1/agents"},
		{"POST", "/api/v1/agents"},
		{"GET", "/api/v1/agents/" + agent.ID},
		{"PATCH", "/api/v1/agents/" + agent.ID},
		{"DELETE", "/api/v1/agents/" + agent.ID},
		{"POST", "/api/v1/agents/" + agent.ID + "/rotate-key"},
		{"GET", "/api/v1/users"},
		{"POST", "/api/v1/users"},
		{"GET", "/api/v1/users/" + approver.ID},
		{"PATCH", "/api/v1/users/" + approver.ID},
		{"DELETE", "/api/v1/users/" + approver.ID},
		{"POST", "/api/v1/users/" + approver.ID + "/rotate-key"},
		{"GET", "/api/v1/policies"},
		{"POST", "/api/v1/policies"},
		{"GET", "/api/v1/audit"},
		{"GET", "/api/v1/audit/permissions/" + pend.ID},
		{"GET", "/api/v1/audit/agents/" + someAgent},
		{"GET", "/api/v1/audit/stats"},
		{"GET", "/api/v1/audit/verify"},
		{"GET", "/api/v1/audit/export"},
	}
	staff := []struct{ method, path string }{
		{"GET", "/api/v1/approvals"},
		{"POST", "/api/v1/permissions/" + pend.ID + "/decide"},
	}
	agentOnly := []struct{ method, path string }{
		{"POST", "/api/v1/permissions/request"},
		{"GET", "/api/v1/permissions/" + pend.ID + "/events"},
		{"POST", "/api/v1/permissions/" + pend.ID + "/verify"},
		{"POST", "/api/v1/permissions/" + pend.ID + "/use"},
	}

	t.Run("agent key on staff and admin routes is 403", func(t *testing.T) {
		for _, c := range append(append(adminOnly, staff...), struct{ method, path string }{"GET", "/api/v1/approvals?status=approved"}) {
			body := map[string]any{"approved": true}
			e.do(c.method, c.path, agent.Key, body).fail(t, http.StatusForbidden, "FORBIDDEN")
		}
	})
	t.Run("approver key on admin routes is 403", func(t *testing.T) {
		for _, c := range adminOnly {
			e.do(c.method, c.path, approver.Key, map[string]any{}).fail(t, http.StatusForbidden, "FORBIDDEN")
		}
	})
	t.Run("user keys on agent-only routes are 403", func(t *testing.T) {
		for _, key := range []string{approver.Key, e.adminKey} {
			for _, c := range agentOnly {
				e.do(c.method, c.path, key, map[string]any{"action": "x", "token": "otp_x"}).
					fail(t, http.StatusForbidden, "FORBIDDEN")
			}
		}
		// Revoke is for the owning agent and admins, not approvers.
		e.do("POST", "/api/v1/permissions/"+pend.ID+"/revoke", approver.Key, nil).fail(t, http.StatusForbidden, "FORBIDDEN")
	})

	// Nothing above changed the permission; the agent's attempt to decide
	// its own request is on record.
	var p permView
	e.do("GET", "/api/v1/permissions/"+pend.ID, agent.Key, nil).data(t, http.StatusOK, &p)
	require.Equal(t, "pending", p.Status)
	require.Equal(t, []string{"request", "decide_rejected"}, eventTypes(e.auditOf(pend.ID)))

	t.Run("approver lists approvals and decides", func(t *testing.T) {
		var list []permView
		r := e.do("GET", "/api/v1/approvals?status=pending", approver.Key, nil)
		r.data(t, http.StatusOK, &list)
		require.Len(t, list, 1)
		require.Equal(t, pend.ID, list[0].ID)
		require.Equal(t, "worker", list[0].AgentName)
		var meta map[string]int
		require.NoError(t, json.Unmarshal(r.envelope(t).Meta, &meta))
		require.Equal(t, map[string]int{"page": 1, "limit": 20, "total": 1, "totalPages": 1}, meta)

		var d permView
		e.decide(approver.Key, pend.ID, true, "ok").data(t, http.StatusOK, &d)
		require.Equal(t, "approved", d.Status)
		ev := e.auditOf(pend.ID)
		require.Equal(t, []string{"request", "decide_rejected", "approve"}, eventTypes(ev))
		require.Equal(t, "user", ev[2].ActorType)
		require.Equal(t, approver.ID, ev[2].ActorID)
	})

	t.Run("admin may do everything staff may", func(t *testing.T) {
		p2 := e.pending(agent.Key, "db.vacuum")
		e.do("GET", "/api/v1/approvals", e.adminKey, nil).data(t, http.StatusOK, nil)
		e.decide(e.adminKey, p2.ID, false, "no").data(t, http.StatusOK, nil)
	})
}

// TestAuthentication: missing, malformed, wrong and disabled keys; the
// X-User-ID header of v0.1.1 grants nothing.
func TestAuthentication(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("auth-bot")
	p := e.grant(agent.Key, nil)
	adminID := func() string {
		var users []userView
		e.do("GET", "/api/v1/users", e.adminKey, nil).data(t, http.StatusOK, &users)
		require.Len(t, users, 1)
		return users[0].ID
	}()

	routes := []struct{ method, path string }{
		{"POST", "/api/v1/permissions/request"},
		{"GET", "/api/v1/permissions/" + p.ID},
		{"POST", "/api/v1/permissions/" + p.ID + "/decide"},
		{"GET", "/api/v1/approvals"},
		{"GET", "/api/v1/agents"},
		{"GET", "/api/v1/audit"},
	}
	cases := []struct {
		name   string
		header []string
	}{
		{"no key", nil},
		{"empty bearer", []string{"Authorization", "Bearer "}},
		{"basic scheme", []string{"Authorization", "Basic " + agent.Key}},
		{"key without scheme", []string{"Authorization", agent.Key}},
		{"malformed key", []string{"Authorization", "Bearer ak_short"}},
		{"wrong prefix", []string{"Authorization", "Bearer xx_" + agent.Key[3:]}},
		{"token as key", []string{"Authorization", "Bearer " + p.Token}},
		{"unknown agent key", []string{"Authorization", "Bearer " + agentotp.NewAgentKey().Reveal()}},
		{"unknown user key", []string{"Authorization", "Bearer " + agentotp.NewUserKey().Reveal()}},
		{"hash of a key", []string{"Authorization", "Bearer " + agentotp.HashSecret(e.adminKey)}},
		{"X-User-ID alone", []string{"X-User-ID", adminID}},
		{"X-User-ID with a wrong key", []string{"X-User-ID", adminID, "Authorization", "Bearer " + agentotp.NewUserKey().Reveal()}},
		{"X-API-Key header", []string{"X-API-Key", e.adminKey}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, rt := range routes {
				e.do(rt.method, rt.path, "", map[string]any{"action": "auto.x", "approved": true}, c.header...).
					fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
			}
		})
	}

	t.Run("X-User-ID with an agent key stays an agent", func(t *testing.T) {
		e.do("GET", "/api/v1/agents", agent.Key, nil, "X-User-ID", adminID).fail(t, http.StatusForbidden, "FORBIDDEN")
	})

	t.Run("disabled agent is 403 and enabled again works", func(t *testing.T) {
		e.do("PATCH", "/api/v1/agents/"+agent.ID, e.adminKey, map[string]any{"isActive": false}).data(t, http.StatusOK, nil)
		e.do("POST", "/api/v1/permissions/"+p.ID+"/use", agent.Key, map[string]any{"token": p.Token}).
			fail(t, http.StatusForbidden, "FORBIDDEN")
		e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x"}).
			fail(t, http.StatusForbidden, "FORBIDDEN")
		e.do("PATCH", "/api/v1/agents/"+agent.ID, e.adminKey, map[string]any{"isActive": true}).data(t, http.StatusOK, nil)
		require.True(t, e.verify(agent.Key, p.ID, p.Token).Valid, "the disabled attempt spent nothing")
	})

	t.Run("disabled user is 403", func(t *testing.T) {
		u := e.createUser("temp-approver", "approver")
		e.do("GET", "/api/v1/approvals", u.Key, nil).data(t, http.StatusOK, nil)
		e.do("PATCH", "/api/v1/users/"+u.ID, e.adminKey, map[string]any{"isActive": false}).data(t, http.StatusOK, nil)
		e.do("GET", "/api/v1/approvals", u.Key, nil).fail(t, http.StatusForbidden, "FORBIDDEN")
	})

	t.Run("rotated key: old one is 401, new one works", func(t *testing.T) {
		var rot agentView
		e.do("POST", "/api/v1/agents/"+agent.ID+"/rotate-key", e.adminKey, nil).data(t, http.StatusOK, &rot)
		require.NotEqual(t, agent.Key, rot.APIKey)
		e.do("POST", "/api/v1/permissions/"+p.ID+"/verify", agent.Key, map[string]any{"token": p.Token}).
			fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
		require.True(t, e.verify(rot.APIKey, p.ID, p.Token).Valid)
	})

	t.Run("deleted agent's key is 401", func(t *testing.T) {
		gone := e.createAgent("short-lived")
		e.do("DELETE", "/api/v1/agents/"+gone.ID, e.adminKey, nil).data(t, http.StatusOK, nil)
		e.do("POST", "/api/v1/permissions/request", gone.Key, map[string]any{"action": "auto.x"}).
			fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
	})

	t.Run("public routes need no key", func(t *testing.T) {
		var h map[string]any
		e.do("GET", "/health", "", nil).data(t, http.StatusOK, &h)
		require.Equal(t, "healthy", h["status"])
		e.do("GET", "/ready", "", nil).data(t, http.StatusOK, nil)
	})
}

// TestWrongShapeIDs: ids that cannot exist are 404, like missing ones.
func TestWrongShapeIDs(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("shape-bot")
	bad := []string{"123", "perm_", "perm_short", "PERM_D2XZYH79P4HKBV14PCRCTG3DJW", "agt_d2xzyh79p4hkbv14pcrctg3djw",
		"perm_d2xzyh79p4hkbv14pcrctg3dj%27", "perm_d2xzyh79p4hkbv14pcrctg3djwx", "%27%20OR%201%3D1--",
		string(agentotp.NewPermissionID())}
	for _, id := range bad {
		e.do("GET", "/api/v1/permissions/"+id, agent.Key, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("POST", "/api/v1/permissions/"+id+"/use", agent.Key, map[string]any{"token": "otp_x"}).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("POST", "/api/v1/permissions/"+id+"/decide", e.adminKey, map[string]any{"approved": true}).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("POST", "/api/v1/permissions/"+id+"/revoke", e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
		if !agentotp.PermissionID(id).Valid() {
			e.do("GET", "/api/v1/audit/permissions/"+id, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
		}
	}
	for _, id := range []string{"1", "agt_", "usr_d2xzyh79p4hkbv14pcrctg3djw", string(agentotp.NewAgentID())} {
		e.do("GET", "/api/v1/agents/"+id, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("PATCH", "/api/v1/agents/"+id, e.adminKey, map[string]any{"name": "x"}).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("DELETE", "/api/v1/agents/"+id, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("POST", "/api/v1/agents/"+id+"/rotate-key", e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	}
	for _, id := range []string{"1", "usr_", string(agentotp.NewUserID())} {
		e.do("GET", "/api/v1/users/"+id, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("DELETE", "/api/v1/users/"+id, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	}
	for _, id := range []string{"1", "pol_", string(agentotp.NewPolicyID())} {
		e.do("GET", "/api/v1/policies/"+id, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("DELETE", "/api/v1/policies/"+id, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	}
	e.do("GET", "/api/v1/nope", agent.Key, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
}
