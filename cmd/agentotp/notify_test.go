package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
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
	// Decided by another process on the same data: serve still notices.
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), `msg="request resolved" id=`+id+" status=approved")
	}, 5*time.Second, 10*time.Millisecond, log.String())

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

// serve with --callback-allow: a request's callbackUrl gets the decision,
// signed with the secret `agents create` printed; an unlisted host is
// refused at request time and never contacted.
func TestServeDecisionCallbacks(t *testing.T) {
	withEnv(t, nil)
	type delivery struct {
		sig  string
		body []byte
	}
	got := make(chan delivery, 4)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- delivery{r.Header.Get("X-Agentotp-Signature"), b}
	}))
	defer receiver.Close()
	var strays atomic.Int32
	stranger := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { strays.Add(1) }))
	defer stranger.Close()

	data := t.TempDir()
	host := strings.TrimPrefix(receiver.URL, "http://")
	url, adminKey, _, _ := startServerLog(t, "--data", data, "--callback-allow", host)
	code, out, errs := run(t, "agents", "create", "hooked", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	secret := regexp.MustCompile(`callback secret .*: (\S+)`).FindStringSubmatch(out)
	require.NotNil(t, secret, out)

	status, _ := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "x.y", "callbackUrl": stranger.URL + "/hook"})
	require.Equal(t, 400, status)

	status, body := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "x.y", "callbackUrl": receiver.URL + "/hook"})
	require.Equal(t, 202, status)
	id := body["id"].(string)
	status, _ = call(t, "POST", url+"/api/v1/permissions/"+id+"/decide", adminKey, map[string]any{"approved": true})
	require.Equal(t, 200, status)

	select {
	case d := <-got:
		ev, err := otpclient.VerifyCallback(agentotp.Secret(secret[1]), d.sig, d.body, time.Now(), 0)
		require.NoError(t, err)
		require.Equal(t, id, ev.ID)
		require.Equal(t, "permission.approved", ev.Event)
		require.NotContains(t, string(d.body), "otp_")
		_, err = otpclient.VerifyCallback(agentotp.Secret(secret[1]+"x"), d.sig, d.body, time.Now(), 0)
		require.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("no callback arrived")
	}
	// The last use is the terminal status: it is reported too.
	_, body = call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	status, _ = call(t, "POST", url+"/api/v1/permissions/"+id+"/use", key, map[string]any{"token": body["token"]})
	require.Equal(t, 200, status)
	select {
	case d := <-got:
		ev, err := otpclient.VerifyCallback(agentotp.Secret(secret[1]), d.sig, d.body, time.Now(), 0)
		require.NoError(t, err)
		require.Equal(t, "permission.used", ev.Event)
	case <-time.After(10 * time.Second):
		t.Fatal("no callback for the last use")
	}
	require.Zero(t, strays.Load())
}

// Local commands run where there is no data do not invent a store: they
// say how to point at one.
func TestLocalCommandsRefuseAMissingDataDir(t *testing.T) {
	withEnv(t, nil)
	t.Chdir(t.TempDir())
	for _, args := range [][]string{{"pending"}, {"agents", "list"}, {"audit", "verify"}} {
		code, out, errs := run(t, args...)
		require.Equal(t, 2, code, "%v: %s", args, out)
		require.Contains(t, errs, "--data DIR")
		require.NoDirExists(t, "data", "nothing was created")
	}
	code, _, errs := run(t, "agents", "create", "first", "--data", "data")
	require.Equal(t, 0, code, errs, "an explicit --data may be new")
}

// Every admin subcommand answers --help with its real flags, exit 0.
func TestSubcommandHelp(t *testing.T) {
	withEnv(t, nil)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"agents", "--help"}, []string{"agents create NAME", "-description", "-data", "-url"}},
		{[]string{"users", "-h"}, []string{"users create NAME --role", "-role", "-telegram-id"}},
		{[]string{"approve", "-h"}, []string{"approve ID", "-reason", "-scope", "-data"}},
		{[]string{"deny", "--help"}, []string{"deny ID", "-reason"}},
		{[]string{"show", "-h"}, []string{"show ID", "-url"}},
		{[]string{"pending", "-h"}, []string{"pending", "-data"}},
		{[]string{"mcp", "-h"}, []string{"--transport", "-api-key"}},
	} {
		code, out, errs := run(t, tc.args...)
		require.Equal(t, 0, code, "%v: %s", tc.args, errs)
		for _, w := range tc.want {
			require.Contains(t, out+errs, w, "%v", tc.args)
		}
	}
}

// The start-up hint names the binary that works and shows only while no
// agent exists; loading --policies logs the rule count and version.
func TestStartupHintsAndPolicyLog(t *testing.T) {
	withEnv(t, nil)
	dir := t.TempDir()
	pol := filepath.Join(dir, "p.yaml")
	require.NoError(t, os.WriteFile(pol, []byte("- name: all ask\n  action: require_approval\n"), 0o600))
	data := filepath.Join(dir, "data")
	start := func() (string, string) {
		ctx, cancel := context.WithCancel(context.Background())
		var out, errb syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- Main(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--data", data, "--policies", pol}, nil, &out, &errb)
		}()
		require.Eventually(t, func() bool { return strings.Contains(out.String(), "listening on") }, 10*time.Second, 10*time.Millisecond)
		time.Sleep(50 * time.Millisecond)
		cancel()
		require.Equal(t, 0, <-done, errb.String())
		return out.String(), errb.String()
	}
	out, log := start()
	require.Contains(t, out, "create an agent: agentotp agents create my-agent --data "+data)
	require.Regexp(t, `msg="policies loaded" .*rules=1 version=[0-9a-f]{12}`, log)

	code, _, errs := run(t, "agents", "create", "one", "--data", data)
	require.Equal(t, 0, code, errs)
	out, _ = start()
	require.NotContains(t, out, "create an agent", "no hint once an agent exists")
}
