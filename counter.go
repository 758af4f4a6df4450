package agentotp

import (
	"context"
	"slices"
	"sync/atomic"
	"time"
)

// PermissionCounter counts an agent's permissions for policy budgets. The
// Store counts what is committed; a Tx counts inside the writer, seeing
// the writes ordered before it. A count of StatusUsed includes every grant
// a use was spent from: also one revoked or expired after that use, so
// that ending a grant does not give its uses back to a budget.
type PermissionCounter interface {
	CountPermissions(ctx context.Context, agent AgentID, actionPattern string, since time.Time, statuses []Status) (int, error)
}

type counterKey struct{}

// WithCounter returns ctx carrying the counter that policy budgets must
// use for an evaluation under it, in place of the engine's own.
func WithCounter(ctx context.Context, c PermissionCounter) context.Context {
	return context.WithValue(ctx, counterKey{}, c)
}

// CounterFrom returns the counter carried by ctx.
func CounterFrom(ctx context.Context) (PermissionCounter, bool) {
	c, ok := ctx.Value(counterKey{}).(PermissionCounter)
	return c, ok
}

// budgetProbe counts through its counter and remembers that it was asked,
// so the service knows a decision depended on budgets.
type budgetProbe struct {
	PermissionCounter
	asked atomic.Bool
}

func (b *budgetProbe) CountPermissions(ctx context.Context, agent AgentID, pattern string, since time.Time, statuses []Status) (int, error) {
	b.asked.Store(true)
	return b.PermissionCounter.CountPermissions(ctx, agent, pattern, since, statuses)
}

// notCounting counts as its counter does, less perm wherever the count
// includes it (same agent, action matching, created in the window, status
// counted).
type notCounting struct {
	PermissionCounter
	perm *Permission
}

func (c notCounting) CountPermissions(ctx context.Context, agent AgentID, pattern string, since time.Time, statuses []Status) (int, error) {
	n, err := c.PermissionCounter.CountPermissions(ctx, agent, pattern, since, statuses)
	p := c.perm
	if err == nil && n > 0 && p.AgentID == agent && MatchPattern(pattern, p.Action) &&
		(since.IsZero() || !p.CreatedAt.Before(since)) && (len(statuses) == 0 || slices.Contains(statuses, p.Status)) {
		n--
	}
	return n, err
}

// MatchPattern reports whether s matches pattern, where '*' matches any
// run of characters (including none) and everything else is literal: the
// action patterns of PermissionCounter.CountPermissions and of the policy
// budget functions. Linear-time backtracking.
func MatchPattern(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
