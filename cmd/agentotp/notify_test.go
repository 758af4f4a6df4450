package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A pending request is announced in the server log with who asks, for
// what, the agent's words, and the exact command that approves it; the CLI
// shows the agent's name and reason, and `show` prints it in full.
func TestPendingIsLoggedWithTheCommand(t *testing.T) {
	withEnv(t, nil)
	data := t.TempDir()
	url, adminKey, _, log := startServerLog(t, "--data", data)
	code, out, errs := run(t, "agents", "create", "mailer", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)

	status, body := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{
		"action": "gmail.send", "resource": "email:client@example.com",
		"scope": map[string]any{"max_emails": 1}, "context": map[string]any{"reason": "send the invoice"},
	})
	require.Equal(t, 202, status)
	id := body["id"].(string)

	var line string
	require.Eventually(t, func() bool {
		for _, l := range strings.Split(log.String(), "\n") {
			if strings.Contains(l, "approval needed") && strings.Contains(l, id) {
				line = l
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, log.String())
	for _, want := range []string{"level=INFO", "id=" + id, "agent=mailer", "action=gmail.send",
		"resource=email:client@example.com", `agent_reason="send the invoice"`} {
		require.Contains(t, line, want)
	}
	m := regexp.MustCompile(`approve="agentotp (approve \S+ --data \S+)"`).FindStringSubmatch(line)
	require.NotNil(t, m, line)

	code, out, errs = run(t, "pending", "--data", data)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, id)
	require.Contains(t, out, "mailer")
	require.Contains(t, out, `"send the invoice"`)

	code, out, errs = run(t, "show", id, "--data", data)
	require.Equal(t, 0, code, errs)
	for _, want := range []string{"status:     pending", "agent:      mailer (agt_", `action:     "gmail.send"`,
		`"max_emails": 1`, "the agent's own words, unverified", `"reason": "send the invoice"`, "approve: agentotp approve " + id} {
		require.Contains(t, out, want)
	}

	// The logged command works as printed.
	code, out, errs = run(t, strings.Fields(m[1])...)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, id+": approved")

	// Outcomes decided through this server are logged too.
	status, body = call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "gmail.send"})
	require.Equal(t, 202, status)
	id = body["id"].(string)
	status, _ = call(t, "POST", url+"/api/v1/permissions/"+id+"/decide", adminKey, map[string]any{"approved": false, "reason": "not now"})
	require.Equal(t, 200, status)
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), `msg="request resolved" id=`+id+" status=denied")
	}, 5*time.Second, 10*time.Millisecond, log.String())
}
