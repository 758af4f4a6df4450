package telegram_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/telegram"
	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

// 429 with retry_after: the message goes out after the wait, and the
// request waits for a press.
func TestRateLimitedSendIsRetried(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.tg.Fail("sendMessage", 1, 429, 1)
	began := time.Now()
	p := e.request(req{})
	m := e.message(chat, p.ID)
	require.GreaterOrEqual(t, time.Since(began), time.Second, "retry_after was respected")
	var codes []int
	for _, c := range e.tg.Calls("sendMessage") {
		codes = append(codes, c.Code)
	}
	require.Equal(t, []int{429, 200}, codes)
	require.Len(t, e.tg.Messages(chat), 1, "delivered once")
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	require.Equal(t, "Approved.", e.press(ann, m, true).Text)
}

// Telegram down: bounded attempts, the request stays pending, nothing is
// approved, and errors carry no token.
func TestTelegramDownLeavesRequestPending(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.tg.Fail("sendMessage", 100, 500, 0)
	p := e.request(req{})
	require.Eventually(t, func() bool { return strings.Contains(e.logs.String(), "notify pending failed") }, 5*time.Second, 5*time.Millisecond)
	require.Len(t, e.tg.Calls("sendMessage"), e.opts.MaxAttempts)
	require.Empty(t, e.tg.Messages(chat))
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	require.Empty(t, e.events(p.ID, agentotp.EventApprove))

	err := e.n.NotifyPending(context.Background(), p, e.agent.Agent)
	require.ErrorContains(t, err, "Internal Server Error")
	require.ErrorContains(t, err, "attempt 4")
	require.NotContains(t, err.Error(), e.tg.Token)

	// A deadline shorter than the backoff ends the call early.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	e.tg.Heal("sendMessage")
	e.tg.Fail("sendMessage", 1, 429, 30)
	err = e.n.NotifyPending(ctx, p, e.agent.Agent)
	require.ErrorContains(t, err, "exceeds the deadline")
}

// Network errors quote the request URL, which holds the token; it is
// redacted from every error and log.
func TestNetworkErrorsRedactToken(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	e.message(chat, p.ID)
	e.tg.Fail("sendMessage", 100, 0, 0)
	err := e.n.NotifyPending(context.Background(), p, e.agent.Agent)
	require.Error(t, err)
	require.NotContains(t, err.Error(), e.tg.Token)
	require.Contains(t, err.Error(), "/bot[redacted]/sendMessage")
}

// A failing answerCallbackQuery is retried; the decision happens once.
func TestAnswerRetried(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	e.tg.Fail("answerCallbackQuery", 2, 502, 0)
	require.Equal(t, "Approved.", e.press(ann, m, true).Text)
	require.Len(t, e.events(p.ID, agentotp.EventApprove), 1)
}

// Polling survives getUpdates failures and picks up where it was.
func TestPollingRecovers(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	e.tg.Fail("getUpdates", 3, 500, 0)
	first := e.press(eve, m, true)
	require.Contains(t, first.Text, notLinked)
	require.Equal(t, "Approved.", e.press(ann, m, true).Text)
	failed := 0
	for _, c := range e.tg.Calls("getUpdates") {
		if c.Code == 500 {
			failed++
		}
	}
	require.Equal(t, 3, failed)
}

func TestNewOptions(t *testing.T) {
	tg := telegramtest.New(t)
	good := func() telegram.Options {
		return telegram.Options{Token: agentotp.Secret(tg.Token), ChatID: chat, APIURL: tg.URL, ButtonKey: buttonKey}
	}
	for _, c := range []struct {
		name string
		edit func(*telegram.Options)
		want string // "" = valid
	}{
		{"polling", func(*telegram.Options) {}, ""},
		{"webhook", func(o *telegram.Options) {
			o.Mode, o.WebhookURL, o.WebhookSecret = telegram.ModeWebhook, "https://otp.example"+telegram.WebhookPath, "abc_DEF-123"
		}, ""},
		{"trailing slash", func(o *telegram.Options) { o.APIURL += "/" }, ""},
		{"no token", func(o *telegram.Options) { o.Token = "" }, "token: is required"},
		{"no chat", func(o *telegram.Options) { o.ChatID = 0 }, "chatId: is required"},
		{"no button key", func(o *telegram.Options) { o.ButtonKey = nil }, "buttonKey: must hold at least 32 bytes, not 0"},
		{"short button key", func(o *telegram.Options) { o.ButtonKey = buttonKey[:31] }, "buttonKey: must hold at least 32 bytes, not 31"},
		{"bad mode", func(o *telegram.Options) { o.Mode = "pigeon" }, "mode: must be polling or webhook"},
		{"api url", func(o *telegram.Options) { o.APIURL = "ftp://x" }, "apiUrl"},
		{"percent in api url", func(o *telegram.Options) { o.APIURL = tg.URL + "/%25s" }, "apiUrl: must not contain '%'"},
		{"webhook without secret", func(o *telegram.Options) {
			o.Mode, o.WebhookURL = telegram.ModeWebhook, "https://otp.example"+telegram.WebhookPath
		}, "webhookSecret"},
		{"webhook secret charset", func(o *telegram.Options) {
			o.Mode, o.WebhookURL, o.WebhookSecret = telegram.ModeWebhook, "https://otp.example"+telegram.WebhookPath, "no spaces allowed"
		}, "webhookSecret"},
		{"webhook without url", func(o *telegram.Options) {
			o.Mode, o.WebhookSecret = telegram.ModeWebhook, "abc"
		}, "webhookUrl"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := good()
			c.edit(&o)
			n, err := telegram.New(context.Background(), o)
			if c.want == "" {
				require.NoError(t, err)
				require.Equal(t, tg.Bot.Username, n.Username())
				return
			}
			require.ErrorContains(t, err, c.want)
			require.NotContains(t, err.Error(), tg.Token)
		})
	}
}

// A wrong token fails at once (401 is final); an unreachable API fails
// after the attempts; neither error shows the token.
func TestNewConnectErrors(t *testing.T) {
	tg := telegramtest.New(t)
	wrong := "999:not-the-token"
	_, err := telegram.New(context.Background(), telegram.Options{Token: agentotp.Secret(wrong), ChatID: chat, APIURL: tg.URL, ButtonKey: buttonKey, RetryBackoff: time.Millisecond})
	require.ErrorContains(t, err, "Unauthorized")
	require.NotContains(t, err.Error(), wrong)
	require.Len(t, tg.Calls("getMe"), 1)

	dead := httptest.NewServer(nil)
	dead.Close()
	_, err = telegram.New(context.Background(), telegram.Options{Token: agentotp.Secret(tg.Token), ChatID: chat, APIURL: dead.URL, ButtonKey: buttonKey, MaxAttempts: 2, RetryBackoff: time.Millisecond})
	require.ErrorContains(t, err, "attempt 2")
	require.NotContains(t, err.Error(), tg.Token)
	require.Contains(t, err.Error(), "[redacted]")
}

func TestRunNeedsServiceAndRunsOnce(t *testing.T) {
	tg := telegramtest.New(t)
	n, err := telegram.New(context.Background(), telegram.Options{Token: agentotp.Secret(tg.Token), ChatID: chat, APIURL: tg.URL, ButtonKey: buttonKey, PollTimeout: time.Second})
	require.NoError(t, err)
	require.ErrorContains(t, n.Run(context.Background()), "Attach")

	e := newEnv(t, envOptions{})
	// The env's Run is under way once it has cleared any webhook.
	require.Eventually(t, func() bool { return len(e.tg.Calls("deleteWebhook")) > 0 }, 5*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.ErrorContains(t, e.n.Run(ctx), "already running")
}

// Presses are handled apart from messages: an approver's /pending waiting
// out a rate limit does not hold up another approver's press.
func TestPressNotBehindMessages(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{action: "quorum.deploy"})
	m := e.message(chat, p.ID)
	e.tg.Fail("sendMessage", 2, 429, 1)
	u := e.tg.Say(ann, ann.ID, "/pending")
	require.Equal(t, "Your approval is recorded: 1 of 2.", e.press(bob, m, true).Text)
	require.Empty(t, e.replies(ann.ID, u.MessageID), "the press waited for /pending")
	// The approver's own command is still retried.
	require.Equal(t, "1 request(s) waiting:", e.replyTo(ann.ID, u.MessageID).Text)
}
