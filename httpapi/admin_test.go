package httpapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAgentsCRUD(t *testing.T) {
	e := newTestServer(t)

	var a agentView
	e.do("POST", "/api/v1/agents", e.adminKey, map[string]any{
		"name": "crud-bot", "description": "first", "metadata": map[string]any{"team": "ops", "tier": 2},
	}).data(t, http.StatusCreated, &a)
	require.Regexp(t, `^agt_[0-9a-z]{26}$`, a.ID)
	require.Regexp(t, `^ak_[A-Za-z0-9_-]{32}$`, a.APIKey)
	require.Equal(t, a.APIKey[:8], a.APIKeyPrefix)
	require.True(t, a.IsActive)

	var got agentView
	r := e.do("GET", "/api/v1/agents/"+a.ID, e.adminKey, nil)
	r.data(t, http.StatusOK, &got)
	require.Empty(t, got.APIKey, "the key is shown only at creation")
	require.NotContains(t, string(r.Body), a.APIKey)
	require.Equal(t, "crud-bot", got.Name)
	require.Equal(t, map[string]any{"team": "ops", "tier": float64(2)}, got.Metadata)

	e.do("POST", "/api/v1/agents", e.adminKey, map[string]any{"name": "crud-bot"}).fail(t, http.StatusConflict, "CONFLICT")

	got = agentView{} // decoding into a used map would merge keys
	e.do("PATCH", "/api/v1/agents/"+a.ID, e.adminKey, map[string]any{"description": "second", "metadata": map[string]any{"team": "dev"}}).
		data(t, http.StatusOK, &got)
	require.Equal(t, "crud-bot", got.Name, "absent fields stay")
	require.Equal(t, "second", got.Description)
	require.Equal(t, map[string]any{"team": "dev"}, got.Metadata)
	var reread agentView
	e.do("GET", "/api/v1/agents/"+a.ID, e.adminKey, nil).data(t, http.StatusOK, &reread)
	require.Equal(t, map[string]any{"team": "dev"}, reread.Metadata, "metadata is replaced, as stored")
	e.do("PATCH", "/api/v1/agents/"+a.ID, e.adminKey, map[string]any{"name": "renamed"}).data(t, http.StatusOK, &got)
	require.Equal(t, "renamed", got.Name)
	require.Equal(t, "second", got.Description)

	for i := range 4 {
		e.createAgent("extra-" + string(rune('a'+i)))
	}
	var list []agentView
	r = e.do("GET", "/api/v1/agents?page=2&limit=2", e.adminKey, nil)
	r.data(t, http.StatusOK, &list)
	require.Len(t, list, 2)
	var meta map[string]int
	require.NoError(t, json.Unmarshal(r.envelope(t).Meta, &meta))
	require.Equal(t, map[string]int{"page": 2, "limit": 2, "total": 5, "totalPages": 3}, meta)
	for _, x := range list {
		require.Empty(t, x.APIKey)
	}

	// Use the agent, then delete it: history stays.
	var rot agentView
	e.do("POST", "/api/v1/agents/"+a.ID+"/rotate-key", e.adminKey, nil).data(t, http.StatusOK, &rot)
	require.NotEqual(t, a.APIKey, rot.APIKey)
	require.Equal(t, rot.APIKey[:8], rot.APIKeyPrefix)
	p := e.grant(rot.APIKey, nil)
	require.True(t, e.use(rot.APIKey, p.ID, p.Token, nil).Success)
	before := e.auditOf(p.ID)

	e.do("DELETE", "/api/v1/agents/"+a.ID, e.adminKey, nil).data(t, http.StatusOK, nil)
	e.do("GET", "/api/v1/agents/"+a.ID, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("DELETE", "/api/v1/agents/"+a.ID, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("PATCH", "/api/v1/agents/"+a.ID, e.adminKey, map[string]any{"name": "zombie"}).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("POST", "/api/v1/agents/"+a.ID+"/rotate-key", e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")

	after := e.auditOf(p.ID)
	require.Equal(t, []string{"request", "approve", "use"}, eventTypes(after))
	require.Equal(t, before, after, "deleting the agent rewrites no audit event")
	for _, ev := range after {
		require.Equal(t, a.ID, ev.AgentID)
	}
	var agentTrail []auditView
	e.do("GET", "/api/v1/audit/agents/"+a.ID+"?limit=100", e.adminKey, nil).data(t, http.StatusOK, &agentTrail)
	require.Equal(t, "agent_delete", agentTrail[0].EventType, "newest first")
	require.Equal(t, "agent_create", agentTrail[len(agentTrail)-1].EventType)

	// The permission itself is still readable by staff.
	var perm permView
	e.do("GET", "/api/v1/permissions/"+p.ID, e.adminKey, nil).data(t, http.StatusOK, &perm)
	require.Equal(t, "used", perm.Status)

	var v map[string]any
	e.do("GET", "/api/v1/audit/verify", e.adminKey, nil).data(t, http.StatusOK, &v)
	require.Equal(t, true, v["ok"], "%v", v)
	require.Greater(t, v["checked"], float64(10))

	// The name is free again.
	e.createAgent("renamed")
}

func TestUsersCRUD(t *testing.T) {
	e := newTestServer(t)
	var u userView
	e.do("POST", "/api/v1/users", e.adminKey, map[string]any{"name": "dora", "role": "approver", "telegramId": 4242}).
		data(t, http.StatusCreated, &u)
	require.Regexp(t, `^usr_[0-9a-z]{26}$`, u.ID)
	require.Regexp(t, `^uk_[A-Za-z0-9_-]{32}$`, u.APIKey)
	require.Equal(t, int64(4242), u.TelegramID)

	e.do("POST", "/api/v1/users", e.adminKey, map[string]any{"name": "dora", "role": "admin"}).fail(t, http.StatusConflict, "CONFLICT")
	e.do("POST", "/api/v1/users", e.adminKey, map[string]any{"name": "dora2", "role": "approver", "telegramId": 4242}).
		fail(t, http.StatusConflict, "CONFLICT")

	var got userView
	r := e.do("GET", "/api/v1/users/"+u.ID, e.adminKey, nil)
	r.data(t, http.StatusOK, &got)
	require.Empty(t, got.APIKey)
	require.Equal(t, "approver", got.Role)

	// Promote to admin: the same key now administers.
	e.do("GET", "/api/v1/agents", u.APIKey, nil).fail(t, http.StatusForbidden, "FORBIDDEN")
	e.do("PATCH", "/api/v1/users/"+u.ID, e.adminKey, map[string]any{"role": "admin"}).data(t, http.StatusOK, &got)
	require.Equal(t, "admin", got.Role)
	require.Equal(t, "dora", got.Name)
	e.do("GET", "/api/v1/agents", u.APIKey, nil).data(t, http.StatusOK, nil)

	var list []userView
	e.do("GET", "/api/v1/users", e.adminKey, nil).data(t, http.StatusOK, &list)
	require.Len(t, list, 2)

	var rot userView
	e.do("POST", "/api/v1/users/"+u.ID+"/rotate-key", e.adminKey, nil).data(t, http.StatusOK, &rot)
	e.do("GET", "/api/v1/agents", u.APIKey, nil).fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
	e.do("GET", "/api/v1/agents", rot.APIKey, nil).data(t, http.StatusOK, nil)

	// Nobody deletes themselves; another admin can.
	e.do("DELETE", "/api/v1/users/"+u.ID, rot.APIKey, nil).fail(t, http.StatusConflict, "CONFLICT")
	e.do("DELETE", "/api/v1/users/"+u.ID, e.adminKey, nil).data(t, http.StatusOK, nil)
	e.do("GET", "/api/v1/users/"+u.ID, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("PATCH", "/api/v1/users/"+u.ID, e.adminKey, map[string]any{"name": "x"}).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("POST", "/api/v1/users/"+u.ID+"/rotate-key", e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("GET", "/api/v1/agents", rot.APIKey, nil).fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
}

func TestPoliciesCRUD(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("pol-bot")

	type policyView struct {
		ID         string         `json:"id"`
		AgentID    *string        `json:"agentId"`
		Name       string         `json:"name"`
		Priority   int            `json:"priority"`
		Conditions map[string]any `json:"conditions"`
		Action     string         `json:"action"`
		Token      *struct {
			TTL  *int `json:"ttl"`
			Uses *int `json:"uses"`
		} `json:"token"`
		IsActive bool   `json:"isActive"`
		Source   string `json:"source"`
		ReadOnly bool   `json:"readOnly"`
	}
	var p policyView
	e.do("POST", "/api/v1/policies", e.adminKey, map[string]any{
		"name": "small refunds", "priority": 10, "agentId": agent.ID, "action": "auto_approve",
		"conditions": map[string]any{"amount": map[string]any{"lessThan": 50}}, "token": map[string]any{"ttl": 60, "uses": 2},
	}).data(t, http.StatusCreated, &p)
	require.Regexp(t, `^pol_[0-9a-z]{26}$`, p.ID)
	require.Equal(t, agent.ID, *p.AgentID)
	require.Equal(t, "auto_approve", p.Action)
	require.Equal(t, 60, *p.Token.TTL)
	require.Equal(t, 2, *p.Token.Uses)
	require.True(t, p.IsActive)
	require.Equal(t, "api", p.Source)
	require.False(t, p.ReadOnly)

	e.do("POST", "/api/v1/policies", e.adminKey, map[string]any{"name": "small refunds", "action": "deny"}).
		fail(t, http.StatusConflict, "CONFLICT")
	e.do("POST", "/api/v1/policies", e.adminKey, map[string]any{"name": "ghost", "action": "deny", "agentId": "agt_0000000000000000000000000a"}).
		fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
	e.do("POST", "/api/v1/policies", e.adminKey, map[string]any{"name": "no action"}).fail(t, http.StatusBadRequest, "VALIDATION_ERROR")

	var got policyView
	e.do("GET", "/api/v1/policies/"+p.ID, e.adminKey, nil).data(t, http.StatusOK, &got)
	require.Equal(t, p, got)

	e.do("PATCH", "/api/v1/policies/"+p.ID, e.adminKey, map[string]any{"priority": 20, "action": "deny", "isActive": false}).
		data(t, http.StatusOK, &got)
	require.Equal(t, 20, got.Priority)
	require.Equal(t, "deny", got.Action)
	require.False(t, got.IsActive)
	require.Equal(t, "small refunds", got.Name)
	e.do("PATCH", "/api/v1/policies/"+p.ID, e.adminKey, map[string]any{"agentId": agent.ID}).fail(t, http.StatusBadRequest, "VALIDATION_ERROR")

	var list []policyView
	e.do("GET", "/api/v1/policies", e.adminKey, nil).data(t, http.StatusOK, &list)
	require.Len(t, list, 1)
	require.Equal(t, p.ID, list[0].ID)

	e.do("DELETE", "/api/v1/policies/"+p.ID, e.adminKey, nil).data(t, http.StatusOK, nil)
	e.do("GET", "/api/v1/policies/"+p.ID, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("PATCH", "/api/v1/policies/"+p.ID, e.adminKey, map[string]any{"priority": 1}).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("DELETE", "/api/v1/policies/"+p.ID, e.adminKey, nil).fail(t, http.StatusNotFound, "NOT_FOUND")

	var audit []auditView
	e.do("GET", "/api/v1/audit?eventType=policy_create", e.adminKey, nil).data(t, http.StatusOK, &audit)
	require.Len(t, audit, 1)
	e.do("GET", "/api/v1/audit?eventType=policy_delete", e.adminKey, nil).data(t, http.StatusOK, &audit)
	require.Len(t, audit, 1)
}

// TestAuditPagination walks /api/v1/audit two events at a time: every
// event exactly once, newest first, the same set as the export.
func TestAuditPagination(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("paged")
	for i := range 4 {
		p := e.grant(agent.Key, nil)
		e.clock.Add(time.Minute)
		if i%2 == 0 {
			e.use(agent.Key, p.ID, p.Token, nil)
		}
	}
	pend := e.pending(agent.Key, "human.x")
	e.decide(e.adminKey, pend.ID, false, "no").data(t, http.StatusOK, nil)

	// The export is the reference: oldest first, seq 1..n.
	r := e.do("GET", "/api/v1/audit/export", e.adminKey, nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.Equal(t, "application/x-ndjson", r.Header.Get("Content-Type"))
	var all []auditView
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	for sc.Scan() {
		var ev auditView
		require.NoError(t, json.Unmarshal(sc.Bytes(), &ev))
		all = append(all, ev)
	}
	require.Greater(t, len(all), 12)
	for i, ev := range all {
		require.EqualValues(t, i+1, ev.Seq, "export is gap-free and ascending")
	}

	var walked []int64
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 100, "pagination does not terminate")
		q := url.Values{"limit": {"2"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		r := e.do("GET", "/api/v1/audit?"+q.Encode(), e.adminKey, nil)
		var page []auditView
		r.data(t, http.StatusOK, &page)
		var meta cursorMeta
		require.NoError(t, json.Unmarshal(r.envelope(t).Meta, &meta))
		require.Equal(t, 2, meta.Limit)
		require.LessOrEqual(t, len(page), 2)
		for _, ev := range page {
			walked = append(walked, ev.Seq)
		}
		if !meta.HasMore {
			require.Empty(t, meta.NextCursor)
			break
		}
		require.Len(t, page, 2)
		require.NotEmpty(t, meta.NextCursor)
		cursor = meta.NextCursor
	}
	require.Len(t, walked, len(all), "no duplicates, no gaps")
	for i, seq := range walked {
		require.EqualValues(t, len(all)-i, seq, "newest first, contiguous")
	}

	// Filters.
	var uses []auditView
	e.do("GET", "/api/v1/audit?eventType=use&agentId="+agent.ID, e.adminKey, nil).data(t, http.StatusOK, &uses)
	require.Len(t, uses, 2)
	var byPerm []auditView
	e.do("GET", "/api/v1/audit?permissionRequestId="+pend.ID, e.adminKey, nil).data(t, http.StatusOK, &byPerm)
	require.Equal(t, []string{"deny", "request"}, eventTypes(byPerm))
	start := e.clock.Now().Add(-90 * time.Second).Format(time.RFC3339Nano)
	var recent []auditView
	e.do("GET", "/api/v1/audit?startDate="+url.QueryEscape(start), e.adminKey, nil).data(t, http.StatusOK, &recent)
	require.NotEmpty(t, recent)
	require.Less(t, len(recent), len(all))

	var stats struct {
		Total       int64            `json:"total"`
		ByEventType map[string]int64 `json:"byEventType"`
	}
	e.do("GET", "/api/v1/audit/stats", e.adminKey, nil).data(t, http.StatusOK, &stats)
	require.EqualValues(t, len(all), stats.Total)
	require.EqualValues(t, 2, stats.ByEventType["use"])

	var v map[string]any
	e.do("GET", "/api/v1/audit/verify", e.adminKey, nil).data(t, http.StatusOK, &v)
	require.Equal(t, true, v["ok"])
	require.EqualValues(t, len(all), v["checked"])
	require.Equal(t, all[len(all)-1].Hash, v["lastHash"])
}

// TestAuditPermissionCursor walks one permission's trail, oldest first, two
// events a page: every event once, in order, however long the trail.
func TestAuditPermissionCursor(t *testing.T) {
	e := newTestServer(t)
	a := e.createAgent("walker")
	p := e.grant(a.Key, map[string]any{"uses": 3})
	for range 4 {
		e.use(a.Key, p.ID, p.Token, nil)
	}
	e.use(a.Key, p.ID, "otp_wrongwrongwrongwrongwrongwrong", nil)
	full := e.auditOf(p.ID)
	require.Len(t, full, 7) // request, approve (with its token), 3 uses, 2 refusals
	var walked []int64
	cursor := ""
	for pages := 0; pages < 20; pages++ {
		q := url.Values{"limit": {"2"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		r := e.do("GET", "/api/v1/audit/permissions/"+p.ID+"?"+q.Encode(), e.adminKey, nil)
		var page []auditView
		r.data(t, http.StatusOK, &page)
		var meta cursorMeta
		require.NoError(t, json.Unmarshal(r.envelope(t).Meta, &meta))
		for _, ev := range page {
			walked = append(walked, ev.Seq)
		}
		if !meta.HasMore {
			break
		}
		cursor = meta.NextCursor
	}
	require.Len(t, walked, len(full))
	for i, ev := range full {
		require.Equal(t, ev.Seq, walked[i])
	}
}
