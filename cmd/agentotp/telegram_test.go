package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"

	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

// agentotp serve with a bot token: the pending request reaches the chat
// with buttons; a press from an unlinked account changes nothing; the
// approver's press approves, the message is edited, and the agent's
// long-poll gets the token once.
func TestServeTelegramApproval(t *testing.T) {
	bot := telegramtest.New(t)
	const chat = int64(-1001)
	auditHex := strings.Repeat("5a", 32)
	withEnv(t, map[string]string{"AGENTOTP_TELEGRAM_TOKEN": bot.Token, "AGENTOTP_AUDIT_KEY": auditHex})
	data := t.TempDir()
	url, _, _, log := startServerLog(t, "--data", data, "--telegram-chat", strconv.FormatInt(chat, 10),
		"--telegram-api-url", bot.URL)
	require.Contains(t, log.String(), "telegram: approval requests go to chat")

	code, out, errs := run(t, "agents", "create", "mailer", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	code, _, errs = run(t, "users", "create", "ann", "--role", "approver", "--telegram-id", "4242", "--data", data)
	require.Equal(t, 0, code, errs)

	status, body := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{
		"action": "gmail.send", "resource": "email:client@example.com", "context": map[string]any{"reason": "<b>invoice</b>"}})
	require.Equal(t, 202, status)
	id := body["id"].(string)

	var msg telegramtest.Message
	require.Eventually(t, func() bool {
		for _, m := range bot.Messages(chat) {
			if strings.Contains(m.Visible, "gmail.send") && len(m.Buttons()) == 2 {
				msg = m
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond)
	require.Contains(t, msg.Visible, "mailer")
	require.Contains(t, msg.Text, "&lt;b&gt;invoice&lt;/b&gt;", "agent text is escaped")
	approve, deny := msg.Buttons()[0].Data(), msg.Buttons()[1].Data()
	// Buttons carry the id and a MAC under a key derived from the audit
	// key, so every instance holding that key makes and accepts the same.
	audit, err := hex.DecodeString(auditHex)
	require.NoError(t, err)
	sub := hmac.New(sha256.New, audit)
	sub.Write([]byte("agentotp telegram buttons v1"))
	mac := hmac.New(sha256.New, sub.Sum(nil))
	mac.Write([]byte("a:" + id))
	require.Equal(t, "a:"+id+"."+base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:12]), approve)
	require.LessOrEqual(t, len(approve), 64)

	// Altered data is refused and changes nothing, even from an approver.
	ann := telegramtest.User{ID: 4242, FirstName: "Ann"}
	other := "perm_" + strings.Repeat("0", 26)
	for _, altered := range []string{
		"a" + deny[1:],                         // flipped decision
		strings.Replace(approve, id, other, 1), // other id
		approve[:len(approve)-2] + "AA",        // wrong MAC
		approve[:len(approve)-4],               // truncated
	} {
		u := bot.Press(ann, chat, msg.ID, altered)
		require.Eventually(t, func() bool { a, ok := bot.Answer(u.CallbackID); return ok && strings.Contains(a.Text, "not valid") },
			10*time.Second, 20*time.Millisecond, altered)
	}
	status, body = call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	require.Equal(t, 200, status)
	require.Equal(t, "pending", body["status"])
	now, _ := bot.Message(chat, msg.ID)
	require.Zero(t, now.Edits)

	stranger := bot.Press(telegramtest.User{ID: 6666, FirstName: "Eve"}, chat, msg.ID, approve)
	require.Eventually(t, func() bool { _, ok := bot.Answer(stranger.CallbackID); return ok }, 10*time.Second, 20*time.Millisecond)
	status, body = call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	require.Equal(t, 200, status)
	require.Equal(t, "pending", body["status"])

	got := make(chan map[string]any, 1)
	var token string
	go func() {
		_, b := call(t, "GET", url+"/api/v1/permissions/"+id+"?wait=20s", key, nil)
		got <- b
	}()
	time.Sleep(100 * time.Millisecond)
	bot.Press(ann, chat, msg.ID, approve)
	select {
	case b := <-got:
		require.Equal(t, "approved", b["status"])
		require.NotEmpty(t, b["token"])
		token = b["token"].(string)
	case <-time.After(20 * time.Second):
		t.Fatal("the long-poll never answered")
	}
	_, body = call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	require.Nil(t, body["token"], "the token is handed out once")
	require.Eventually(t, func() bool {
		m, _ := bot.Message(chat, msg.ID)
		return len(m.Buttons()) == 0 && strings.Contains(m.Visible, "ann")
	}, 10*time.Second, 20*time.Millisecond, "the message shows who approved, without buttons")
	// The last use edits the message once more.
	status, body = call(t, "POST", url+"/api/v1/permissions/"+id+"/use", key, map[string]any{"token": token})
	require.Equal(t, 200, status)
	require.Equal(t, true, body["success"])
	require.Eventually(t, func() bool {
		m, _ := bot.Message(chat, msg.ID)
		return strings.Contains(m.Visible, "has been used")
	}, 10*time.Second, 20*time.Millisecond)
	require.NotContains(t, log.String(), bot.Token, "the bot token never reaches the log")
}

func TestServeTelegramMisconfigured(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"token without chat", map[string]string{"AGENTOTP_TELEGRAM_TOKEN": "123:abc"}, nil, "AGENTOTP_TELEGRAM_CHAT_ID"},
		{"chat not numeric", map[string]string{"AGENTOTP_TELEGRAM_TOKEN": "123:abc"}, []string{"--telegram-chat", "@ops"}, "numeric Telegram chat id"},
		{"webhook without secret", map[string]string{"AGENTOTP_TELEGRAM_TOKEN": "123:abc"},
			[]string{"--telegram-chat", "1", "--telegram-mode", "webhook"}, "AGENTOTP_TELEGRAM_WEBHOOK_SECRET"},
		{"webhook without https", map[string]string{"AGENTOTP_TELEGRAM_TOKEN": "123:abc", "AGENTOTP_TELEGRAM_WEBHOOK_SECRET": "s3cr3t"},
			[]string{"--telegram-chat", "1", "--telegram-mode", "webhook"}, "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withEnv(t, tc.env)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out, errb syncBuffer
			code := Main(ctx, append([]string{"serve", "--addr", "127.0.0.1:0", "--data", t.TempDir()}, tc.args...), nil, &out, &errb)
			require.Equal(t, 1, code, out.String())
			require.Contains(t, errb.String(), tc.want)
			require.NotContains(t, errb.String(), "123:abc")
		})
	}
}

// Webhook mode: serve registers the webhook with its secret, refuses posts
// without it, and acts on Telegram's own.
func TestServeTelegramWebhook(t *testing.T) {
	bot := telegramtest.New(t)
	const chat, secret = int64(77), "hook_s3cr3t"
	withEnv(t, map[string]string{"AGENTOTP_TELEGRAM_TOKEN": bot.Token, "AGENTOTP_TELEGRAM_WEBHOOK_SECRET": secret})
	data := t.TempDir()
	url, _, _, _ := startServerLog(t, "--data", data, "--telegram-chat", "77", "--telegram-api-url", bot.URL,
		"--telegram-mode", "webhook", "--public-url", "https://otp.example.test")
	require.Eventually(t, func() bool { u, s := bot.Webhook(); return u != "" && s == secret }, 10*time.Second, 20*time.Millisecond)
	u, _ := bot.Webhook()
	require.Equal(t, "https://otp.example.test/api/v1/webhooks/telegram", u)

	code, out, errs := run(t, "agents", "create", "a1", "--data", data)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`ak_\S+`).FindString(out)
	code, _, errs = run(t, "users", "create", "bob", "--role", "approver", "--telegram-id", "55", "--data", data)
	require.Equal(t, 0, code, errs)
	status, body := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "db.drop"})
	require.Equal(t, 202, status)
	id := body["id"].(string)
	var msg telegramtest.Message
	require.Eventually(t, func() bool {
		ms := bot.Messages(chat)
		if len(ms) == 0 {
			return false
		}
		msg = ms[len(ms)-1]
		return len(msg.Buttons()) == 2
	}, 10*time.Second, 20*time.Millisecond)
	deny := msg.Buttons()[1].Data()
	press := bot.PressUpdate(telegramtest.User{ID: 55, FirstName: "Bob"}, chat, msg.ID, deny)
	hook := url + "/api/v1/webhooks/telegram"
	ctx := context.Background()
	for _, wrong := range []string{"", "guess", secret + "x"} {
		code, err := telegramtest.Post(ctx, hook, wrong, press)
		require.NoError(t, err)
		require.Equal(t, 401, code)
	}
	_, body = call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	require.Equal(t, "pending", body["status"], "a forged webhook changes nothing")
	code, err := telegramtest.Post(ctx, hook, secret, press)
	require.NoError(t, err)
	require.Equal(t, 200, code)
	_, body = call(t, "GET", url+"/api/v1/permissions/"+id, key, nil)
	require.Equal(t, "denied", body["status"])
}

// The button key follows the audit key whatever its source, so instances
// sharing the audit key share it; another audit key gives another.
func TestTelegramButtonKey(t *testing.T) {
	const hexKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	dir := t.TempDir()
	file := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(file, []byte(hexKey+"\n"), 0o600))
	ref, err := telegramButtonKey(Config{Data: t.TempDir(), AuditKey: hexKey})
	require.NoError(t, err)
	require.Len(t, ref, 32)
	for _, c := range []struct {
		name string
		cfg  Config
		same bool
	}{
		{"env, other data dir", Config{Data: t.TempDir(), AuditKey: hexKey}, true},
		{"file", Config{Data: t.TempDir(), AuditKeyFile: file}, true},
		{"base64", Config{Data: t.TempDir(), AuditKey: agentotp.Secret(base64.StdEncoding.EncodeToString(mustHex(t, hexKey)))}, true},
		{"other key", Config{Data: t.TempDir(), AuditKey: agentotp.Secret(strings.Repeat("ab", 32))}, false},
		{"generated default", Config{Data: t.TempDir()}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := telegramButtonKey(c.cfg)
			require.NoError(t, err)
			require.Equal(t, c.same, bytes.Equal(ref, got))
			again, err := telegramButtonKey(c.cfg)
			require.NoError(t, err)
			require.Equal(t, got, again, "stable across starts")
		})
	}
	_, err = telegramButtonKey(Config{Data: t.TempDir(), AuditKey: "abcd"})
	require.ErrorContains(t, err, "at least 32 bytes")
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}
