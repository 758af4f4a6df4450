package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func nested(depth int) map[string]any {
	m := map[string]any{"leaf": "x"}
	for range depth - 1 {
		m = map[string]any{"n": m}
	}
	return m
}

func manyKeys(n int) map[string]any {
	m := make(map[string]any, n)
	for i := range n {
		m[fmt.Sprintf("k%05d", i)] = i
	}
	return m
}

// TestBadInput: every malformed request gets the documented error envelope
// with the right code, and the server keeps working afterwards.
func TestBadInput(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("fuzzy")
	grant := e.grant(agent.Key, nil)
	pend := e.pending(agent.Key, "needs.human")

	const reqPath = "/api/v1/permissions/request"
	big := `{"action":"auto.x","context":{"blob":"` + strings.Repeat("a", 2<<20) + `"}}`

	cases := []struct {
		name   string
		path   string
		key    string
		body   any
		status int
		code   string
		field  string // the message must name it
	}{
		{"malformed JSON", reqPath, agent.Key, `{"action":`, 400, "VALIDATION_ERROR", ""},
		{"not JSON", reqPath, agent.Key, `action=x`, 400, "VALIDATION_ERROR", ""},
		{"array body", reqPath, agent.Key, `[{"action":"x"}]`, 400, "VALIDATION_ERROR", ""},
		{"string body", reqPath, agent.Key, `"auto.x"`, 400, "VALIDATION_ERROR", ""},
		{"missing action", reqPath, agent.Key, `{}`, 400, "VALIDATION_ERROR", "action"},
		{"ttl as string", reqPath, agent.Key, `{"action":"auto.x","ttl":"300"}`, 400, "VALIDATION_ERROR", "ttl"},
		{"ttl as float", reqPath, agent.Key, `{"action":"auto.x","ttl":300.5}`, 400, "VALIDATION_ERROR", "ttl"},
		{"ttl 29", reqPath, agent.Key, `{"action":"auto.x","ttl":29}`, 400, "VALIDATION_ERROR", "ttl"},
		{"ttl 3601", reqPath, agent.Key, `{"action":"auto.x","ttl":3601}`, 400, "VALIDATION_ERROR", "ttl"},
		{"ttl 0", reqPath, agent.Key, `{"action":"auto.x","ttl":0}`, 400, "VALIDATION_ERROR", "ttl"},
		{"ttl negative", reqPath, agent.Key, `{"action":"auto.x","ttl":-5}`, 400, "VALIDATION_ERROR", "ttl"},
		{"ttl overflow", reqPath, agent.Key, `{"action":"auto.x","ttl":99999999999999999999}`, 400, "VALIDATION_ERROR", "ttl"},
		// Seconds that wrap around to 300 once made a time.Duration.
		{"ttl wrapping into range", reqPath, agent.Key, `{"action":"auto.x","ttl":36028797018964268}`, 400, "VALIDATION_ERROR", "ttl"},
		{"approvalTtl wrapping into range", reqPath, agent.Key, `{"action":"x","approvalTtl":36028797018963998}`, 400, "VALIDATION_ERROR", "approvalTtl"},
		{"approvalTtl 29", reqPath, agent.Key, `{"action":"x","approvalTtl":29}`, 400, "VALIDATION_ERROR", "approvalTtl"},
		{"approvalTtl over 24h", reqPath, agent.Key, `{"action":"x","approvalTtl":86401}`, 400, "VALIDATION_ERROR", "approvalTtl"},
		{"approvalTtl as string", reqPath, agent.Key, `{"action":"x","approvalTtl":"60"}`, 400, "VALIDATION_ERROR", "approvalTtl"},
		{"uses 0", reqPath, agent.Key, `{"action":"auto.x","uses":0}`, 400, "VALIDATION_ERROR", "uses"},
		{"uses 1001", reqPath, agent.Key, `{"action":"auto.x","uses":1001}`, 400, "VALIDATION_ERROR", "uses"},
		{"uses as bool", reqPath, agent.Key, `{"action":"auto.x","uses":true}`, 400, "VALIDATION_ERROR", "uses"},
		{"scope as array", reqPath, agent.Key, `{"action":"auto.x","scope":["a","b"]}`, 400, "VALIDATION_ERROR", "scope"},
		{"scope as string", reqPath, agent.Key, `{"action":"auto.x","scope":"all"}`, 400, "VALIDATION_ERROR", "scope"},
		{"context as number", reqPath, agent.Key, `{"action":"auto.x","context":7}`, 400, "VALIDATION_ERROR", "context"},
		{"action as number", reqPath, agent.Key, `{"action":7}`, 400, "VALIDATION_ERROR", "action"},
		{"action too long", reqPath, agent.Key, map[string]any{"action": strings.Repeat("a", 256)}, 400, "VALIDATION_ERROR", "action"},
		{"resource too long", reqPath, agent.Key, map[string]any{"action": "auto.x", "resource": strings.Repeat("r", 1025)}, 400, "VALIDATION_ERROR", "resource"},
		{"NUL in action", reqPath, agent.Key, `{"action":"auto.x\u0000y"}`, 400, "VALIDATION_ERROR", "action"},
		{"newline in action", reqPath, agent.Key, `{"action":"auto.x\ny"}`, 400, "VALIDATION_ERROR", "action"},
		{"NUL in scope value", reqPath, agent.Key, `{"action":"auto.x","scope":{"a":"b\u0000"}}`, 400, "VALIDATION_ERROR", "scope"},
		{"NUL in scope key", reqPath, agent.Key, `{"action":"auto.x","scope":{"a\u0000":"b"}}`, 400, "VALIDATION_ERROR", "scope"},
		{"empty scope key", reqPath, agent.Key, `{"action":"auto.x","scope":{"":"b"}}`, 400, "VALIDATION_ERROR", "scope"},
		{"invalid UTF-8 in action", reqPath, agent.Key, []byte("{\"action\":\"auto.\xff\xfe\"}"), 400, "VALIDATION_ERROR", ""},
		{"invalid UTF-8 in scope", reqPath, agent.Key, []byte("{\"action\":\"auto.x\",\"scope\":{\"k\":\"\xc3\x28\"}}"), 400, "VALIDATION_ERROR", ""},
		{"overlong UTF-8", reqPath, agent.Key, []byte("{\"action\":\"auto.\xc0\xaf\"}"), 400, "VALIDATION_ERROR", ""},
		{"scope with 10000 keys", reqPath, agent.Key, map[string]any{"action": "auto.x", "scope": manyKeys(10000)}, 400, "VALIDATION_ERROR", "scope"},
		{"context with 10000 keys", reqPath, agent.Key, map[string]any{"action": "auto.x", "context": manyKeys(10000)}, 400, "VALIDATION_ERROR", "context"},
		{"scope nested 20 deep", reqPath, agent.Key, map[string]any{"action": "auto.x", "scope": nested(20)}, 400, "VALIDATION_ERROR", "scope"},
		{"context nested 18 deep", reqPath, agent.Key, map[string]any{"action": "auto.x", "context": nested(18)}, 400, "VALIDATION_ERROR", "context"},
		{"deep arrays", reqPath, agent.Key, `{"action":"auto.x","scope":{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}}`, 400, "VALIDATION_ERROR", "scope"},
		{"unknown field", reqPath, agent.Key, `{"action":"auto.x","tokenTtl":60}`, 400, "VALIDATION_ERROR", "tokenTtl"},
		{"unknown field userId", reqPath, agent.Key, `{"action":"auto.x","userId":"usr_x"}`, 400, "VALIDATION_ERROR", "userId"},
		{"trailing garbage", reqPath, agent.Key, `{"action":"auto.x"} garbage`, 400, "VALIDATION_ERROR", ""},
		{"two objects", reqPath, agent.Key, `{"action":"auto.x"}{"action":"auto.y"}`, 400, "VALIDATION_ERROR", ""},
		{"trailing brace", reqPath, agent.Key, `{"action":"auto.x"}}`, 400, "VALIDATION_ERROR", ""},
		{"2 MiB body", reqPath, agent.Key, big, 413, "PAYLOAD_TOO_LARGE", ""},
		{"2 MiB body on use", "/api/v1/permissions/" + grant.ID + "/use", agent.Key, `{"token":"` + strings.Repeat("t", 2<<20) + `"}`, 413, "PAYLOAD_TOO_LARGE", ""},

		{"decide approved as string", "/api/v1/permissions/" + pend.ID + "/decide", e.adminKey, `{"approved":"yes"}`, 400, "VALIDATION_ERROR", "approved"},
		{"decide without approved", "/api/v1/permissions/" + pend.ID + "/decide", e.adminKey, `{"reason":"x"}`, 400, "VALIDATION_ERROR", "approved"},
		{"decide unknown field", "/api/v1/permissions/" + pend.ID + "/decide", e.adminKey, `{"approved":true,"token":"x"}`, 400, "VALIDATION_ERROR", "token"},
		{"decide reason with NUL", "/api/v1/permissions/" + pend.ID + "/decide", e.adminKey, `{"approved":true,"reason":"a\u0000"}`, 400, "VALIDATION_ERROR", "reason"},
		{"decide reason too long", "/api/v1/permissions/" + pend.ID + "/decide", e.adminKey, map[string]any{"approved": true, "reason": strings.Repeat("r", 1001)}, 400, "VALIDATION_ERROR", "reason"},
		{"decide scopeModifications array", "/api/v1/permissions/" + pend.ID + "/decide", e.adminKey, `{"approved":true,"scopeModifications":[1]}`, 400, "VALIDATION_ERROR", "scopeModifications"},
		{"deny with scopeModifications", "/api/v1/permissions/" + pend.ID + "/decide", e.adminKey, `{"approved":false,"scopeModifications":{"a":1}}`, 400, "VALIDATION_ERROR", "scopeModifications"},

		{"use without token", "/api/v1/permissions/" + grant.ID + "/use", agent.Key, `{}`, 400, "VALIDATION_ERROR", "token"},
		{"use token as number", "/api/v1/permissions/" + grant.ID + "/use", agent.Key, `{"token":123}`, 400, "VALIDATION_ERROR", "token"},
		{"use details as array", "/api/v1/permissions/" + grant.ID + "/use", agent.Key, `{"token":"` + grant.Token + `","actionDetails":[1]}`, 400, "VALIDATION_ERROR", "actionDetails"},
		{"use details with 10000 keys", "/api/v1/permissions/" + grant.ID + "/use", agent.Key, map[string]any{"token": grant.Token, "actionDetails": manyKeys(10000)}, 400, "VALIDATION_ERROR", "actionDetails"},
		{"use unknown field", "/api/v1/permissions/" + grant.ID + "/use", agent.Key, `{"token":"` + grant.Token + `","details":{}}`, 400, "VALIDATION_ERROR", "details"},
		{"verify without token", "/api/v1/permissions/" + grant.ID + "/verify", agent.Key, `{}`, 400, "VALIDATION_ERROR", "token"},

		{"agent without name", "/api/v1/agents", e.adminKey, `{"description":"x"}`, 400, "VALIDATION_ERROR", "name"},
		{"agent name with newline", "/api/v1/agents", e.adminKey, `{"name":"a\nb"}`, 400, "VALIDATION_ERROR", "name"},
		{"agent metadata 10000 keys", "/api/v1/agents", e.adminKey, map[string]any{"name": "m", "metadata": manyKeys(10000)}, 400, "VALIDATION_ERROR", "metadata"},
		{"agent isActive on create", "/api/v1/agents", e.adminKey, `{"name":"x","isActive":false}`, 400, "VALIDATION_ERROR", "isActive"},
		{"user bad role", "/api/v1/users", e.adminKey, `{"name":"u","role":"root"}`, 400, "VALIDATION_ERROR", "role"},
		{"user telegramId string", "/api/v1/users", e.adminKey, `{"name":"u","role":"approver","telegramId":"12"}`, 400, "VALIDATION_ERROR", "telegramId"},
		{"policy bad action", "/api/v1/policies", e.adminKey, `{"name":"p","action":"allow_everything"}`, 400, "VALIDATION_ERROR", "action"},
		{"policy quorum 11", "/api/v1/policies", e.adminKey, `{"name":"p","action":"require_approval","quorum":11}`, 400, "VALIDATION_ERROR", "quorum"},
		{"approvals bad status", "/api/v1/approvals?status=bogus", e.adminKey, nil, 400, "VALIDATION_ERROR", "status"},
		{"approvals limit 0", "/api/v1/approvals?limit=0", e.adminKey, nil, 400, "VALIDATION_ERROR", "limit"},
		{"audit bad date", "/api/v1/audit?startDate=yesterday", e.adminKey, nil, 400, "VALIDATION_ERROR", "startDate"},
		{"audit bad cursor", "/api/v1/audit?cursor=abc", e.adminKey, nil, 400, "VALIDATION_ERROR", "cursor"},
		{"audit bad event type", "/api/v1/audit?eventType=drop", e.adminKey, nil, 400, "VALIDATION_ERROR", "eventType"},
		{"audit export format", "/api/v1/audit/export?format=csv", e.adminKey, nil, 400, "VALIDATION_ERROR", "format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := "POST"
			if c.body == nil {
				method = "GET"
			}
			r := e.do(method, c.path, c.key, c.body)
			er := r.fail(t, c.status, c.code)
			if c.field != "" {
				require.Contains(t, er.Message, c.field, "the message names the field")
			}
			require.NotContains(t, er.Message, "json:", "no Go internals in messages")
			require.LessOrEqual(t, len(r.Body), 4096, "error bodies do not echo input")
		})
	}

	// After all that the server still answers and works normally.
	e.do("GET", "/health", "", nil).data(t, http.StatusOK, nil)
	p := e.grant(agent.Key, map[string]any{"scope": nested(5), "context": manyKeys(256)})
	require.True(t, e.use(agent.Key, p.ID, p.Token, nested(5)).Success)
	require.True(t, e.use(agent.Key, grant.ID, grant.Token, nil).Success, "bad requests spent nothing")
	var still permView
	e.do("GET", "/api/v1/permissions/"+pend.ID, agent.Key, nil).data(t, http.StatusOK, &still)
	require.Equal(t, "pending", still.Status)
	var v map[string]any
	e.do("GET", "/api/v1/audit/verify", e.adminKey, nil).data(t, http.StatusOK, &v)
	require.Equal(t, true, v["ok"])
}

// TestLimitsAccepted: the edges of the documented ranges are accepted.
func TestLimitsAccepted(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("edges")
	for _, body := range []map[string]any{
		{"action": "auto.x", "ttl": 30, "uses": 1},
		{"action": "auto.x", "ttl": 3600, "uses": 1000},
		{"action": "auto.x", "scope": manyKeys(256)},
		{"action": strings.Repeat("a", 255), "resource": strings.Repeat("r", 1024)},
	} {
		r := e.do("POST", "/api/v1/permissions/request", agent.Key, body)
		require.Contains(t, []int{http.StatusCreated, http.StatusAccepted}, r.Status, "body: %s", r.Body)
	}
	e.request(agent.Key, map[string]any{"action": "x", "approvalTtl": 30}, http.StatusAccepted)
	e.request(agent.Key, map[string]any{"action": "x", "approvalTtl": 86400}, http.StatusAccepted)
	// A body just under 1 MiB is read (and judged on its content).
	under := `{"action":"auto.x"` + strings.Repeat(" ", 1<<20-64) + `}` // httpapi.MaxBodyBytes is 1 MiB
	e.do("POST", "/api/v1/permissions/request", agent.Key, under).data(t, http.StatusCreated, nil)
	// Whitespace after the object is fine.
	e.do("POST", "/api/v1/permissions/request", agent.Key, "{\"action\":\"auto.x\"}\n\n  ").data(t, http.StatusCreated, nil)
}

// TestHostileStrings: SQL metacharacters and unusual Unicode travel through
// every text field and come back byte for byte.
func TestHostileStrings(t *testing.T) {
	e := newTestServer(t)
	hostile := []string{
		`'; DROP TABLE permissions;--`,
		`" OR 1=1 --`,
		`\'\"\\ back\\slash \x00-not-a-nul`,
		`Robert'); DELETE FROM audit_events WHERE ('1'='1`,
		"日本語 ✓ Ελληνικά עברית",
		"emoji 🔥🚀👩‍👩‍👧 family",
		"%s %d %n {{.}} ${jndi:ldap://x} <script>alert(1)</script> & &amp;",
		"tab\tinside",
		"\u202eRTL override \u200b zero width",
	}
	for i, s := range hostile {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			// Agent with hostile name, description, metadata.
			var a agentView
			e.do("POST", "/api/v1/agents", e.adminKey, map[string]any{
				"name": fmt.Sprintf("%d %s", i, s), "description": s, "metadata": map[string]any{s: s, "k": []any{s}},
			}).data(t, http.StatusCreated, &a)
			var ag agentView
			e.do("GET", "/api/v1/agents/"+a.ID, e.adminKey, nil).data(t, http.StatusOK, &ag)
			require.Equal(t, fmt.Sprintf("%d %s", i, s), ag.Name)
			require.Equal(t, s, ag.Description)
			require.Equal(t, map[string]any{s: s, "k": []any{s}}, ag.Metadata)

			var u userView
			e.do("POST", "/api/v1/users", e.adminKey, map[string]any{"name": fmt.Sprintf("u%d %s", i, s), "role": "approver"}).
				data(t, http.StatusCreated, &u)
			var ug userView
			e.do("GET", "/api/v1/users/"+u.ID, e.adminKey, nil).data(t, http.StatusOK, &ug)
			require.Equal(t, fmt.Sprintf("u%d %s", i, s), ug.Name)

			scope := map[string]any{s: s, "nested": map[string]any{s: []any{s, 1.5}}}
			ctx := map[string]any{"why": s, s: true}
			p := e.request(a.APIKey, map[string]any{
				"action": "hostile." + s, "resource": s, "scope": scope, "context": ctx, "idempotencyKey": s,
			}, http.StatusAccepted)
			require.Equal(t, "hostile."+s, p.Action)
			require.Equal(t, s, p.Resource)
			require.Equal(t, scope, p.Scope)
			require.Equal(t, ctx, p.Context)

			// The same idempotency key finds it again.
			again := e.request(a.APIKey, map[string]any{
				"action": "hostile." + s, "resource": s, "scope": scope, "context": ctx, "idempotencyKey": s,
			}, http.StatusAccepted)
			require.Equal(t, p.ID, again.ID)

			var d permView
			e.decide(u.APIKey, p.ID, true, s).data(t, http.StatusOK, &d)
			require.Equal(t, s, d.DecisionReason)

			got := e.fetchToken(a.APIKey, p.ID)
			require.Equal(t, "hostile."+s, got.Action)
			require.Equal(t, s, got.Resource)
			require.Equal(t, scope, got.Scope)
			require.Equal(t, ctx, got.Context)
			require.Equal(t, s, got.DecisionReason)

			u2 := e.use(a.APIKey, p.ID, got.Token, scope) // a use states what the scope fixes
			require.True(t, u2.Success, u2.Reason)

			ev := e.auditOf(p.ID)
			require.Equal(t, []string{"request", "approve", "token_issue", "use"}, eventTypes(ev))
			require.Equal(t, s, ev[0].Details["resource"])
			require.Equal(t, s, ev[1].Details["reason"])
			require.Equal(t, scope, ev[3].Details["actionDetails"])
		})
	}
	// The tables survived and the chain is intact.
	var v map[string]any
	e.do("GET", "/api/v1/audit/verify", e.adminKey, nil).data(t, http.StatusOK, &v)
	require.Equal(t, true, v["ok"])
	var agents []agentView
	e.do("GET", "/api/v1/agents?limit=100", e.adminKey, nil).data(t, http.StatusOK, &agents)
	require.Len(t, agents, len(hostile))

	// Export lines are valid JSON each.
	r := e.do("GET", "/api/v1/audit/export", e.adminKey, nil)
	require.Equal(t, http.StatusOK, r.Status)
	for line := range bytes.Lines(r.Body) {
		require.True(t, json.Valid(line), "line %q", line)
	}
}

// TestExactKeys: encoding/json matches field names case-insensitively and
// lets a duplicate key win; both would let a body say something other than
// what a reviewer reads, so both are refused.
func TestExactKeys(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("exact")
	p := e.pending(agent.Key, "needs.human")
	for _, c := range []struct {
		path, key, body, field string
	}{
		{"/api/v1/permissions/" + p.ID + "/decide", e.adminKey, `{"approved":false,"Approved":true}`, "Approved"},
		{"/api/v1/permissions/request", agent.Key, `{"ACTION":"auto.x"}`, "ACTION"},
		{"/api/v1/permissions/request", agent.Key, `{"action":"auto.x","TTL":60}`, "TTL"},
		{"/api/v1/permissions/request", agent.Key, `{"action":"deny.x","action":"auto.y"}`, "action"},
		{"/api/v1/permissions/request", agent.Key, `{"action":"auto.x","scope":{"a":1,"a":2}}`, "scope.a"},
		{"/api/v1/policies", e.adminKey, `{"name":"p","action":"deny","token":{"TTL":60}}`, "token.TTL"},
	} {
		err := e.do("POST", c.path, c.key, c.body).fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
		require.Contains(t, err.Message, c.field, c.body)
	}
	// Nothing was decided or created along the way.
	var got permView
	e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &got)
	require.Equal(t, "pending", got.Status)
}

// TestDeepNestingIsCheap: a body that is nothing but brackets is refused
// quickly, without recursing once per bracket.
func TestDeepNestingIsCheap(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("nester")
	for _, body := range []string{
		strings.Repeat("[", 900_000),
		`{"action":"auto.x","scope":` + strings.Repeat(`{"a":`, 100_000) + "1" + strings.Repeat("}", 100_000) + "}",
	} {
		start := time.Now()
		err := e.do("POST", "/api/v1/permissions/request", agent.Key, body).fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
		require.Less(t, time.Since(start), 2*time.Second, err.Message)
	}
}
