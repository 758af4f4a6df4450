package telegram

import (
	"fmt"
	"html"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/agentotp/agentotp"
)

// The message is rendered by the server from the request's structured
// fields, never from text the agent formatted, so an agent's reason cannot
// pass for what the request does. Every field is stripped of invisible
// characters, escaped for Telegram's HTML and capped. Untrusted text sits
// inside <code> or <pre>, where Telegram makes no links, mentions or
// commands of it.
//
// Caps count UTF-16 code units of the escaped HTML, the unit Telegram
// counts; with the template they keep a message under its 4,096 limit.
const (
	capAgent    = 100
	capAction   = 200
	capResource = 300
	capWarning  = 150
	capScope    = 1100
	capReason   = 350
	capRule     = 100
	capNames    = 150
	capLink     = 200
	capDecider  = 80
	capOutcome  = 250
	maxMessage  = 4096
)

// clean removes hidden characters and invalid UTF-8. Line breaks and tabs
// become spaces, unless keepNewlines keeps '\n'.
func clean(s string, keepNewlines bool) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' && keepNewlines:
			return r
		case r == '\n', r == '\t', r == '\r', r == 0x2028, r == 0x2029:
			return ' '
		case agentotp.HiddenRune(r):
			return -1
		}
		return r
	}, s)
}

// units counts UTF-16 code units.
func units(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

// escapedUnits is how many UTF-16 units r takes once escaped.
func escapedUnits(r rune) int {
	switch r {
	case '<', '>':
		return 4
	case '&', '"', '\'':
		return 5
	}
	return utf16.RuneLen(r)
}

// cut escapes s for Telegram's HTML in at most limit UTF-16 units; a cut
// is marked with "…" and never splits a character or an entity.
func cut(s string, limit int) string {
	out, _ := clip(s, limit)
	return out
}

// clip is cut, and reports whether s fitted whole.
func clip(s string, limit int) (string, bool) {
	total := 0
	for _, r := range s {
		total += escapedUnits(r)
	}
	if total <= limit {
		return html.EscapeString(s), true
	}
	used, end := 0, 0
	for i, r := range s {
		w := escapedUnits(r)
		if used+w > limit-1 {
			break
		}
		used += w
		end = i + utf8.RuneLen(r)
	}
	return html.EscapeString(s[:end]) + "…", false
}

// field cleans then cuts one line of untrusted text.
func field(s string, limit int) string { return cut(clean(s, false), limit) }

// scopeJSON pretty-prints a scope, and reports whether it could. Hidden
// characters inside strings are shown as \u escapes rather than dropped
// (agentotp.DisplayJSON): a hidden override in a recipient is worth seeing.
func scopeJSON(m map[string]any) (string, bool) {
	out, err := agentotp.DisplayJSON(m)
	if err != nil {
		return "(the scope cannot be shown; open the console)", false
	}
	return out, true
}

// suspicious reports text an approver could misread: anything outside
// printable ASCII, where homoglyphs and invisible characters live.
func suspicious(s string) bool {
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return true
		}
	}
	return false
}

// view is everything a message shows.
type view struct {
	perm    *agentotp.Permission
	agent   string   // the agent's name, or its id when unknown
	votes   []string // names of the approvers so far (quorum)
	decider string   // who ended the request, for the outcome
	link    string   // console link
	now     time.Time
}

// render writes the message for v, pending or ended. full is false when
// the agent, action, resource or scope had to be cut or left out: a person
// would approve more than the message shows, so a pending one says so and
// gets no Approve button (see keyboard), and a press of an older one is
// refused (see press).
func render(v view) (text string, full bool) {
	scope, ok := scopeJSON(v.perm.Scope)
	text, full = renderWith(v, scope, ok)
	if units(text) > maxMessage {
		// Not reached with the caps above; a last guard all the same.
		text, full = renderWith(v, "(too large to show here; open the console)", false)
	}
	return text, full
}

func renderWith(v view, scope string, full bool) (string, bool) {
	p := v.perm
	var b strings.Builder
	line := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	// shown cuts what would be approved, noting whether it had to.
	shown := func(s string, limit int) string {
		out, whole := clip(s, limit)
		full = full && whole
		return out
	}
	if p.Status == agentotp.StatusPending {
		line("🔐 <b>Approval needed</b>")
	} else {
		line("🔐 <b>Approval request</b>")
	}
	line("Agent: <code>%s</code>", shown(clean(v.agent, false), capAgent))
	line("Action: <code>%s</code>", shown(clean(p.Action, false), capAction))
	if p.Resource == "" {
		line("Resource: <i>none</i>")
	} else {
		line("Resource: <code>%s</code>", shown(clean(p.Resource, false), capResource))
	}
	for _, f := range []struct{ name, value string }{{"action", p.Action}, {"resource", p.Resource}} {
		if suspicious(f.value) {
			// Only this line shows the characters clean removed above.
			line("⚠️ The %s has non-ASCII or invisible characters: <code>%s</code>", f.name, shown(strconv.QuoteToASCII(f.value), capWarning))
		}
	}
	line("Scope:")
	line("<pre>%s</pre>", shown(scope, capScope))
	if reason, ok := p.Context["reason"].(string); ok && strings.TrimSpace(clean(reason, false)) != "" {
		line("Reason given by the agent (its own words, not verified):")
		line("<code>%s</code>", field(reason, capReason))
	} else {
		line("Reason given by the agent: <i>none</i>")
	}
	rule := p.Decision.Rule
	if rule == "" {
		rule = "(default)"
	}
	line("Policy rule: <code>%s</code>", field(rule, capRule))
	if len(p.Decision.Approvers) > 0 {
		line("May approve: %s", field(strings.Join(p.Decision.Approvers, ", "), capNames))
	}
	if p.Status == agentotp.StatusPending {
		exp := p.ApprovalExpiresAt
		line("Expires: %s (%s)", relative(exp.Sub(v.now)), exp.UTC().Format("2006-01-02 15:04:05 UTC"))
		quorum := max(1, p.Decision.Quorum)
		if len(v.votes) > 0 {
			line("⏳ %d of %d approvals (by %s); %d more needed.", len(v.votes), quorum,
				field(strings.Join(v.votes, ", "), capNames), max(0, quorum-len(v.votes)))
		} else {
			line("Approvals needed: %d", quorum)
		}
	}
	line("Request: <code>%s</code>", html.EscapeString(string(p.ID)))
	href := consoleHref(v.link)
	if href != "" {
		line(`Console: <a href="%s">open the request</a>`, href)
	}
	if p.Status == agentotp.StatusPending && !full {
		console := "the console"
		if href != "" {
			console = fmt.Sprintf(`the <a href="%s">console</a>`, href)
		}
		line("⚠️ <b>This request is too long to show in full here</b>, so it cannot be approved in Telegram. Read all of it and decide in %s, or deny it here.", console)
	}
	if p.Status != agentotp.StatusPending {
		b.WriteByte('\n')
		b.WriteString(outcome(v))
	}
	return strings.TrimRight(b.String(), "\n"), full
}

// consoleHref returns link escaped for an href, or "" unless it is a short
// http(s) URL.
func consoleHref(link string) string {
	if link == "" || units(link) > capLink || !strings.HasPrefix(link, "https://") && !strings.HasPrefix(link, "http://") {
		return ""
	}
	return html.EscapeString(clean(link, false))
}

// outcome is the last line of an ended request.
func outcome(v view) string {
	p := v.perm
	by := field(v.decider, capDecider)
	if by == "" {
		by = "unknown"
	}
	approved := "✅ <b>Approved</b> by " + by
	humanEnded := p.DecidedBy == "" || p.DecidedBy == "timeout" || p.DecidedBy == "revoked"
	switch p.Status {
	case agentotp.StatusApproved:
		return approved + "."
	case agentotp.StatusDenied:
		s := "❌ <b>Denied</b> by " + by
		if why := field(p.DecisionReason, capOutcome); why != "" {
			s += ": " + why
		}
		return s
	case agentotp.StatusExpired:
		if humanEnded {
			return "⌛ <b>Expired</b>: nobody decided in time."
		}
		return approved + ". ⌛ The permission has expired."
	case agentotp.StatusRevoked:
		if humanEnded {
			return "🚫 <b>Revoked</b> before a decision."
		}
		return approved + ". 🚫 The permission was <b>revoked</b>."
	case agentotp.StatusUsed:
		return approved + ". The permission has been used."
	}
	return "Status: " + field(string(p.Status), capDecider)
}

// relative renders how long until a deadline: "in 4m59s".
func relative(d time.Duration) string {
	if d <= 0 {
		return "now (past due)"
	}
	d = d.Round(time.Second)
	h, m, s := int(d/time.Hour), int(d%time.Hour/time.Minute), int(d%time.Minute/time.Second)
	switch {
	case h > 0:
		return fmt.Sprintf("in %dh%02dm", h, m)
	case m > 0:
		return fmt.Sprintf("in %dm%02ds", m, s)
	}
	return fmt.Sprintf("in %ds", s)
}
