package main

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

// agentotp serve with a bot token: the pending request reaches the chat
// with buttons; a press from an unlinked account changes nothing; the
// approver's press approves, the message is edited, and the agent's
// long-poll gets the token once.
func TestServeTelegramApproval(t *testing.T) {
	bot := telegramtest.New(t)
	const chat = int64(-1001)
	withEnv(t, map[string]string{"AGENTOTP_TELEGRAM_TOKEN": bot.Token})
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
	approve := msg.Buttons()[0].Data()
	require.NotContains(t, approve, id, "buttons carry a nonce, not the id")

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
	bot.Press(telegramtest.User{ID: 4242, FirstName: "Ann"}, chat, msg.ID, approve)
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
