package httpapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSeedFlow walks the v0.1.1 README flow: request → pending → a human
// approves → the agent's next read carries the token once → verify →
// use → replay refused.
func TestSeedFlow(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("mailer")

	p := e.request(agent.Key, map[string]any{
		"action": "email.send", "resource": "mailto:team@example.com",
		"scope": map[string]any{"max_emails": 1}, "context": map[string]any{"reason": "weekly report"},
	}, http.StatusAccepted)
	require.Equal(t, "pending", p.Status)
	require.True(t, strings.HasPrefix(p.ID, "perm_"))
	require.Empty(t, p.Token)
	require.Equal(t, e.srv.URL+"/ui/requests/"+p.ID, p.ApprovalURL)
	require.Equal(t, e.srv.URL+"/api/v1/permissions/"+p.ID+"?wait=30s", p.WaitURL)
	require.Equal(t, e.srv.URL+"/api/v1/permissions/"+p.ID+"/events", p.WebhookURL)
	require.True(t, strings.HasPrefix(p.DecisionID, "evt_"), "decisionId %q", p.DecisionID)
	require.Equal(t, map[string]any{"max_emails": float64(1)}, p.Scope)
	require.Equal(t, e.clock.Now().Add(300*time.Second), p.expiresAt(t), "default approval window")

	// Before the decision the agent sees pending and no token.
	var again permView
	e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &again)
	require.Equal(t, "pending", again.Status)
	require.Empty(t, again.Token)

	// The human approves: 200, and no token anywhere in the body.
	r := e.decide(e.adminKey, p.ID, true, "looks fine")
	var decided permView
	r.data(t, http.StatusOK, &decided)
	require.Equal(t, "approved", decided.Status)
	require.Equal(t, "user", decided.DecidedBy)
	require.NotContains(t, string(r.Body), "otp_")
	require.NotContains(t, string(r.Body), `"token"`)

	// The agent's next GET holds the token, once.
	got := e.fetchToken(agent.Key, p.ID)
	require.Equal(t, 1, *got.UsesRemaining)
	require.Equal(t, e.clock.Now().Add(300*time.Second), got.expiresAt(t), "default token ttl")
	r = e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil)
	var later permView
	r.data(t, http.StatusOK, &later)
	require.Equal(t, "approved", later.Status)
	require.Empty(t, later.Token)
	require.NotContains(t, string(r.Body), got.Token)

	// verify does not consume, however often it is called.
	for range 3 {
		v := e.verify(agent.Key, p.ID, got.Token)
		require.True(t, v.Valid, "reason %q", v.Reason)
		require.Equal(t, 1, *v.UsesRemaining)
		require.Equal(t, map[string]any{"max_emails": float64(1)}, v.Scope)
	}

	u := e.use(agent.Key, p.ID, got.Token, map[string]any{"emails": 1})
	require.True(t, u.Success, "reason %q", u.Reason)
	require.Equal(t, 0, u.UsesRemaining)

	u = e.use(agent.Key, p.ID, got.Token, map[string]any{"emails": 1})
	require.False(t, u.Success)
	require.Contains(t, u.Reason, "used up")

	v := e.verify(agent.Key, p.ID, got.Token)
	require.False(t, v.Valid)
	require.Nil(t, v.UsesRemaining)

	e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &later)
	require.Equal(t, "used", later.Status)
	require.Empty(t, later.Token)

	require.Equal(t, []string{"request", "approve", "token_issue", "use", "use_rejected"}, eventTypes(e.auditOf(p.ID)))
}

func TestPolicyEffects(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("bot")

	t.Run("auto_approve is 201 with a token", func(t *testing.T) {
		p := e.request(agent.Key, map[string]any{"action": "auto.read", "ttl": 60, "uses": 3}, http.StatusCreated)
		require.Equal(t, "approved", p.Status)
		require.Regexp(t, `^otp_[0-9A-Za-z]{32}$`, p.Token)
		require.Equal(t, "auto", p.DecidedBy)
		require.Equal(t, 3, *p.UsesRemaining)
		require.Equal(t, e.clock.Now().Add(60*time.Second), p.expiresAt(t))
		require.Empty(t, p.ApprovalURL)
		require.NotEmpty(t, p.DecisionID)
		// The token came in the response; a later read never repeats it.
		var again permView
		e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &again)
		require.Empty(t, again.Token)
	})

	t.Run("deny is 200 with status denied and a reason", func(t *testing.T) {
		p := e.request(agent.Key, map[string]any{"action": "deny.delete"}, http.StatusOK)
		require.Equal(t, "denied", p.Status)
		require.Equal(t, denyReason, p.Reason)
		require.Empty(t, p.Token)
		require.Empty(t, p.ApprovalURL)
		require.NotEmpty(t, p.DecisionID)
	})

	t.Run("human deny", func(t *testing.T) {
		p := e.pending(agent.Key, "db.drop")
		r := e.decide(e.adminKey, p.ID, false, "not today")
		var d permView
		r.data(t, http.StatusOK, &d)
		require.Equal(t, "denied", d.Status)
		require.Equal(t, "not today", d.Reason)
		var got permView
		e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &got)
		require.Equal(t, "denied", got.Status)
		require.Empty(t, got.Token)
		// Deciding again is a conflict.
		e.decide(e.adminKey, p.ID, true, "").fail(t, http.StatusConflict, "CONFLICT")
	})

	t.Run("staff reads never mint or see the token", func(t *testing.T) {
		approver := e.createUser("carol", "approver")
		p := e.pending(agent.Key, "payments.refund")
		e.decide(approver.Key, p.ID, true, "").data(t, http.StatusOK, nil)
		for _, key := range []string{approver.Key, e.adminKey} {
			r := e.do("GET", "/api/v1/permissions/"+p.ID, key, nil)
			var v permView
			r.data(t, http.StatusOK, &v)
			require.Equal(t, "approved", v.Status)
			require.Equal(t, agent.ID, v.AgentID)
			require.NotContains(t, string(r.Body), "otp_")
		}
		// The agent still receives it afterwards.
		e.fetchToken(agent.Key, p.ID)
	})
}

// TestTokenBinding: a token works only for its permission, its agent,
// before expiry, until revoked, for its uses.
func TestTokenBinding(t *testing.T) {
	e := newTestServer(t)
	a := e.createAgent("agent-a")
	b := e.createAgent("agent-b")

	t.Run("another permission of the same agent", func(t *testing.T) {
		p1 := e.grant(a.Key, nil)
		p2 := e.grant(a.Key, nil)
		v := e.verify(a.Key, p2.ID, p1.Token)
		require.False(t, v.Valid)
		require.Contains(t, v.Reason, "does not match")
		u := e.use(a.Key, p2.ID, p1.Token, nil)
		require.False(t, u.Success)
		require.Contains(t, u.Reason, "does not match")
		// Neither permission was spent by the attempt.
		require.True(t, e.use(a.Key, p1.ID, p1.Token, nil).Success)
		require.True(t, e.use(a.Key, p2.ID, p2.Token, nil).Success)
	})

	t.Run("another agent", func(t *testing.T) {
		p := e.grant(a.Key, nil)
		e.do("POST", "/api/v1/permissions/"+p.ID+"/use", b.Key, map[string]any{"token": p.Token}).
			fail(t, http.StatusNotFound, "NOT_FOUND")
		e.do("POST", "/api/v1/permissions/"+p.ID+"/verify", b.Key, map[string]any{"token": p.Token}).
			fail(t, http.StatusNotFound, "NOT_FOUND")
		// B's own permission does not accept A's token either.
		pb := e.grant(b.Key, nil)
		u := e.use(b.Key, pb.ID, p.Token, nil)
		require.False(t, u.Success)
		v := e.verify(a.Key, p.ID, p.Token)
		require.True(t, v.Valid)
		require.Equal(t, 1, *v.UsesRemaining)
	})

	t.Run("expiry boundary", func(t *testing.T) {
		p := e.grant(a.Key, map[string]any{"ttl": 30, "uses": 2})
		exp := p.expiresAt(t)
		require.Equal(t, e.clock.Now().Add(30*time.Second), exp)

		e.clock.Set(exp.Add(-time.Nanosecond))
		v := e.verify(a.Key, p.ID, p.Token)
		require.True(t, v.Valid, "one nanosecond before expiry: %q", v.Reason)
		u := e.use(a.Key, p.ID, p.Token, nil)
		require.True(t, u.Success, "one nanosecond before expiry: %q", u.Reason)

		e.clock.Set(exp)
		v = e.verify(a.Key, p.ID, p.Token)
		require.False(t, v.Valid, "at expiresAt the token is dead")
		require.Contains(t, v.Reason, "expired")
		u = e.use(a.Key, p.ID, p.Token, nil)
		require.False(t, u.Success)
		require.Contains(t, u.Reason, "expired")

		var got permView
		e.do("GET", "/api/v1/permissions/"+p.ID, a.Key, nil).data(t, http.StatusOK, &got)
		require.Equal(t, "expired", got.Status)
		require.Equal(t, []string{"request", "approve", "use", "use_rejected"}, eventTypes(e.auditOf(p.ID)))
	})

	t.Run("human-approved token expiry counts from the decision", func(t *testing.T) {
		p := e.pending(a.Key, "deploy.prod")
		e.clock.Add(10 * time.Second)
		e.decide(e.adminKey, p.ID, true, "").data(t, http.StatusOK, nil)
		decidedAt := e.clock.Now()
		e.clock.Add(5 * time.Second)
		got := e.fetchToken(a.Key, p.ID)
		require.Equal(t, decidedAt.Add(300*time.Second), got.expiresAt(t))
		e.clock.Set(got.expiresAt(t))
		require.False(t, e.use(a.Key, p.ID, got.Token, nil).Success)
	})

	t.Run("pending window boundary", func(t *testing.T) {
		p := e.request(a.Key, map[string]any{"action": "slow.approval", "approvalTtl": 30}, http.StatusAccepted)
		e.clock.Set(p.expiresAt(t))
		e.decide(e.adminKey, p.ID, true, "too late").fail(t, http.StatusConflict, "CONFLICT")
		var got permView
		e.do("GET", "/api/v1/permissions/"+p.ID, a.Key, nil).data(t, http.StatusOK, &got)
		require.Equal(t, "expired", got.Status)
		require.Empty(t, got.Token)
	})

	t.Run("revoked", func(t *testing.T) {
		p := e.grant(a.Key, map[string]any{"uses": 3})
		require.True(t, e.use(a.Key, p.ID, p.Token, nil).Success)
		var rv permView
		e.do("POST", "/api/v1/permissions/"+p.ID+"/revoke", a.Key, map[string]any{"reason": "done early"}).
			data(t, http.StatusOK, &rv)
		require.Equal(t, "revoked", rv.Status)
		v := e.verify(a.Key, p.ID, p.Token)
		require.False(t, v.Valid)
		require.Contains(t, v.Reason, "revoked")
		u := e.use(a.Key, p.ID, p.Token, nil)
		require.False(t, u.Success)
		require.Contains(t, u.Reason, "revoked")
		// Revoking twice is a conflict.
		e.do("POST", "/api/v1/permissions/"+p.ID+"/revoke", a.Key, nil).fail(t, http.StatusConflict, "CONFLICT")

		// An admin may revoke too.
		p2 := e.grant(a.Key, nil)
		e.do("POST", "/api/v1/permissions/"+p2.ID+"/revoke", e.adminKey, nil).data(t, http.StatusOK, nil)
		require.False(t, e.use(a.Key, p2.ID, p2.Token, nil).Success)
	})

	t.Run("after the last use; five uses give exactly five", func(t *testing.T) {
		p := e.grant(a.Key, map[string]any{"uses": 5})
		for i := 4; i >= 0; i-- {
			u := e.use(a.Key, p.ID, p.Token, nil)
			require.True(t, u.Success, "use %d: %q", 5-i, u.Reason)
			require.Equal(t, i, u.UsesRemaining)
		}
		for range 2 {
			u := e.use(a.Key, p.ID, p.Token, nil)
			require.False(t, u.Success)
			require.Contains(t, u.Reason, "used up")
		}
	})

	t.Run("tampered tokens", func(t *testing.T) {
		p := e.grant(a.Key, nil)
		flipped := []byte(p.Token)
		if flipped[10] == 'a' {
			flipped[10] = 'b'
		} else {
			flipped[10] = 'a'
		}
		for _, tok := range []string{string(flipped), p.Token[:len(p.Token)-1], p.Token + "x",
			strings.ToUpper(p.Token), " " + p.Token, "otp_", "null"} {
			u := e.use(a.Key, p.ID, tok, nil)
			require.False(t, u.Success, "token %q", tok)
			require.NotContains(t, u.Reason, p.Token)
		}
		require.True(t, e.use(a.Key, p.ID, p.Token, nil).Success)
	})

	t.Run("a use outside the granted scope is refused and spends nothing", func(t *testing.T) {
		p := e.grant(a.Key, map[string]any{"scope": map[string]any{"max_amount": 100, "allowed_currency": []any{"EUR"}}})
		u := e.use(a.Key, p.ID, p.Token, map[string]any{"amount": 101, "currency": "EUR"})
		require.False(t, u.Success)
		require.Contains(t, u.Reason, "amount")
		u = e.use(a.Key, p.ID, p.Token, map[string]any{"amount": 5, "currency": "USD"})
		require.False(t, u.Success)
		u = e.use(a.Key, p.ID, p.Token, map[string]any{"amount": 100, "currency": "EUR"})
		require.True(t, u.Success, u.Reason)
	})
}

// TestIdempotency: a retried request returns the same permission.
func TestIdempotency(t *testing.T) {
	e := newTestServer(t)
	a := e.createAgent("retrier")
	b := e.createAgent("other")

	t.Run("pending", func(t *testing.T) {
		body := map[string]any{"action": "files.delete", "resource": "/tmp/x", "idempotencyKey": "k-pending"}
		p1 := e.request(a.Key, body, http.StatusAccepted)
		p2 := e.request(a.Key, body, http.StatusAccepted)
		require.Equal(t, p1.ID, p2.ID)
		var list []permView
		e.do("GET", "/api/v1/approvals?agentId="+a.ID, e.adminKey, nil).data(t, http.StatusOK, &list)
		n := 0
		for _, p := range list {
			if p.Action == "files.delete" {
				n++
			}
		}
		require.Equal(t, 1, n, "one permission in the store")
		// The Idempotency-Key header works the same way.
		h1 := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "files.move"}, "Idempotency-Key", "hdr-1")
		h2 := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "files.move"}, "Idempotency-Key", "hdr-1")
		var v1, v2 permView
		h1.data(t, http.StatusAccepted, &v1)
		h2.data(t, http.StatusAccepted, &v2)
		require.Equal(t, v1.ID, v2.ID)
	})

	t.Run("auto-approved retry re-issues the token and kills the old one", func(t *testing.T) {
		body := map[string]any{"action": "auto.charge", "resource": "card:1", "idempotencyKey": "k-auto", "uses": 2}
		p1 := e.request(a.Key, body, http.StatusCreated)
		p2 := e.request(a.Key, body, http.StatusCreated)
		require.Equal(t, p1.ID, p2.ID)
		require.NotEmpty(t, p2.Token)
		require.NotEqual(t, p1.Token, p2.Token)
		require.False(t, e.verify(a.Key, p1.ID, p1.Token).Valid, "the first token must be dead")
		require.False(t, e.use(a.Key, p1.ID, p1.Token, nil).Success)
		u := e.use(a.Key, p2.ID, p2.Token, nil)
		require.True(t, u.Success)
		require.Equal(t, 1, u.UsesRemaining)
		// Once used, a retry returns the permission but no new token.
		p3 := e.request(a.Key, body, http.StatusCreated)
		require.Equal(t, p1.ID, p3.ID)
		require.Empty(t, p3.Token)
		require.True(t, e.verify(a.Key, p1.ID, p2.Token).Valid)
	})

	t.Run("same key, different request is a conflict", func(t *testing.T) {
		e.request(a.Key, map[string]any{"action": "auto.x", "idempotencyKey": "k-conf"}, http.StatusCreated)
		e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "auto.y", "idempotencyKey": "k-conf"}).
			fail(t, http.StatusConflict, "CONFLICT")
		e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "auto.x", "resource": "r", "idempotencyKey": "k-conf"}).
			fail(t, http.StatusConflict, "CONFLICT")
		e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "auto.x", "scope": map[string]any{"max": 9}, "idempotencyKey": "k-conf"}).
			fail(t, http.StatusConflict, "CONFLICT")
	})

	t.Run("keys are per agent", func(t *testing.T) {
		pa := e.request(a.Key, map[string]any{"action": "auto.z", "idempotencyKey": "shared"}, http.StatusCreated)
		pb := e.request(b.Key, map[string]any{"action": "auto.z", "idempotencyKey": "shared"}, http.StatusCreated)
		require.NotEqual(t, pa.ID, pb.ID)
		require.True(t, e.verify(a.Key, pa.ID, pa.Token).Valid)
	})
}
