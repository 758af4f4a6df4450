package httpapi_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// A request may carry its first use ("use": {"actionDetails": …}): when the
// policy approves at once, the use is spent in the request's own write and
// the answer says how it went; otherwise nothing is spent.
func TestRequestWithUse(t *testing.T) {
	e := newTestServer(t)
	a := e.createAgent("spender")
	const path = "/api/v1/permissions/request"
	type spendView struct {
		permView
		Use *useView `json:"use"`
	}
	ask := func(body map[string]any, status int) spendView {
		t.Helper()
		var v spendView
		e.do("POST", path, a.Key, body).data(t, status, &v)
		return v
	}
	scope := map[string]any{"max_emails": 1}

	v := ask(map[string]any{"action": "auto.send", "scope": scope, "use": map[string]any{"actionDetails": map[string]any{"emails": 1}}}, http.StatusCreated)
	require.Equal(t, "used", v.Status)
	require.Equal(t, &useView{Success: true}, v.Use)
	require.Equal(t, []string{"request", "approve", "use"}, eventTypes(e.auditOf(v.ID)))
	require.False(t, e.use(a.Key, v.ID, v.Token, map[string]any{"emails": 1}).Success, "single use")

	v = ask(map[string]any{"action": "auto.send", "scope": scope, "uses": 2, "use": map[string]any{"actionDetails": map[string]any{"emails": 1}}}, http.StatusCreated)
	require.Equal(t, "approved", v.Status)
	require.Equal(t, &useView{Success: true, UsesRemaining: 1}, v.Use)
	require.Equal(t, 1, *v.UsesRemaining)
	require.Equal(t, useView{Success: true}, e.use(a.Key, v.ID, v.Token, map[string]any{"emails": 1}), "the token keeps its other use")

	v = ask(map[string]any{"action": "auto.send", "scope": scope, "use": map[string]any{"actionDetails": map[string]any{"emails": 5}}}, http.StatusCreated)
	require.Equal(t, "approved", v.Status, "a refused use spends nothing")
	require.False(t, v.Use.Success)
	require.NotEmpty(t, v.Use.Reason)
	require.Equal(t, []string{"request", "approve", "use_rejected"}, eventTypes(e.auditOf(v.ID)))

	v = ask(map[string]any{"action": "human.send", "use": map[string]any{}}, http.StatusAccepted)
	require.Equal(t, "pending", v.Status)
	require.Nil(t, v.Use, "nothing is spent before a decision")

	for name, use := range map[string]any{
		"unknown field":   map[string]any{"token": "otp_x"},
		"not an object":   "now",
		"details as list": map[string]any{"actionDetails": []any{1}},
	} {
		t.Run(name, func(t *testing.T) {
			e.do("POST", path, a.Key, map[string]any{"action": "auto.send", "use": use}).fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
		})
	}
}
