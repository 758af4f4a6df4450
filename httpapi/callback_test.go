package httpapi_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func TestCallbackURLOnTheWire(t *testing.T) {
	e := newTestServer(t, withCallbacks([]string{"hooks.example.com", "127.0.0.1:9999"}, nil))
	a := e.createAgent("cb")
	approver := e.createUser("cb-approver", "approver")
	const cb = "https://hooks.example.com/agentotp?agent=cb"

	t.Run("accepted and returned to the owner", func(t *testing.T) {
		p := e.request(a.Key, map[string]any{"action": "gmail.send", "callbackUrl": cb}, http.StatusAccepted)
		require.Equal(t, cb, p.CallbackURL)
		var got permView
		e.do("GET", "/api/v1/permissions/"+p.ID, a.Key, nil).data(t, http.StatusOK, &got)
		require.Equal(t, cb, got.CallbackURL)

		// Approvers see the request, not where its outcome goes.
		var staff permView
		r := e.do("GET", "/api/v1/permissions/"+p.ID, approver.Key, nil)
		r.data(t, http.StatusOK, &staff)
		require.Equal(t, p.ID, staff.ID)
		require.Empty(t, staff.CallbackURL)
		require.NotContains(t, string(r.Body), "hooks.example.com")
		r = e.do("GET", "/api/v1/approvals?status=pending", approver.Key, nil)
		require.Equal(t, http.StatusOK, r.Status)
		require.NotContains(t, string(r.Body), "hooks.example.com")

		g := e.grant(a.Key, map[string]any{"callbackUrl": "http://127.0.0.1:9999/cb"})
		require.Equal(t, "http://127.0.0.1:9999/cb", g.CallbackURL)
		plain := e.grant(a.Key, nil)
		require.Empty(t, plain.CallbackURL)
	})

	refused := []struct {
		name    string
		value   any
		problem string
	}{
		{"not on the allow-list", "https://evil.example/cb", "not on the callback allow-list (--callback-allow)"},
		{"listed address under another name", "http://localhost:9999/cb", "not on the callback allow-list"},
		{"listed host on another port", "https://hooks.example.com:8443/cb", "not on the callback allow-list"},
		{"not http", "ftp://hooks.example.com/cb", "absolute http or https"},
		{"relative", "/cb", "absolute http or https"},
		{"user information", "https://u:p@hooks.example.com/cb", "user information"},
		{"fragment", "https://hooks.example.com/cb#x", "fragment"},
		{"too long", "https://hooks.example.com/" + strings.Repeat("a", 2048), "at most 2048 bytes"},
		{"control character", "https://hooks.example.com/\u0007", "printable"},
		{"not a string", 42, "callbackUrl"},
	}
	for _, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			r := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "gmail.send", "callbackUrl": tc.value})
			er := r.fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
			require.Contains(t, er.Message, "callbackUrl")
			require.Contains(t, er.Message, tc.problem)
		})
	}

	t.Run("refused when no allow-list is configured", func(t *testing.T) {
		e := newTestServer(t)
		a := e.createAgent("cb")
		r := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "gmail.send", "callbackUrl": cb})
		er := r.fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
		require.Contains(t, er.Details, "callbackUrl")
	})
}

func TestAgentCallbackSecret(t *testing.T) {
	ctx := context.Background()
	key := []byte(strings.Repeat("s", 32))
	e := newTestServer(t, withCallbacks(nil, key))

	var created agentView
	e.do("POST", "/api/v1/agents", e.adminKey, map[string]any{"name": "signed"}).data(t, http.StatusCreated, &created)
	stored, err := e.store.Agent(ctx, agentotp.AgentID(created.ID))
	require.NoError(t, err)
	require.Equal(t, agentotp.CallbackSecret(key, stored).Reveal(), created.CallbackSecret)
	require.True(t, strings.HasPrefix(created.CallbackSecret, agentotp.CallbackSecretPrefix))

	// Shown once, like the key: reads and lists leave it out.
	for _, path := range []string{"/api/v1/agents/" + created.ID, "/api/v1/agents"} {
		r := e.do("GET", path, e.adminKey, nil)
		require.Equal(t, http.StatusOK, r.Status)
		require.NotContains(t, string(r.Body), "callbackSecret")
		require.NotContains(t, string(r.Body), created.CallbackSecret)
	}

	var rotated agentView
	e.do("POST", "/api/v1/agents/"+created.ID+"/rotate-key", e.adminKey, nil).data(t, http.StatusOK, &rotated)
	stored, err = e.store.Agent(ctx, agentotp.AgentID(created.ID))
	require.NoError(t, err)
	require.Equal(t, agentotp.CallbackSecret(key, stored).Reveal(), rotated.CallbackSecret)
	require.NotEqual(t, created.CallbackSecret, rotated.CallbackSecret, "a new key brings a new callback secret")

	t.Run("omitted without a callback key", func(t *testing.T) {
		e := newTestServer(t)
		r := e.do("POST", "/api/v1/agents", e.adminKey, map[string]any{"name": "plain"})
		require.Equal(t, http.StatusCreated, r.Status)
		require.NotContains(t, string(r.Body), "callbackSecret")
	})
}
