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

const (
	notLinked   = "You are not linked to an approver"
	invalid     = "This button is not valid"
	alreadyDone = "already decided"
)

// A press from an unlinked account changes nothing and is audited;
// an approver's press approves, the message shows it without buttons, and
// the agent receives its token once.
func TestApproveInTelegram(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{resource: "mailto:bob@example.com", scope: map[string]any{"max_emails": 1}, reason: "weekly report"})
	m := e.message(chat, p.ID)
	require.Contains(t, m.Text, "Approval needed")
	for _, b := range m.Buttons() {
		require.LessOrEqual(t, len(b.Data()), 64)
		require.Regexp(t, `^[ad]:`+string(p.ID)+`\.[A-Za-z0-9_-]{16}$`, b.Data(), "buttons carry the request id and a MAC")
	}

	a := e.press(eve, m, true)
	require.True(t, a.ShowAlert)
	require.Contains(t, a.Text, notLinked)
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	rejected := e.events(p.ID, agentotp.EventDecideRejected)
	require.Len(t, rejected, 1)
	require.Equal(t, "telegram", rejected[0].ActorType)
	require.Equal(t, "6666", rejected[0].ActorID)
	require.Equal(t, true, rejected[0].Details["approved"])
	require.Equal(t, map[string]any{"via": "telegram"}, rejected[0].Details["channel"])

	a = e.press(ann, m, true)
	require.False(t, a.ShowAlert)
	require.Equal(t, "Approved.", a.Text)
	approved := e.events(p.ID, agentotp.EventApprove)
	require.Len(t, approved, 1)
	require.Equal(t, "user", approved[0].ActorType)
	require.Equal(t, string(e.users[ann.ID].ID), approved[0].ActorID)
	require.Equal(t, map[string]any{"via": "telegram"}, approved[0].Details["channel"])

	done := e.settled(chat, m.ID, "✅ <b>Approved</b> by ann.")
	require.Equal(t, 1, done.Edits)
	require.NotContains(t, done.Text, "Expires:")

	ctx := context.Background()
	got, tok, err := e.svc.GetPermission(ctx, e.agent, p.ID, 2*time.Second)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusApproved, got.Status)
	require.True(t, agentotp.ValidTokenFormat(tok.Reveal()))
	_, again, err := e.svc.GetPermission(ctx, e.agent, p.ID, 0)
	require.NoError(t, err)
	require.Empty(t, again, "the token is handed out once")
}

// The agent waiting on the request is woken by the press.
func TestAgentWaitsForPress(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	type result struct {
		p   *agentotp.Permission
		tok agentotp.Secret
		err error
	}
	ch := make(chan result, 1)
	go func() {
		got, tok, err := e.svc.GetPermission(context.Background(), e.agent, p.ID, 5*time.Second)
		ch <- result{got, tok, err}
	}()
	time.Sleep(50 * time.Millisecond)
	e.press(bob, m, true)
	r := <-ch
	require.NoError(t, r.err)
	require.Equal(t, agentotp.StatusApproved, r.p.Status)
	require.NotEmpty(t, r.tok)
}

// A reply to the request message denies it with the reply as the reason;
// a plain Deny press records who denied.
func TestDenyInTelegram(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{reason: "cleanup"})
	m := e.message(chat, p.ID)

	// A reply from an unlinked account is refused and audited.
	u := e.tg.Reply(eve, chat, m.ID, "deny this")
	require.Contains(t, e.replyTo(chat, u.MessageID).Text, notLinked)
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	rejected := e.events(p.ID, agentotp.EventDecideRejected)
	require.Len(t, rejected, 1)
	require.Equal(t, "telegram", rejected[0].ActorType)
	require.Equal(t, false, rejected[0].Details["approved"])

	e.tg.Reply(ann, chat, m.ID, "too risky:\nwrong\trecipient\u202e")
	done := e.settled(chat, m.ID, "❌ <b>Denied</b> by ann: too risky: wrong recipient")
	require.NotContains(t, done.Text, "\u202e")
	got := e.status(p.ID)
	require.Equal(t, agentotp.StatusDenied, got.Status)
	require.Equal(t, "too risky: wrong recipient", got.DecisionReason)
	_, tok, err := e.svc.GetPermission(context.Background(), e.agent, p.ID, 0)
	require.NoError(t, err)
	require.Empty(t, tok)

	q := e.request(req{})
	mq := e.message(chat, q.ID)
	a := e.press(bob, mq, false)
	require.Equal(t, "Denied.", a.Text)
	e.settled(chat, mq.ID, "❌ <b>Denied</b> by bob: denied in Telegram by bob")
	require.Equal(t, "denied in Telegram by bob", e.status(q.ID).DecisionReason)
	deny := e.events(q.ID, agentotp.EventDeny)
	require.Len(t, deny, 1)
	require.Equal(t, map[string]any{"via": "telegram"}, deny[0].Details["channel"])
}

// Expiry edits the message; a press afterwards says so and changes
// nothing.
func TestExpiredRequest(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	e.skew.Store(int64(agentotp.DefaultApprovalTTL + time.Second))
	n, err := e.svc.ExpireDue(context.Background())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	e.settled(chat, m.ID, "⌛ <b>Expired</b>: nobody decided in time.")

	a := e.press(ann, m, true)
	require.True(t, a.ShowAlert)
	require.Contains(t, a.Text, "expired")
	require.Equal(t, agentotp.StatusExpired, e.status(p.ID).Status)
	require.Empty(t, e.events(p.ID, agentotp.EventApprove))
	got, tok, err := e.svc.GetPermission(context.Background(), e.agent, p.ID, 0)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusExpired, got.Status)
	require.Empty(t, tok)
}

// A press after the window closed but before the sweeper ran is refused
// too, and the message is brought up to date.
func TestPressAfterDeadlineBeforeSweep(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	e.skew.Store(int64(agentotp.DefaultApprovalTTL))
	a := e.press(ann, m, true)
	require.Contains(t, a.Text, "expired")
	e.settled(chat, m.ID, "Expired")
	require.Empty(t, e.events(p.ID, agentotp.EventApprove))
}

// Revocation edits the message; a press afterwards is refused.
func TestRevokedRequest(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	_, err := e.svc.Revoke(context.Background(), e.agent, p.ID, "not needed")
	require.NoError(t, err)
	e.settled(chat, m.ID, "🚫 <b>Revoked</b> before a decision.")
	a := e.press(ann, m, true)
	require.Contains(t, a.Text, "revoked")
	require.Equal(t, agentotp.StatusRevoked, e.status(p.ID).Status)
	got, tok, err := e.svc.GetPermission(context.Background(), e.agent, p.ID, 0)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusRevoked, got.Status)
	require.Empty(t, tok)

	// Revoking after approval shows both.
	q := e.request(req{})
	mq := e.message(chat, q.ID)
	e.press(ann, mq, true)
	e.settled(chat, mq.ID, "Approved")
	_, err = e.svc.Revoke(context.Background(), e.agent, q.ID, "")
	require.NoError(t, err)
	e.settled(chat, mq.ID, "✅ <b>Approved</b> by ann. 🚫 The permission was <b>revoked</b>.")
}

// 2 of 3: one person pressing twice stays pending; the second distinct
// approver approves. The message shows the progress meanwhile.
func TestQuorum(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{action: "quorum.transfer", resource: "acct:42"})
	m := e.message(chat, p.ID)
	require.Contains(t, m.Text, "Approvals needed: 2")

	a := e.press(ann, m, true)
	require.Equal(t, "Your approval is recorded: 1 of 2.", a.Text)
	var mid telegramtest.Message
	require.Eventually(t, func() bool {
		mid, _ = e.tg.Message(chat, m.ID)
		return strings.Contains(mid.Text, "⏳ 1 of 2 approvals (by ann); 1 more needed.")
	}, 5*time.Second, 5*time.Millisecond)
	require.Len(t, mid.Buttons(), 2, "a vote that does not decide keeps the buttons")
	require.Equal(t, data(t, m, true), data(t, mid, true))

	a = e.press(ann, mid, true)
	require.True(t, a.ShowAlert)
	require.Contains(t, a.Text, "You have already approved this request")
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	require.Len(t, e.events(p.ID, agentotp.EventVote), 1)

	a = e.press(bob, mid, true)
	require.Equal(t, "Approved.", a.Text)
	e.settled(chat, m.ID, "✅ <b>Approved</b> by bob.")
	_, tok, err := e.svc.GetPermission(context.Background(), e.agent, p.ID, time.Second)
	require.NoError(t, err)
	require.NotEmpty(t, tok)

	a = e.press(cat, mid, true)
	require.Contains(t, a.Text, alreadyDone)
}

// A press on a message whose request was decided elsewhere says "already
// decided", is audited, and brings the message up to date.
func TestStalePressAfterConsoleDecision(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	_, err := e.svc.Decide(context.Background(), agentotp.Principal{User: e.users[ann.ID]}, p.ID, agentotp.DecideInput{Approved: false, Reason: "no"})
	require.NoError(t, err)
	e.settled(chat, m.ID, "❌ <b>Denied</b> by ann: no")

	a := e.press(bob, m, true)
	require.True(t, a.ShowAlert)
	require.Equal(t, "This request was already decided (denied). Nothing changed.", a.Text)
	require.Equal(t, agentotp.StatusDenied, e.status(p.ID).Status)
	rejected := e.events(p.ID, agentotp.EventDecideRejected)
	require.Len(t, rejected, 1)
	require.Equal(t, string(e.users[bob.ID].ID), rejected[0].ActorID)
}

// Callback data whose MAC does not check, or that is not on the pressed
// message, decides nothing and edits nothing.
func TestTamperedCallbackData(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	q := e.request(req{})
	mp, mq := e.message(chat, p.ID), e.message(chat, q.ID)
	approveP, denyP := data(t, mp, true), data(t, mp, false)
	plain := e.tg.PlainTextUpdate(ann, chat, "hello", 0) // a message without buttons, not delivered
	signed, mac, _ := strings.Cut(approveP, ".")
	flipped := []byte(mac)
	flipped[0] ^= 1
	for name, c := range map[string]struct {
		chat int64
		msg  int
		data string
	}{
		"changed mac":           {chat, mp.ID, signed + "." + string(flipped)},
		"other request id":      {chat, mp.ID, "a:" + string(q.ID) + "." + mac},
		"approve with deny mac": {chat, mp.ID, "a" + denyP[1:]},
		"deny with approve mac": {chat, mp.ID, "d" + approveP[1:]},
		"truncated":             {chat, mp.ID, approveP[:len(approveP)-1]},
		"no mac":                {chat, mp.ID, signed},
		"request id alone":      {chat, mp.ID, string(p.ID)},
		"unknown verb":          {chat, mp.ID, "x" + approveP[1:]},
		"empty":                 {chat, mp.ID, ""},
		"on another message":    {chat, mq.ID, approveP},
		"in another chat":       {ann.ID, mp.ID, approveP},
		"on a plain message":    {chat, plain.MessageID, approveP},
	} {
		t.Run(name, func(t *testing.T) {
			a := e.pressData(ann, c.chat, c.msg, c.data)
			require.True(t, a.ShowAlert)
			require.Contains(t, a.Text, invalid)
		})
	}
	for _, m := range []telegramtest.Message{mp, mq} {
		id := agentotp.PermissionID(strings.TrimPrefix(strings.SplitN(data(t, m, true), ".", 2)[0], "a:"))
		require.Equal(t, agentotp.StatusPending, e.status(id).Status)
		require.Empty(t, e.events(id, agentotp.EventApprove))
		require.Empty(t, e.events(id, agentotp.EventDeny))
		require.Empty(t, e.events(id, agentotp.EventDecideRejected))
		now, _ := e.tg.Message(chat, m.ID)
		require.Zero(t, now.Edits)
		require.Len(t, now.Buttons(), 2)
	}
}

// A repeated update (same update_id) or callback (same id) acts once.
func TestRepeatedUpdateActsOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{action: "quorum.deploy"})
	m := e.message(chat, p.ID)
	u := e.tg.PressUpdate(ann, chat, m.ID, data(t, m, true))
	e.tg.Queue(u, u, u)
	e.handled(u)
	require.Len(t, e.tg.Answers(), 1)
	require.Len(t, e.events(p.ID, agentotp.EventVote), 1)
	require.Empty(t, e.events(p.ID, agentotp.EventDecideRejected), "the repeats never reached Decide")
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
}

// Rights are read at press time: a user disabled while the request waits
// cannot decide it.
func TestDisabledApprover(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	m := e.message(chat, p.ID)
	off := false
	_, err := e.svc.UpdateUser(context.Background(), agentotp.SystemPrincipal, e.users[dan.ID].ID, agentotp.UserPatch{Active: &off})
	require.NoError(t, err)
	a := e.press(dan, m, true)
	require.True(t, a.ShowAlert)
	require.Contains(t, a.Text, notLinked)
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	rejected := e.events(p.ID, agentotp.EventDecideRejected)
	require.Len(t, rejected, 1)
	require.Equal(t, "telegram", rejected[0].ActorType)
	require.Equal(t, "1004", rejected[0].ActorID)
	require.Contains(t, rejected[0].Details["reason"], "disabled")
}

// A rule that names its approvers is enforced for Telegram presses too.
func TestNotAnApproverForRule(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{action: "restricted.drop_table"})
	m := e.message(chat, p.ID)
	require.Contains(t, m.Text, "May approve: bob")
	a := e.press(ann, m, true)
	require.True(t, a.ShowAlert)
	require.Contains(t, a.Text, "not one of the approvers")
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	rejected := e.events(p.ID, agentotp.EventDecideRejected)
	require.Len(t, rejected, 1)
	require.Equal(t, string(e.users[ann.ID].ID), rejected[0].ActorID)

	require.Equal(t, "Approved.", e.press(bob, m, true).Text)
	e.settled(chat, m.ID, "Approved</b> by bob")
}

// Buttons outlive a restart: they carry what a press needs, so an old
// message's button still decides, and /pending posts working ones too.
func TestButtonsAfterRestart(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{})
	q := e.request(req{})
	old := e.message(chat, p.ID)
	e.stop()

	restarted := newEnvNotifier(t, e)
	e.n = restarted
	e.run()
	require.Equal(t, "Approved.", e.press(ann, old, true).Text)
	require.Equal(t, agentotp.StatusApproved, e.status(p.ID).Status)

	e.tg.Say(ann, chat, "/pending")
	var fresh telegramtest.Message
	require.Eventually(t, func() bool {
		for _, m := range e.tg.Messages(chat) {
			if strings.Contains(m.Text, string(q.ID)) && len(m.Buttons()) == 2 && m.ID > old.ID+1 {
				fresh = m
				return true
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, "Denied.", e.press(ann, fresh, false).Text)
	require.Equal(t, agentotp.StatusDenied, e.status(q.ID).Status)
}
