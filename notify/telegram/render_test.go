package telegram_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
)

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
	require.NotContains(t, m.Text, "\ufffd", "a cut split a character")
	e.press(ann, m, true)
	require.Eventually(t, func() bool {
		mid, _ := e.tg.Message(chat, m.ID)
		return strings.Contains(mid.Text, "1 of 2 approvals")
	}, 5e9, 5e6)

	e.tg.Reply(bob, chat, m.ID, strings.Repeat("&<", 2000))
	done := e.settled(chat, m.ID, "Denied")
	require.LessOrEqual(t, telegramtest.Units(done.Text), 4096)
	require.Len(t, e.status(p.ID).DecisionReason, agentotp.MaxReasonLen)
}
