package telegram_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/telegram"
	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

// instance is a second agentotp instance on the env's database: its own
// Service and Notifier, taking updates by webhook, so that a press reaches
// it and not the env's Notifier, which sent the messages.
type instance struct {
	svc  *agentotp.Service
	hook string
}

func newInstance(t *testing.T, e *env, key []byte) *instance {
	t.Helper()
	opts := e.opts
	opts.ButtonKey = key
	srv := httptest.NewUnstartedServer(nil)
	opts.Mode, opts.WebhookURL, opts.WebhookSecret = telegram.ModeWebhook, "http://"+srv.Listener.Addr().String()+telegram.WebhookPath, webhookSecret
	n, err := telegram.New(context.Background(), opts)
	require.NoError(t, err)
	svc := agentotp.NewService(e.store, agentotp.Options{
		Evaluator: policy, Notifier: n, PublicURL: "https://otp.example", WaitPoll: 20 * time.Millisecond,
		Clock: e.now, Logger: opts.Logger,
	})
	n.Attach(svc)
	srv.Config.Handler = n.WebhookHandler()
	srv.Start()
	t.Cleanup(srv.Close)
	return &instance{svc: svc, hook: opts.WebhookURL}
}

// press delivers a press of a button of m to the instance and waits for
// the answer.
func (i *instance) press(t *testing.T, e *env, from telegramtest.User, m telegramtest.Message, approve bool) telegramtest.Answer {
	t.Helper()
	u := e.tg.PressUpdate(from, m.ChatID, m.ID, data(t, m, approve))
	code, err := telegramtest.Post(context.Background(), i.hook, webhookSecret, u)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	return e.answer(u.CallbackID)
}

// reply delivers from's reply to message msg to the instance, which has
// handled it when this returns.
func (i *instance) reply(t *testing.T, e *env, from telegramtest.User, msg int, text string) telegramtest.Update {
	t.Helper()
	u := e.tg.TextUpdate(from, chat, text, msg)
	i.post(t, u)
	return u
}

// post delivers u to the instance's webhook.
func (i *instance) post(t *testing.T, u telegramtest.Update) {
	t.Helper()
	code, err := telegramtest.Post(context.Background(), i.hook, webhookSecret, u)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
}

// rawReply is an update with from's reply text to the message to, as given.
func rawReply(t *testing.T, id int, from telegramtest.User, to map[string]any, text string) telegramtest.Update {
	t.Helper()
	b, err := json.Marshal(map[string]any{"update_id": id, "message": map[string]any{
		"message_id": id, "date": time.Now().Unix(), "from": from, "text": text, "reply_to_message": to,
		"chat": map[string]any{"id": chat, "type": "supergroup", "title": "approvers"},
	}})
	require.NoError(t, err)
	return telegramtest.Update{ID: id, MessageID: id, JSON: b}
}

// A reply reaches an instance that did not send the request message (in
// webhook mode any instance may get it): the message's buttons, which
// Telegram sends along with the message replied to, name the request
// under the shared button key, so the reply denies with its text as the
// reason there too, and an unlinked replier is refused and audited. Under
// another key, or replying to a message that is not the bot's, nothing is
// decided and nothing is said.
func TestReplyOnAnotherInstance(t *testing.T) {
	for _, c := range []struct {
		name   string
		key    []byte
		denied bool
	}{
		{"shared key", buttonKey, true},
		{"other key", bytes.Repeat([]byte{7}, telegram.MinButtonKeyLen), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			b := newInstance(t, e, c.key)
			p := e.request(req{})
			m := e.message(chat, p.ID)

			// Replying to a user's message that quotes the request id
			// names no request.
			quote := e.tg.TextUpdate(ann, chat, "about "+string(p.ID), 0)
			u := b.reply(t, e, ann, quote.MessageID, "deny it")
			require.Empty(t, e.replies(chat, u.MessageID))

			// Replies to messages that carry valid buttons but are not
			// the bot's, or whose buttons name two requests, decide
			// nothing either (replies built by hand: Telegram would
			// fill in the message replied to).
			q := e.request(req{})
			mq := e.message(chat, q.ID)
			buttons := func(ms ...telegramtest.Message) []map[string]any {
				var row []map[string]any
				for _, m := range ms {
					row = append(row, map[string]any{"text": "✅", "callback_data": data(t, m, true)},
						map[string]any{"text": "❌", "callback_data": data(t, m, false)})
				}
				return row
			}
			for i, to := range []map[string]any{
				{"from": ann, "reply_markup": map[string]any{"inline_keyboard": [][]map[string]any{buttons(m)}}},
				{"from": e.tg.Bot, "reply_markup": map[string]any{"inline_keyboard": [][]map[string]any{buttons(m, mq)}}},
			} {
				to["message_id"], to["date"] = m.ID, time.Now().Unix()
				to["chat"] = map[string]any{"id": chat, "type": "supergroup", "title": "approvers"}
				b.post(t, rawReply(t, 900001+i, ann, to, "deny them"))
			}
			require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
			require.Equal(t, agentotp.StatusPending, e.status(q.ID).Status)

			u = b.reply(t, e, eve, m.ID, "deny this")
			if !c.denied {
				require.Empty(t, e.replies(chat, u.MessageID))
				u = b.reply(t, e, ann, m.ID, "too risky")
				require.Empty(t, e.replies(chat, u.MessageID))
				require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
				require.Empty(t, e.events(p.ID, agentotp.EventDecideRejected))
				return
			}
			require.Contains(t, e.replyTo(chat, u.MessageID).Text, notLinked)
			require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
			require.Len(t, e.events(p.ID, agentotp.EventDecideRejected), 1)

			b.reply(t, e, ann, m.ID, "too risky")
			// The env's Notifier heard nothing of the decision: the edit
			// is the other instance's.
			e.settled(chat, m.ID, "❌ <b>Denied</b> by ann: too risky")
			got := e.status(p.ID)
			require.Equal(t, agentotp.StatusDenied, got.Status)
			require.Equal(t, "too risky", got.DecisionReason)
		})
	}
}

// A press reaches an instance that did not send the message: with the
// shared button key it decides and that instance edits the pressed
// message; with another key it is refused and changes nothing.
func TestPressOnAnotherInstance(t *testing.T) {
	for _, c := range []struct {
		name    string
		key     []byte
		approve bool
		answer  string
		status  agentotp.Status
		outcome string
	}{
		{"approve", buttonKey, true, "Approved.", agentotp.StatusApproved, "✅ <b>Approved</b> by ann."},
		{"deny", buttonKey, false, "Denied.", agentotp.StatusDenied, "❌ <b>Denied</b> by ann: denied in Telegram by ann"},
		{"other key refuses", bytes.Repeat([]byte{7}, telegram.MinButtonKeyLen), true, invalid, agentotp.StatusPending, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			b := newInstance(t, e, c.key)
			p := e.request(req{})
			m := e.message(chat, p.ID)

			a := b.press(t, e, eve, m, c.approve)
			require.Contains(t, a.Text, notLinked)
			require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)

			a = b.press(t, e, ann, m, c.approve)
			require.Contains(t, a.Text, c.answer)
			require.Equal(t, c.status, e.status(p.ID).Status)
			if c.outcome == "" {
				require.True(t, a.ShowAlert)
				require.Empty(t, e.events(p.ID, agentotp.EventDecideRejected), "data it cannot check names no request to audit")
				require.Empty(t, e.events(p.ID, agentotp.EventApprove))
				require.Empty(t, e.events(p.ID, agentotp.EventDeny))
				now, _ := e.tg.Message(chat, m.ID)
				require.Zero(t, now.Edits)
				require.Len(t, now.Buttons(), 2)
				return
			}
			// The env's Notifier heard nothing of the decision: the edit
			// is the other instance's.
			rejected := e.events(p.ID, agentotp.EventDecideRejected)
			require.Len(t, rejected, 1)
			require.Equal(t, "6666", rejected[0].ActorID)
			done := e.settled(chat, m.ID, c.outcome)
			require.Equal(t, 1, done.Edits)

			// A late press on the other instance is stale there too.
			a = b.press(t, e, bob, m, true)
			require.Contains(t, a.Text, alreadyDone)
			require.Equal(t, c.status, e.status(p.ID).Status)
		})
	}
}

// A quorum split across instances: the first vote lands on the other
// instance, which shows the progress on the pressed message with its
// buttons; the second on the sender, which shows the outcome.
func TestQuorumAcrossInstances(t *testing.T) {
	e := newEnv(t, envOptions{})
	b := newInstance(t, e, buttonKey)
	p := e.request(req{action: "quorum.deploy"})
	m := e.message(chat, p.ID)

	require.Equal(t, "Your approval is recorded: 1 of 2.", b.press(t, e, ann, m, true).Text)
	var now telegramtest.Message
	require.Eventually(t, func() bool {
		now, _ = e.tg.Message(chat, m.ID)
		return now.Edits == 1
	}, 5*time.Second, 5*time.Millisecond)
	require.Contains(t, now.Text, "1 of 2 approvals (by ann)")
	require.Equal(t, data(t, m, true), data(t, now, true), "the buttons stay the same")

	require.Equal(t, "Approved.", e.press(bob, now, true).Text)
	e.settled(chat, m.ID, "Approved</b> by bob")
	require.Equal(t, agentotp.StatusApproved, e.status(p.ID).Status)
}
