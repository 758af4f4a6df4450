package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"
)

// syncBuffer is a goroutine-safe output sink for a running Main.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// withEnv replaces the process environment seen by Main for one test.
func withEnv(t *testing.T, vars map[string]string) {
	old := env
	env = func(k string) string { return vars[k] }
	t.Cleanup(func() { env = old })
}

// run runs one CLI command in process and returns its exit code and output.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// startServer runs `agentotp serve` on port 0 and returns its URL and the
// admin key it printed.
func startServer(t *testing.T, args ...string) (url, adminKey string, stop func()) {
	t.Helper()
	url, adminKey, stop, _ = startServerLog(t, args...)
	return url, adminKey, stop
}

// startServerLog is startServer that also hands back the server's log.
func startServerLog(t *testing.T, args ...string) (url, adminKey string, stop func(), log *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	errb := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...), nil, &out, errb)
	}()
	re := regexp.MustCompile(`listening on (http://\S+)`)
	require.Eventually(t, func() bool { return re.MatchString(out.String()) }, 10*time.Second, 10*time.Millisecond, "stderr: %s", errb.String())
	url = re.FindStringSubmatch(out.String())[1]
	if m := regexp.MustCompile(`admin key \(shown once.*\): (uk_\S+)`).FindStringSubmatch(out.String()); m != nil {
		adminKey = m[1]
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case code := <-done:
				require.Equal(t, 0, code, "serve exit; stderr: %s", errb.String())
			case <-time.After(15 * time.Second):
				t.Fatal("serve did not shut down")
			}
		})
	}
	t.Cleanup(stop)
	return url, adminKey, stop, errb
}

type apiResp struct {
	Success bool            `json:"success"`
	Data    json.RawMessage `json:"data"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func call(t *testing.T, method, url, key string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.NotEmpty(t, res.Header.Get("X-Request-Id"))
	var r apiResp
	require.NoError(t, json.NewDecoder(res.Body).Decode(&r))
	data := map[string]any{}
	if len(r.Data) > 0 && r.Data[0] == '{' {
		require.NoError(t, json.Unmarshal(r.Data, &data))
	}
	if r.Error != nil {
		data["errorCode"] = r.Error.Code
	}
	return res.StatusCode, data
}

// TestServeSeedFlow runs the original README's flow against `agentotp
// serve` on a fresh data directory: request, human approval (from the
// CLI), token delivered once, verify, use, replay refused, audit verified.
func TestServeSeedFlow(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	url, admin, stop := startServer(t, "--data", dir)
	require.NotEmpty(t, admin, "first start prints the admin key")
	saved, err := os.ReadFile(filepath.Join(dir, "admin.key"))
	require.NoError(t, err)
	require.Equal(t, admin, strings.TrimSpace(string(saved)))
	fi, err := os.Stat(filepath.Join(dir, "admin.key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	code, out, errs := run(t, "agents", "create", "invoice-bot", "--data", dir)
	require.Equal(t, 0, code, errs)
	agentKey := regexp.MustCompile(`ak_\S+`).FindString(out)
	require.NotEmpty(t, agentKey)

	status, p := call(t, "POST", url+"/api/v1/permissions/request", agentKey, map[string]any{
		"action": "gmail.send", "resource": "email:client@example.com",
		"scope":   map[string]any{"max_emails": 1, "subject_pattern": "^Invoice.*"},
		"context": map[string]any{"reason": "Sending monthly invoice to client"}, "ttl": 300,
	})
	require.Equal(t, http.StatusAccepted, status)
	require.Equal(t, "pending", p["status"])
	require.Contains(t, p["approvalUrl"], "/ui/requests/")
	id := p["id"].(string)

	code, out, _ = run(t, "pending", "--data", dir)
	require.Equal(t, 0, code)
	require.Contains(t, out, id)

	// The agent long-polls while a human approves from the terminal.
	type got struct {
		status int
		body   map[string]any
	}
	waited := make(chan got, 1)
	go func() {
		s, b := call(t, "GET", url+"/api/v1/permissions/"+id+"?wait=20s", agentKey, nil)
		waited <- got{s, b}
	}()
	time.Sleep(100 * time.Millisecond)
	code, out, errs = run(t, "approve", id, "--reason", "looks right", "--data", dir)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "approved")
	w := <-waited
	require.Equal(t, http.StatusOK, w.status)
	require.Equal(t, "approved", w.body["status"])
	token, _ := w.body["token"].(string)
	require.True(t, strings.HasPrefix(token, "otp_"), "the waiting agent receives the token")

	_, again := call(t, "GET", url+"/api/v1/permissions/"+id, agentKey, nil)
	require.NotContains(t, again, "token", "the token is delivered once")

	_, v := call(t, "POST", url+"/api/v1/permissions/"+id+"/verify", agentKey, map[string]any{"token": token})
	require.Equal(t, true, v["valid"])
	_, u := call(t, "POST", url+"/api/v1/permissions/"+id+"/use", agentKey, map[string]any{"token": token,
		"actionDetails": map[string]any{"recipient": "client@example.com", "subject": "Invoice #123", "emails": 1}})
	require.Equal(t, true, u["success"])
	_, u = call(t, "POST", url+"/api/v1/permissions/"+id+"/use", agentKey, map[string]any{"token": token})
	require.Equal(t, false, u["success"])

	status, e := call(t, "POST", url+"/api/v1/permissions/"+id+"/decide", agentKey, map[string]any{"approved": true})
	require.Equal(t, http.StatusForbidden, status, "an agent can never decide")
	require.Equal(t, "FORBIDDEN", e["errorCode"])

	stop()
	code, out, _ = run(t, "audit", "verify", "--data", dir)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "audit chain OK")

	// A restart keeps the admin key and does not print it again.
	_, admin2, stop2 := startServer(t, "--data", dir)
	require.Empty(t, admin2)
	stop2()

	code, out, _ = run(t, "audit", "export", "--data", dir)
	require.Equal(t, 0, code)
	for _, secret := range []string{token, agentKey, admin} {
		require.NotContains(t, out, secret)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 8) // user_create, agent_create, request, approve, token_issue, use, use_rejected, decide_rejected
	for _, l := range lines {
		require.True(t, json.Valid([]byte(l)), l)
	}
}

// TestAuditVerifyNamesTamperedRow edits, deletes and swaps rows of the audit
// table in the SQLite file and expects `audit verify` to fail naming them.
func TestAuditVerifyNamesTamperedRow(t *testing.T) {
	withEnv(t, nil)
	cases := []struct {
		name string
		sql  []string
		seq  int
	}{
		{"edit", []string{`UPDATE audit_events SET details_json = '{"name":"mallory"}' WHERE seq = 3`}, 3},
		{"delete", []string{`DELETE FROM audit_events WHERE seq = 4`}, 4},
		{"delete the last", []string{`DELETE FROM audit_events WHERE seq = 5`}, 5},
		{"delete all", []string{`DELETE FROM audit_events`}, 1},
		{"swap", []string{
			`UPDATE audit_events SET seq = -1 WHERE seq = 2`, `UPDATE audit_events SET seq = 2 WHERE seq = 3`,
			`UPDATE audit_events SET seq = 3 WHERE seq = -1`}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for i := range 4 {
				code, _, errs := run(t, "agents", "create", fmt.Sprintf("agent-%d", i), "--data", dir)
				require.Equal(t, 0, code, errs)
			}
			code, out, _ := run(t, "audit", "verify", "--data", dir)
			require.Equal(t, 0, code, out)

			db, err := sql.Open("sqlite", filepath.Join(dir, "agentotp.db"))
			require.NoError(t, err)
			for _, q := range append([]string{"DROP TRIGGER audit_events_no_update", "DROP TRIGGER audit_events_no_delete"}, tc.sql...) {
				_, err := db.Exec(q)
				require.NoError(t, err, q)
			}
			require.NoError(t, db.Close())

			code, out, _ = run(t, "audit", "verify", "--data", dir)
			require.Equal(t, 1, code)
			require.Contains(t, out, fmt.Sprintf("BROKEN at seq %d", tc.seq))
		})
	}
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "agentotp.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte("addr: 127.0.0.1:1111\nlogLevel: debug\ndata: /from/file\n"), 0o600))
	withEnv(t, map[string]string{"AGENTOTP_ADDR": "127.0.0.1:2222", "AGENTOTP_DATA": "/from/env"})
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	load := configFlags(fs)
	require.NoError(t, fs.Parse([]string{"--config", cfgFile, "--data", "/from/flag"}))
	cfg, err := load(env)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:2222", cfg.Addr, "env beats file")
	require.Equal(t, "/from/flag", cfg.Data, "flag beats env")
	require.Equal(t, "debug", cfg.LogLevel, "file beats default")
	require.Equal(t, "text", cfg.LogFormat, "default")

	require.NoError(t, os.WriteFile(cfgFile, []byte("adminKey: uk_x\n"), 0o600))
	fs = flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	load = configFlags(fs)
	require.NoError(t, fs.Parse([]string{"--config", cfgFile}))
	_, err = load(env)
	require.Error(t, err, "secrets are not accepted from the config file")

	code, _, errs := run(t, "serve", "--telegram-mode", "carrier-pigeon")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "telegram-mode")
}

// TestRemoteAdmin drives the admin commands against a running server with
// --url and AGENTOTP_ADMIN_KEY, as an operator on another machine would.
func TestRemoteAdmin(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	url, admin, _ := startServer(t, "--data", dir)
	withEnv(t, map[string]string{"AGENTOTP_ADMIN_KEY": admin, "AGENTOTP_URL": url})

	code, out, errs := run(t, "agents", "create", "remote-bot", "--description", "made over HTTP")
	require.Equal(t, 0, code, errs)
	agentKey := regexp.MustCompile(`ak_\S+`).FindString(out)
	require.NotEmpty(t, agentKey)
	code, out, _ = run(t, "agents", "list")
	require.Equal(t, 0, code)
	require.Contains(t, out, "remote-bot")

	code, out, errs = run(t, "users", "create", "alice", "--role", "approver", "--telegram-id", "777")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "uk_")
	code, out, _ = run(t, "users", "list")
	require.Equal(t, 0, code)
	require.Contains(t, out, "alice")
	require.Contains(t, out, "777")

	status, p := call(t, "POST", url+"/api/v1/permissions/request", agentKey, map[string]any{"action": "deploy.prod"})
	require.Equal(t, http.StatusAccepted, status)
	id := p["id"].(string)
	code, out, _ = run(t, "pending")
	require.Equal(t, 0, code)
	require.Contains(t, out, id)
	code, out, errs = run(t, "deny", id, "--reason", "not today")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "denied")
	code, _, errs = run(t, "approve", id)
	require.Equal(t, 1, code, "a second decision conflicts")
	require.Contains(t, errs, "already denied")

	code, out, _ = run(t, "audit", "list", "--limit", "3")
	require.Equal(t, 0, code)
	require.Contains(t, out, "decide_rejected")
	require.Equal(t, 3, strings.Count(strings.TrimSpace(out), "\n")+1)
	code, out, _ = run(t, "audit", "verify")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "audit chain OK")
	code, out, _ = run(t, "audit", "export")
	require.Equal(t, 0, code)
	require.NotContains(t, out, agentKey)
	require.NotContains(t, out, admin)
	require.Contains(t, out, `"eventType":"deny"`)

	withEnv(t, map[string]string{"AGENTOTP_URL": url})
	code, _, errs = run(t, "agents", "list")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "AGENTOTP_ADMIN_KEY")
}

// TestServePolicyReload: `serve --policies` decides by the file, picks up
// edits, and keeps the last good rules (auditing the rejection) when an
// edit does not compile.
func TestServePolicyReload(t *testing.T) {
	withEnv(t, nil)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policies.yaml")
	write := func(body string) { require.NoError(t, os.WriteFile(pol, []byte(body), 0o600)) }
	write("- name: reads are fine\n  conditions:\n    action: {startsWith: read.}\n  action: auto_approve\n")
	data := filepath.Join(dir, "data")
	url, admin, _ := startServer(t, "--data", data, "--policies", pol)
	code, out, _ := run(t, "agents", "create", "reader", "--data", data)
	require.Equal(t, 0, code)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)

	status, _ := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "read.file"})
	require.Equal(t, http.StatusCreated, status)

	auditTypes := func() string {
		_, body := call(t, "GET", url+"/api/v1/audit/stats", admin, nil)
		b, _ := json.Marshal(body["byEventType"])
		return string(b)
	}
	write("- name: broken\n  conditions:\n    action: {startsWith: read.}\n  action: auto_approve\n  when: request.nope ==\n")
	require.Eventually(t, func() bool { return strings.Contains(auditTypes(), "policy_error") }, 10*time.Second, 50*time.Millisecond)
	status, _ = call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "read.file"})
	require.Equal(t, http.StatusCreated, status, "the last good rules stay active")

	write("- name: no more reads\n  conditions:\n    action: {startsWith: read.}\n  action: deny\n")
	require.Eventually(t, func() bool {
		status, body := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "read.file"})
		return status == http.StatusOK && body["status"] == "denied"
	}, 10*time.Second, 50*time.Millisecond)
	require.Contains(t, auditTypes(), "policy_reload")
}

// TestRestartBetweenApprovalAndDelivery: the token is minted when the agent
// collects it, so a restart after a human approves loses nothing and never
// makes two tokens.
func TestRestartBetweenApprovalAndDelivery(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	url, _, stop := startServer(t, "--data", dir)
	code, out, _ := run(t, "agents", "create", "patient", "--data", dir)
	require.Equal(t, 0, code)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	status, p := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "deploy.prod"})
	require.Equal(t, http.StatusAccepted, status)
	id := p["id"].(string)
	code, _, errs := run(t, "approve", id, "--data", dir)
	require.Equal(t, 0, code, errs)
	stop()

	url, _, _ = startServer(t, "--data", dir)
	_, got := call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	require.Equal(t, "approved", got["status"])
	token, _ := got["token"].(string)
	require.True(t, strings.HasPrefix(token, "otp_"), "the approval survived the restart")
	_, again := call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	require.NotContains(t, again, "token")
	_, u := call(t, "POST", url+"/api/v1/permissions/"+id+"/use", key, map[string]any{"token": token})
	require.Equal(t, true, u["success"])
}

// TestLocalAdminKeyFromEnvDoesNotRotate: a local admin command signs in
// with AGENTOTP_ADMIN_KEY but never makes it the stored admin key.
func TestLocalAdminKeyFromEnvDoesNotRotate(t *testing.T) {
	withEnv(t, nil)
	dir := t.TempDir()
	code, _, errs := run(t, "agents", "list", "--data", dir) // bootstraps admin.key
	require.Equal(t, 0, code, errs)
	withEnv(t, map[string]string{"AGENTOTP_ADMIN_KEY": "uk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
	code, _, errs = run(t, "agents", "list", "--data", dir)
	require.Equal(t, 1, code)
	require.Contains(t, errs, "invalid API key")
	withEnv(t, nil)
	code, _, errs = run(t, "agents", "list", "--data", dir)
	require.Equal(t, 0, code, "the stored key still works: %s", errs)
}

// TestBench runs the load generator briefly in both modes against a real
// server: every response is checked, so exit 0 means every cycle was right.
func TestBench(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	url, _, _ := startServer(t, "--data", dir, "--rate-limit", "-1")
	for _, mode := range []string{"auto", "human"} {
		code, out, errs := run(t, "bench", "--url", url, "--data", dir, "--mode", mode,
			"--duration", "700ms", "--concurrency", "4", "--agents", "2")
		require.Equal(t, 0, code, "%s: %s %s", mode, out, errs)
		require.Regexp(t, `cycles: [1-9]\d* ok, 0 failed`, out)
	}
	// The bench cleans up after itself: its agents and its policy are gone,
	// and the audit chain is whole.
	code, out, _ := run(t, "agents", "list", "--data", dir)
	require.Equal(t, 0, code)
	require.NotContains(t, out, "bench-")
	code, out, _ = run(t, "audit", "verify", "--data", dir)
	require.Equal(t, 0, code, out)
}

// TestServeBudget: a budget counted by the real store stops auto-approval
// after three gmail.send in the window, against request splitting.
func TestServeBudget(t *testing.T) {
	withEnv(t, nil)
	dir := t.TempDir()
	pol := filepath.Join(dir, "budget.yaml")
	require.NoError(t, os.WriteFile(pol, []byte(`
- name: a few emails an hour
  conditions:
    action: {equals: gmail.send}
  when: approvals("gmail.*", duration("1h")) < 3
  action: auto_approve
`), 0o600))
	data := filepath.Join(dir, "data")
	url, _, _ := startServer(t, "--data", data, "--policies", pol)
	code, out, _ := run(t, "agents", "create", "mailer", "--data", data)
	require.Equal(t, 0, code)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	for i := range 3 {
		status, _ := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "gmail.send"})
		require.Equal(t, http.StatusCreated, status, "email %d is within the budget", i+1)
	}
	status, body := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "gmail.send"})
	require.Equal(t, http.StatusAccepted, status, "the fourth asks a human")
	require.Equal(t, "pending", body["status"])
	// Another agent has its own budget.
	code, out, _ = run(t, "agents", "create", "other", "--data", data)
	require.Equal(t, 0, code)
	status, _ = call(t, "POST", url+"/api/v1/permissions/request", regexp.MustCompile(`ak_\S+`).FindString(out), map[string]any{"action": "gmail.send"})
	require.Equal(t, http.StatusCreated, status)
}

// TestServeUseWhen: a rule's useWhen is checked at every use through the
// real server: a use for another recipient is refused and spends nothing.
func TestServeUseWhen(t *testing.T) {
	withEnv(t, nil)
	dir := t.TempDir()
	pol := filepath.Join(dir, "mail.yaml")
	require.NoError(t, os.WriteFile(pol, []byte(`
- name: one email to the named recipient
  conditions:
    action: {equals: gmail.send}
  action: auto_approve
  scopeTemplate: {max_emails: 1}
  useWhen: details.recipient == request.resource.split(":")[1]
`), 0o600))
	data := filepath.Join(dir, "data")
	url, _, _ := startServer(t, "--data", data, "--policies", pol)
	code, out, _ := run(t, "agents", "create", "mailer", "--data", data)
	require.Equal(t, 0, code)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	status, p := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{
		"action": "gmail.send", "resource": "email:client@example.com", "scope": map[string]any{"max_emails": 5}})
	require.Equal(t, http.StatusCreated, status)
	require.Equal(t, map[string]any{"max_emails": 1.0}, p["scope"], "the template narrowed the scope")
	id, token := p["id"].(string), p["token"].(string)
	_, u := call(t, "POST", url+"/api/v1/permissions/"+id+"/use", key, map[string]any{"token": token,
		"actionDetails": map[string]any{"recipient": "attacker@evil.example", "emails": 1}})
	require.Equal(t, false, u["success"])
	require.Contains(t, u["reason"], "refused by policy")
	_, u = call(t, "POST", url+"/api/v1/permissions/"+id+"/use", key, map[string]any{"token": token,
		"actionDetails": map[string]any{"recipient": "client@example.com", "emails": 2}})
	require.Equal(t, false, u["success"], "two emails exceed the granted max_emails")
	_, u = call(t, "POST", url+"/api/v1/permissions/"+id+"/use", key, map[string]any{"token": token,
		"actionDetails": map[string]any{"recipient": "client@example.com", "emails": 1}})
	require.Equal(t, true, u["success"])
}
