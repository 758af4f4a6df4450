package telegram_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/telegram"
	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

func TestWebhookRegistration(t *testing.T) {
	e := newEnv(t, envOptions{webhook: true})
	require.Eventually(t, func() bool { u, _ := e.tg.Webhook(); return u != "" }, 5*time.Second, 5*time.Millisecond)
	p := e.tg.WebhookParams()
	require.Equal(t, e.hookURL, p.Get("url"))
	require.Equal(t, webhookSecret, p.Get("secret_token"))
	require.JSONEq(t, `["message","callback_query"]`, p.Get("allowed_updates"))
	require.Empty(t, e.tg.Calls("getUpdates"), "webhook mode does not poll")
}

// A POST without the right secret is refused and changes nothing; a
// replayed update changes nothing.
func TestForgedWebhook(t *testing.T) {
	e := newEnv(t, envOptions{webhook: true})
	ctx := context.Background()
	p := e.request(req{})
	m := e.message(chat, p.ID)
	press := e.tg.PressUpdate(ann, chat, m.ID, data(t, m, true))

	for name, secret := range map[string]string{
		"no secret":          "",
		"wrong secret":       "guess",
		"same length":        strings.Repeat("x", len(webhookSecret)),
		"prefix":             webhookSecret[:len(webhookSecret)-1],
		"longer":             webhookSecret + "x",
		"case changed":       strings.ToUpper(webhookSecret),
		"bot token as guess": e.tg.Token[:10],
	} {
		t.Run(name, func(t *testing.T) {
			code, err := telegramtest.Post(ctx, e.hookURL, secret, press)
			require.NoError(t, err)
			require.Equal(t, http.StatusUnauthorized, code)
		})
	}
	require.Empty(t, e.tg.Answers())
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	require.Empty(t, e.events(p.ID, agentotp.EventApprove))
	require.Empty(t, e.events(p.ID, agentotp.EventDecideRejected))

	req, err := http.NewRequest(http.MethodGet, e.hookURL, nil)
	require.NoError(t, err)
	req.Header.Set(telegram.SecretHeader, webhookSecret)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	code, err := telegramtest.Post(ctx, e.hookURL, webhookSecret, telegramtest.Update{ID: 1, JSON: []byte("{not json")})
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, code)

	code, err = telegramtest.Post(ctx, e.hookURL, webhookSecret, press)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	a, ok := e.tg.Answer(press.CallbackID)
	require.True(t, ok, "the webhook handles the update before answering")
	require.Equal(t, "Approved.", a.Text)

	code, err = telegramtest.Post(ctx, e.hookURL, webhookSecret, press)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, "a repeat is acknowledged so Telegram stops retrying")
	require.Len(t, e.tg.Answers(), 1)
	require.Len(t, e.events(p.ID, agentotp.EventApprove), 1)
	require.Empty(t, e.events(p.ID, agentotp.EventDecideRejected))
}

// Approve and deny at the same instant: one wins, the other is told it
// lost, both are audited.
func TestConcurrentPresses(t *testing.T) {
	e := newEnv(t, envOptions{webhook: true})
	ctx := context.Background()
	for range 5 {
		p := e.request(req{})
		m := e.message(chat, p.ID)
		presses := []telegramtest.Update{
			e.tg.PressUpdate(ann, chat, m.ID, data(t, m, true)),
			e.tg.PressUpdate(bob, chat, m.ID, data(t, m, false)),
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, u := range presses {
			wg.Go(func() {
				<-start
				// Not require: FailNow must not run outside the test goroutine.
				if code, err := telegramtest.Post(ctx, e.hookURL, webhookSecret, u); err != nil || code != http.StatusOK {
					t.Errorf("webhook post: %d, %v", code, err)
				}
			})
		}
		close(start)
		wg.Wait()
		var won, lost int
		for _, u := range presses {
			a, ok := e.tg.Answer(u.CallbackID)
			require.True(t, ok)
			switch {
			case a.Text == "Approved." || a.Text == "Denied.":
				won++
			case strings.Contains(a.Text, alreadyDone):
				lost++
			default:
				t.Fatalf("unexpected answer %q", a.Text)
			}
		}
		require.Equal(t, 1, won)
		require.Equal(t, 1, lost)
		st := e.status(p.ID).Status
		require.Contains(t, []agentotp.Status{agentotp.StatusApproved, agentotp.StatusDenied}, st)
		require.Len(t, append(e.events(p.ID, agentotp.EventApprove), e.events(p.ID, agentotp.EventDeny)...), 1)
		require.Len(t, e.events(p.ID, agentotp.EventDecideRejected), 1)
		e.settled(chat, m.ID, map[agentotp.Status]string{agentotp.StatusApproved: "Approved</b> by ann", agentotp.StatusDenied: "Denied</b> by bob"}[st])
	}
}

// In polling mode the webhook route accepts nothing.
func TestWebhookHandlerInPollingMode(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	u := e.tg.PressUpdate(ann, chat, m.ID, data(t, m, true))
	r, err := http.NewRequest(http.MethodPost, "/", strings.NewReader(string(u.JSON)))
	require.NoError(t, err)
	r.Header.Set(telegram.SecretHeader, "")
	w := httptest.NewRecorder()
	e.n.WebhookHandler().ServeHTTP(w, r)
	require.Equal(t, http.StatusNotFound, w.Code)
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
}
