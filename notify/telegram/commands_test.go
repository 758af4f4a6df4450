package telegram_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

// /start tells each account whether it is linked, and its id.
func TestStartCommand(t *testing.T) {
	e := newEnv(t, envOptions{})
	off := false
	_, err := e.svc.UpdateUser(context.Background(), agentotp.SystemPrincipal, e.users[dan.ID].ID, agentotp.UserPatch{Active: &off})
	require.NoError(t, err)
	for _, c := range []struct {
		name string
		from telegramtest.User
		want []string
	}{
		{"unlinked", eve, []string{"Your Telegram id is <code>6666</code>", "<b>not linked</b>",
			"<code>agentotp users create NAME --role approver --telegram-id 6666</code>"}},
		{"approver", ann, []string{"Your Telegram id is <code>1001</code>", "linked to the approver <b>ann</b>"}},
		{"disabled", dan, []string{"<code>1004</code>", "linked to <b>dan</b>, who is disabled"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			u := e.tg.Say(c.from, c.from.ID, "/start")
			got := e.replyTo(c.from.ID, u.MessageID)
			for _, w := range c.want {
				require.Contains(t, got.Text, w)
			}
		})
	}
}

func TestHelpCommand(t *testing.T) {
	e := newEnv(t, envOptions{})
	u := e.tg.Say(eve, chat, "/help")
	got := e.replyTo(chat, u.MessageID)
	require.Contains(t, got.Text, "/pending")
	require.Contains(t, got.Text, "reply to the request message with the reason")
}

// /pending lists what waits, each with its own working buttons, only for
// linked approvers, in any chat; commands need the bot_command entity and,
// when addressed, this bot's name.
func TestPendingCommand(t *testing.T) {
	e := newEnv(t, envOptions{})
	u := e.tg.Say(ann, ann.ID, "/pending")
	require.Equal(t, "Nothing is waiting for approval.", e.replyTo(ann.ID, u.MessageID).Text)

	p := e.request(req{action: "gmail.send"})
	q := e.request(req{action: "drive.delete"})
	inGroup := e.message(chat, p.ID)

	u = e.tg.Say(eve, eve.ID, "/pending")
	require.Contains(t, e.replyTo(eve.ID, u.MessageID).Text, notLinked)

	ignored := []telegramtest.Update{
		e.tg.PlainTextUpdate(ann, ann.ID, "/pending", 0),
		e.tg.TextUpdate(ann, ann.ID, "/pending@some_other_bot", 0),
	}
	e.tg.Queue(ignored...)

	// Messages are handled in order: the ignored ones are done by now.
	u = e.tg.Say(ann, ann.ID, "/pending@agentotp_test_bot")
	require.Equal(t, "2 request(s) waiting:", e.replyTo(ann.ID, u.MessageID).Text)
	for _, i := range ignored {
		require.Empty(t, e.replies(ann.ID, i.MessageID))
	}
	private := e.message(ann.ID, p.ID)
	e.message(ann.ID, q.ID)
	require.Equal(t, data(t, inGroup, true), data(t, private, true), "buttons name the request, not the message")
	require.Len(t, e.tg.Messages(eve.ID), 1, "eve only got the refusal")

	require.Equal(t, "Approved.", e.press(ann, private, true).Text)
	// Every message about the request shows the outcome.
	e.settled(ann.ID, private.ID, "Approved</b> by ann")
	e.settled(chat, inGroup.ID, "Approved</b> by ann")
	require.Eventually(t, func() bool {
		_, tok, err := e.svc.GetPermission(context.Background(), e.agent, p.ID, 0)
		return err == nil && tok != ""
	}, 5*time.Second, 5*time.Millisecond)
	require.True(t, strings.Contains(e.message(ann.ID, q.ID).Text, "Approval needed"))
}

// An account not linked to an approver gets one attempt at each answer:
// under Telegram's rate limit its commands, replies and presses never keep
// the bot waiting ahead of an approver, whose answer comes next.
func TestStrangersAnsweredOnce(t *testing.T) {
	for _, c := range []struct {
		name   string
		method string // the call Telegram rate-limits
		say    func(e *env, m telegramtest.Message)
		codes  []int // of method's calls: the request, the stranger's answer, the approver's
	}{
		{"help", "sendMessage", func(e *env, _ telegramtest.Message) { e.tg.Say(eve, eve.ID, "/help") }, []int{200, 429, 200}},
		{"start", "sendMessage", func(e *env, _ telegramtest.Message) { e.tg.Say(eve, eve.ID, "/start") }, []int{200, 429, 200}},
		{"pending", "sendMessage", func(e *env, _ telegramtest.Message) { e.tg.Say(eve, eve.ID, "/pending") }, []int{200, 429, 200}},
		{"reply", "sendMessage", func(e *env, m telegramtest.Message) { e.tg.Reply(eve, chat, m.ID, "no") }, []int{200, 429, 200}},
		{"press", "answerCallbackQuery", func(e *env, m telegramtest.Message) { e.tg.Press(eve, chat, m.ID, data(e.t, m, true)) }, []int{429, 200}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			p := e.request(req{})
			m := e.message(chat, p.ID)
			e.tg.Fail(c.method, 1, 429, 30)
			c.say(e, m)
			if c.method == "answerCallbackQuery" {
				require.Equal(t, "Denied.", e.press(ann, m, false).Text)
			} else {
				u := e.tg.Say(ann, ann.ID, "/help")
				e.replyTo(ann.ID, u.MessageID)
			}
			var codes []int
			for _, call := range e.tg.Calls(c.method) {
				codes = append(codes, call.Code)
			}
			require.Equal(t, c.codes, codes)
		})
	}
}

// Answers to an account not linked to an approver are rate-limited per
// chat; an approver's are not.
func TestStrangerAnswersLimited(t *testing.T) {
	e := newEnv(t, envOptions{})
	for range 5 {
		e.tg.Say(eve, eve.ID, "/help")
		e.tg.Say(ann, ann.ID, "/help")
	}
	u := e.tg.Say(ann, ann.ID, "/start")
	e.replyTo(ann.ID, u.MessageID)
	require.Len(t, e.tg.Messages(ann.ID), 6)
	got := len(e.tg.Messages(eve.ID))
	require.Positive(t, got)
	require.Less(t, got, 5)
}
