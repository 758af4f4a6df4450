package telegram_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/telegram"
	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

// tooLong is the notice on a message that cannot show its request in full.
const tooLong = "This request is too long to show in full here"

// golden compares got with testdata/name; -update rewrites the file.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create %s", path)
	require.Equal(t, string(want), got, "rendering changed; review and rerun with -update")
}

// invisible are characters that must never reach a message.
var invisible = []string{
	"\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
	"\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\x1b", "\r", "\u0085", "\u009b",
}

// The message is built from the structured fields; hostile text in any of
// them is escaped, stripped of invisible characters, labelled as the
// agent's own words and capped.
func TestHostileRendering(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	a, _, err := e.svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "<b>Security Team</b> ✅ verified\u202e"})
	require.NoError(t, err)
	e.agent = agentotp.Principal{Agent: a}
	p := e.request(req{
		// The reason claims one thing; the action, resource and scope say
		// what would really happen, and they are what the approver sees
		// first.
		action:   "gmail.send\u202egpj.exe",
		resource: "mailto:ceo@exаmple.com\u200b", // Cyrillic а, zero-width space
		scope: map[string]any{
			"to":   `<a href="https://evil.example">boss@example.com</a>`,
			"note": "✅ verified by security\u2067 \u2066&amp;",
			"body": "</pre><b>x</b>\x1b[31m\u0085",
			"bcc":  []any{"attacker@evil.example"},
		},
		reason: "<b>✅ Verified</b> safe\n\nAction: harmless.read\r\x1b[31m @admin /approve https://evil.example #tag\u200d\ufeff",
	})
	m := e.message(chat, p.ID)
	text := strings.ReplaceAll(m.Text, string(p.ID), "perm_ID")
	golden(t, "hostile_pending.golden", text)

	require.NotContains(t, m.Text, "<b>✅ Verified")
	require.NotContains(t, m.Text, "<b>Security Team")
	require.NotContains(t, m.Text, `<a href="https://evil.example"`)
	for _, c := range invisible {
		require.NotContains(t, m.Text, c, "invisible character %q reached the message", c)
	}
	require.Contains(t, m.Text, "Reason given by the agent (its own words, not verified):\n<code>&lt;b&gt;✅ Verified&lt;/b&gt; safe  Action: harmless.read")
	require.Contains(t, m.Text, `⚠️ The resource has non-ASCII or invisible characters: <code>&#34;mailto:ceo@ex\u0430mple.com\u200b&#34;</code>`)
	require.Contains(t, m.Text, `\u202e`, "the override shows as an escape, not as an effect")
	// The fake parsed the HTML as Telegram would: the visible text shows
	// the hostile markup as characters.
	require.Contains(t, m.Visible, "<b>✅ Verified</b> safe")
	require.Contains(t, m.Visible, `"to": "<a href=\"https://evil.example\">boss@example.com</a>"`)

	e.tg.Reply(ann, chat, m.ID, "<i>no</i> & </code><b>never</b>")
	done := e.settled(chat, m.ID, "Denied")
	golden(t, "hostile_denied.golden", strings.ReplaceAll(done.Text, string(p.ID), "perm_ID"))
	require.Contains(t, done.Text, "❌ <b>Denied</b> by ann: &lt;i&gt;no&lt;/i&gt; &amp; &lt;/code&gt;&lt;b&gt;never&lt;/b&gt;")
}

// Every field at its largest stays inside Telegram's 4,096 characters,
// pending and decided, and a cut never splits a character or an entity.
func TestLongFieldsStayUnderLimit(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	a, _, err := e.svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: strings.Repeat("&", agentotp.MaxNameLen)})
	require.NoError(t, err)
	e.agent = agentotp.Principal{Agent: a}
	// As large as a request may carry: 8 KiB of JSON each for the scope
	// and the context ('<' and '&' take six bytes as stored).
	scope := map[string]any{}
	for i := range 70 {
		scope[strings.Repeat("k", 20)+string(rune('a'+i%26))+strings.Repeat("<", i%7)] = strings.Repeat("😀&", 7)
	}
	p := e.request(req{
		action:   "quorum." + strings.Repeat("<", agentotp.MaxActionLen-len("quorum.")),
		resource: strings.Repeat("é&", agentotp.MaxResourceLen/3),
		scope:    scope,
		reason:   strings.Repeat("🙂<>", 500),
	})
	m := e.message(chat, p.ID)
	require.LessOrEqual(t, telegramtest.Units(m.Text), 4096)
	require.Contains(t, m.Text, "…</pre>")
	require.Contains(t, m.Text, tooLong)
	require.NotContains(t, m.Text, "\ufffd", "a cut split a character")
	// A vote from the console shows on the message /pending posts.
	_, err = e.svc.Decide(ctx, agentotp.Principal{User: e.users[ann.ID]}, p.ID, agentotp.DecideInput{Approved: true, Reason: "ok"})
	require.NoError(t, err)
	u := e.tg.Say(bob, bob.ID, "/pending")
	e.replyTo(bob.ID, u.MessageID)
	mid := e.message(bob.ID, p.ID)
	require.Contains(t, mid.Text, "1 of 2 approvals")
	require.LessOrEqual(t, telegramtest.Units(mid.Text), 4096)

	e.tg.Reply(bob, chat, m.ID, strings.Repeat("&<", 2000))
	done := e.settled(chat, m.ID, "Denied")
	require.LessOrEqual(t, telegramtest.Units(done.Text), 4096)
	require.Len(t, e.status(p.ID).DecisionReason, agentotp.MaxReasonLen)
}

// What would be approved is shown whole or not offered for approval: a
// message that had to cut the agent, action, resource or scope says so,
// links to the console and has Deny alone.
func TestTooLongToApprove(t *testing.T) {
	e := newEnv(t, envOptions{})
	long, _, err := e.svc.CreateAgent(context.Background(), agentotp.SystemPrincipal, agentotp.AgentInput{Name: "mailer-" + strings.Repeat("x", 100) + "-prod"})
	require.NoError(t, err)
	for _, c := range []struct {
		name   string
		agent  *agentotp.Agent
		r      req
		hidden string // what the message cannot show
		full   bool
	}{
		{name: "fits", r: req{resource: "mailto:alice@corp.example", scope: map[string]any{"max_emails": 1}}, full: true},
		// Keys sort, so the padding comes first.
		{name: "scope", r: req{scope: map[string]any{
			"a_note":     strings.Repeat("routine weekly report ", 50),
			"allowed_to": []any{"alice@corp.example", "attacker@evil.example"},
		}}, hidden: "attacker@evil.example"},
		{name: "resource", r: req{resource: "https://docs.corp.example/" + strings.Repeat("a", 280) + "/../admin/delete-everything"}, hidden: "delete-everything"},
		{name: "action", r: req{action: "drive." + strings.Repeat("a", 200) + ".delete_all"}, hidden: "delete_all"},
		{name: "agent", agent: long, r: req{}, hidden: "-prod"},
		// The main line fits once the zero-width space is removed; the
		// warning that shows it does not.
		{name: "hidden characters", r: req{resource: "https://docs.corp.example/" + strings.Repeat("a", 120) + "\u200b/admin"}, hidden: `\u200b`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.agent != nil {
				defer func(a agentotp.Principal) { e.agent = a }(e.agent)
				e.agent = agentotp.Principal{Agent: c.agent}
			}
			p := e.request(c.r)
			m := e.message(chat, p.ID)
			if c.full {
				require.Len(t, m.Buttons(), 2)
				require.NotContains(t, m.Text, tooLong)
				return
			}
			require.NotContains(t, m.Visible, c.hidden)
			require.Contains(t, m.Text, tooLong)
			require.Contains(t, m.Text, `<a href="https://otp.example/ui/requests/`+string(p.ID)+`">console</a>`)
			bs := m.Buttons()
			require.Len(t, bs, 1)
			require.Equal(t, "❌ Deny", bs[0].Text)
			require.Equal(t, "Denied.", e.pressData(ann, chat, m.ID, bs[0].Data()).Text)
			require.Equal(t, agentotp.StatusDenied, e.status(p.ID).Status)
		})
	}
}

// An Approve button on a message sent before such requests lost it still
// cannot approve one: the press is refused and the message put right, and
// /pending posts it with Deny alone.
func TestOldApproveButtonOnTooLongRequest(t *testing.T) {
	e := newEnv(t, envOptions{})
	p := e.request(req{scope: map[string]any{"a_note": strings.Repeat("padding ", 200), "to": "attacker@evil.example"}})
	e.message(chat, p.ID)

	bot, err := tgbotapi.NewBotAPIWithAPIEndpoint(e.tg.Token, e.tg.URL+"/bot%s/%s")
	require.NoError(t, err)
	cfg := tgbotapi.NewMessage(chat, "Approval needed. Request: "+string(p.ID))
	cfg.ReplyMarkup = tgbotapi.NewInlineKeyboardMarkup(tgbotapi.NewInlineKeyboardRow(
		tgbotapi.NewInlineKeyboardButtonData("✅ Approve", telegram.ButtonData(buttonKey, true, p.ID)),
		tgbotapi.NewInlineKeyboardButtonData("❌ Deny", telegram.ButtonData(buttonKey, false, p.ID)),
	))
	sent, err := bot.Send(cfg)
	require.NoError(t, err)
	old, ok := e.tg.Message(chat, sent.MessageID)
	require.True(t, ok)

	a := e.press(ann, old, true)
	require.True(t, a.ShowAlert)
	require.Contains(t, a.Text, "cannot be approved here")
	require.Equal(t, agentotp.StatusPending, e.status(p.ID).Status)
	require.Empty(t, e.events(p.ID, agentotp.EventApprove))
	require.Eventually(t, func() bool {
		m, _ := e.tg.Message(chat, old.ID)
		return len(m.Buttons()) == 1 && strings.Contains(m.Text, tooLong)
	}, 5*time.Second, 5*time.Millisecond, "the old message kept its Approve button")

	u := e.tg.Say(ann, ann.ID, "/pending")
	e.replyTo(ann.ID, u.MessageID)
	require.Len(t, e.message(ann.ID, p.ID).Buttons(), 1)
}
