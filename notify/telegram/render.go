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
	total := 0
	for _, r := range s {
		total += escapedUnits(r)
	}
	if total <= limit {
		return html.EscapeString(s)
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
	return html.EscapeString(s[:end]) + "…"
}

// field cleans then cuts one line of untrusted text.
func field(s string, limit int) string { return cut(clean(s, false), limit) }

// scopeJSON pretty-prints a scope. Hidden characters inside strings are
// shown as \u escapes rather than dropped (agentotp.DisplayJSON): a hidden
// override in a recipient is worth seeing.
func scopeJSON(m map[string]any) string {
	out, err := agentotp.DisplayJSON(m)
	if err != nil {
		return "(the scope cannot be shown; open the console)"
	}
	return out
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

// render writes the message for v, pending or ended.
func render(v view) string {
	out := renderWith(v, scopeJSON(v.perm.Scope))
	if units(out) > maxMessage {
		// Not reached with the caps above; a last guard all the same.
		out = renderWith(v, "(too large to show here; open the console)")
	}
	return out
}

func renderWith(v view, scope string) string {
	p := v.perm
	var b strings.Builder
	line := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	if p.Status == agentotp.StatusPending {
		line("🔐 <b>Approval needed</b>")
	} else {
		line("🔐 <b>Approval request</b>")
	}
	line("Agent: <code>%s</code>", field(v.agent, capAgent))
	line("Action: <code>%s</code>", field(p.Action, capAction))
	if p.Resource == "" {
		line("Resource: <i>none</i>")
	} else {
		line("Resource: <code>%s</code>", field(p.Resource, capResource))
	}
	for _, f := range []struct{ name, value string }{{"action", p.Action}, {"resource", p.Resource}} {
		if suspicious(f.value) {
			line("⚠️ The %s has non-ASCII or invisible characters: <code>%s</code>", f.name, cut(strconv.QuoteToASCII(f.value), capWarning))
		}
	}
	line("Scope:")
	line("<pre>%s</pre>", cut(scope, capScope))
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
	if v.link != "" && units(v.link) <= capLink && (strings.HasPrefix(v.link, "https://") || strings.HasPrefix(v.link, "http://")) {
		line(`Console: <a href="%s">open the request</a>`, html.EscapeString(clean(v.link, false)))
	}
	if p.Status != agentotp.StatusPending {
		b.WriteByte('\n')
		b.WriteString(outcome(v))
	}
	return strings.TrimRight(b.String(), "\n")
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
