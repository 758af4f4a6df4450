package httpapi_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// The gateway reports how a spent permission's action went: agent only,
// after a use, audited as tool_result; shape only, never content.
func TestOutcomeIsAuditedAfterAUse(t *testing.T) {
	e := newTestServer(t)
	a, b := e.createAgent("gw"), e.createAgent("other")
	admin := e.createUser("outcome-admin", "admin")
	p := e.grant(a.Key, map[string]any{"action": "auto.x"})
	path := "/api/v1/permissions/" + p.ID + "/outcome"
	ok := map[string]any{"success": true, "durationMs": 12, "resultBytes": 345}

	e.do("POST", path, a.Key, ok).fail(t, http.StatusConflict, "CONFLICT") // nothing spent yet
	e.use(a.Key, p.ID, p.Token, nil)
	for _, tc := range []struct {
		name, key string
		body      map[string]any
		status    int
		code      string
	}{
		{"another agent", b.Key, ok, http.StatusNotFound, "NOT_FOUND"},
		{"a user", admin.Key, ok, http.StatusForbidden, "FORBIDDEN"},
		{"no success", a.Key, map[string]any{"durationMs": 1}, http.StatusBadRequest, "VALIDATION_ERROR"},
		{"negative duration", a.Key, map[string]any{"success": true, "durationMs": -1}, http.StatusBadRequest, "VALIDATION_ERROR"},
		{"control characters", a.Key, map[string]any{"success": false, "error": "x\x1b[31m"}, http.StatusBadRequest, "VALIDATION_ERROR"},
		{"unknown field", a.Key, map[string]any{"success": true, "content": "secret"}, http.StatusBadRequest, "VALIDATION_ERROR"},
	} {
		t.Run(tc.name, func(t *testing.T) { e.do("POST", path, tc.key, tc.body).fail(t, tc.status, tc.code) })
	}
	var out map[string]any
	e.do("POST", path, a.Key, ok).data(t, http.StatusOK, &out)
	require.Equal(t, true, out["recorded"])
	events := e.auditOf(p.ID)
	last := events[len(events)-1]
	require.Equal(t, "tool_result", last.EventType)
	require.Equal(t, map[string]any{"success": true, "durationMs": 12.0, "resultBytes": 345.0}, last.Details)
}
