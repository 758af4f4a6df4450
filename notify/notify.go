// Package notify tells people about permission requests. Fanout hands each
// event to several notifiers (the server log, Telegram, decision
// callbacks); Log writes them to the server log with the command that
// decides. Channels with a protocol of their own live in sub-packages.
//
// Notification never decides anything: a notifier that fails leaves the
// request pending, visible through the CLI and the API.
package notify

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/agentotp/agentotp"
)

// Fanout sends every event to each notifier concurrently, so a slow channel
// does not hold up the others, and joins their errors.
type Fanout []agentotp.Notifier

var _ agentotp.Notifier = Fanout(nil)

func (f Fanout) each(fn func(agentotp.Notifier) error) error {
	errs := make([]error, len(f))
	var wg sync.WaitGroup
	for i, n := range f {
		wg.Go(func() { errs[i] = fn(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// NotifyPending tells every notifier about a request waiting for a person.
func (f Fanout) NotifyPending(ctx context.Context, p *agentotp.Permission, a *agentotp.Agent) error {
	return f.each(func(n agentotp.Notifier) error { return n.NotifyPending(ctx, p, a) })
}

// NotifyResolved tells every notifier that a request was decided, expired
// or revoked.
func (f Fanout) NotifyResolved(ctx context.Context, p *agentotp.Permission) error {
	return f.each(func(n agentotp.Notifier) error { return n.NotifyResolved(ctx, p) })
}

// Log announces pending requests in the server log at info level, with the
// command that approves them, so a person watching the terminal can act.
type Log struct {
	Logger *slog.Logger
	// Approve returns the command line that approves id (for example
	// "./bin/agentotp approve perm_… --data ./data").
	Approve func(id agentotp.PermissionID) string
}

var _ agentotp.Notifier = (*Log)(nil)

// maxLogField caps agent-supplied text in the log.
const maxLogField = 200

// NotifyPending logs the request: who asks, for what, in the agent's own
// words (labelled as such; the log handler quotes them), and how to approve.
func (l *Log) NotifyPending(ctx context.Context, p *agentotp.Permission, a *agentotp.Agent) error {
	name := string(p.AgentID)
	if a != nil {
		name = a.Name
	}
	attrs := []any{"id", p.ID, "agent", name, "action", clip(p.Action), "resource", clip(p.Resource),
		"agent_reason", clip(AgentReason(p)), "rule", p.Decision.Rule,
		"expires", p.ApprovalExpiresAt.UTC().Format("2006-01-02T15:04:05Z")}
	if l.Approve != nil {
		attrs = append(attrs, "approve", l.Approve(p.ID))
	}
	l.Logger.InfoContext(ctx, "approval needed", attrs...)
	return nil
}

// NotifyResolved logs the outcome.
func (l *Log) NotifyResolved(ctx context.Context, p *agentotp.Permission) error {
	if p.Decision.Effect != agentotp.EffectRequireApproval {
		// Decided by policy at once: never announced as pending, so
		// there is nothing to close (and one line per call is noise).
		return nil
	}
	l.Logger.InfoContext(ctx, "request resolved", "id", p.ID, "status", p.Status, "decided_by", p.DecidedBy,
		"reason", clip(p.DecisionReason))
	return nil
}

// AgentReason is the reason the agent gave for a request (its context's
// "reason"), or "". It is the agent's claim, never a fact.
func AgentReason(p *agentotp.Permission) string {
	s, _ := p.Context["reason"].(string)
	return s
}

func clip(s string) string {
	if len(s) <= maxLogField {
		return s
	}
	s = s[:maxLogField]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return strings.TrimSpace(s) + "…"
}
