package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// TestSecretsNeverLeak runs a full flow with a debug logger, then searches
// the log, the audit export and the raw SQLite files for every token and
// API key handed out: none may appear, only their hashes.
func TestSecretsNeverLeak(t *testing.T) {
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newTestServer(t, withLogger(logger))

	secrets := map[string]string{"bootstrap admin key": e.adminKey}
	add := func(what, s string) {
		t.Helper()
		require.NotEmpty(t, s, what)
		secrets[fmt.Sprintf("%s #%d", what, len(secrets))] = s
	}

	// Agents and users, then rotations.
	a := e.createAgent("leak-a")
	add("agent key", a.Key)
	b := e.createAgent("leak-b")
	add("agent key", b.Key)
	approver := e.createUser("leak-approver", "approver")
	add("user key", approver.Key)
	admin2 := e.createUser("leak-admin", "admin")
	add("user key", admin2.Key)

	var rotA agentView
	e.do("POST", "/api/v1/agents/"+a.ID+"/rotate-key", e.adminKey, nil).data(t, http.StatusOK, &rotA)
	add("rotated agent key", rotA.APIKey)
	var rotU userView
	e.do("POST", "/api/v1/users/"+approver.ID+"/rotate-key", admin2.Key, nil).data(t, http.StatusOK, &rotU)
	add("rotated user key", rotU.APIKey)
	aKey, apKey := rotA.APIKey, rotU.APIKey

	// Old keys fail (and are logged as failures, if at all, without the key).
	e.do("GET", "/api/v1/approvals", approver.Key, nil).fail(t, http.StatusUnauthorized, "UNAUTHORIZED")
	e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "auto.x"}).fail(t, http.StatusUnauthorized, "UNAUTHORIZED")

	// Auto-approved, used several times, with a wrong token tried too.
	g := e.grant(aKey, map[string]any{"uses": 3, "scope": map[string]any{"max_n": 5}})
	add("token", g.Token)
	require.True(t, e.use(aKey, g.ID, g.Token, map[string]any{"n": 1}).Success)
	require.False(t, e.use(aKey, g.ID, g.Token, map[string]any{"n": 9}).Success)
	require.True(t, e.verify(aKey, g.ID, g.Token).Valid)

	// Idempotent retry re-issues a token.
	i1 := e.request(aKey, map[string]any{"action": "auto.idem", "idempotencyKey": "idem-1"}, http.StatusCreated)
	add("token", i1.Token)
	i2 := e.request(aKey, map[string]any{"action": "auto.idem", "idempotencyKey": "idem-1"}, http.StatusCreated)
	add("token", i2.Token)
	require.False(t, e.use(aKey, i1.ID, i1.Token, nil).Success)
	require.True(t, e.use(aKey, i2.ID, i2.Token, nil).Success)

	// Human approval delivered by GET, by long-poll, and by SSE.
	p1 := e.pending(aKey, "deploy.prod")
	e.decide(apKey, p1.ID, true, "ok").data(t, http.StatusOK, nil)
	t1 := e.fetchToken(aKey, p1.ID)
	add("token", t1.Token)
	require.True(t, e.use(aKey, p1.ID, t1.Token, nil).Success)

	p2 := e.pending(b.Key, "deploy.staging")
	done := make(chan resp, 1)
	go func() {
		r, _ := e.try(context.Background(), "GET", "/api/v1/permissions/"+p2.ID+"?wait=5s", b.Key, nil)
		done <- r
	}()
	time.Sleep(100 * time.Millisecond)
	e.decide(admin2.Key, p2.ID, true, "").data(t, http.StatusOK, nil)
	var t2 permView
	(<-done).data(t, http.StatusOK, &t2)
	add("token", t2.Token)
	// Another agent tries B's token on its own permission and on B's.
	require.False(t, e.use(aKey, g.ID, t2.Token, nil).Success)
	e.do("POST", "/api/v1/permissions/"+p2.ID+"/use", aKey, map[string]any{"token": t2.Token}).fail(t, http.StatusNotFound, "NOT_FOUND")
	e.do("POST", "/api/v1/permissions/"+p2.ID+"/revoke", b.Key, map[string]any{"reason": "changed my mind"}).data(t, http.StatusOK, nil)

	p3 := e.pending(b.Key, "deploy.sse")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/api/v1/permissions/"+p3.ID+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+b.Key)
	stream, err := e.client.Do(req)
	require.NoError(t, err)
	defer stream.Body.Close()
	events := make(chan sseEvent, 8)
	go readSSE(bufio.NewReader(stream.Body), events)
	require.Equal(t, "pending", nextEvent(t, events).Data.Status)
	e.decide(apKey, p3.ID, true, "").data(t, http.StatusOK, nil)
	t3 := nextEvent(t, events).Data
	add("token", t3.Token)
	require.True(t, e.use(b.Key, p3.ID, t3.Token, nil).Success)
	require.Equal(t, "used", nextEvent(t, events).Data.Status)

	// Denied by a human and by policy.
	p4 := e.pending(b.Key, "deploy.never")
	e.decide(apKey, p4.ID, false, "no").data(t, http.StatusOK, nil)
	e.request(b.Key, map[string]any{"action": "deny.x"}, http.StatusOK)

	// Users and agents removed.
	e.do("DELETE", "/api/v1/users/"+approver.ID, e.adminKey, nil).data(t, http.StatusOK, nil)
	e.do("DELETE", "/api/v1/agents/"+b.ID, e.adminKey, nil).data(t, http.StatusOK, nil)

	// Gather everything that must not contain a secret.
	export := e.do("GET", "/api/v1/audit/export", e.adminKey, nil)
	require.Equal(t, http.StatusOK, export.Status)
	require.Greater(t, bytes.Count(export.Body, []byte("\n")), 30, "the export holds the whole flow")
	var audit []auditView
	e.do("GET", "/api/v1/audit?limit=1000", e.adminKey, nil).data(t, http.StatusOK, &audit)

	db, err := os.ReadFile(e.dbPath)
	require.NoError(t, err)
	wal, _ := os.ReadFile(e.dbPath + "-wal")
	shm, _ := os.ReadFile(e.dbPath + "-shm")
	files := append(append(db, wal...), shm...)
	logText := logs.Bytes()
	require.Contains(t, string(logText), "level=DEBUG", "the debug log is being captured")

	// Positive control: the hashes are there, so the scan sees real data.
	require.True(t, bytes.Contains(files, []byte(agentotp.HashSecret(g.Token))), "token hash stored")
	require.True(t, bytes.Contains(files, []byte(agentotp.HashSecret(aKey))), "key hash stored")

	require.GreaterOrEqual(t, len(secrets), 12)
	for what, s := range secrets {
		for where, hay := range map[string][]byte{"log": logText, "audit export": export.Body, "database files": files} {
			require.False(t, bytes.Contains(hay, []byte(s)), "%s found in the %s", what, where)
			// Not even the random part without its prefix.
			require.False(t, bytes.Contains(hay, []byte(s[4:])), "%s (without prefix) found in the %s", what, where)
		}
	}
	for _, ev := range audit {
		for what, s := range secrets {
			require.NotContains(t, strings.Join([]string{ev.RequestID, ev.ActorID}, " "), s, what)
		}
	}
}
