package agentotp

import (
	"context"
	"sync/atomic"
	"time"
)

// PermissionCounter counts an agent's permissions for policy budgets. The
// Store counts what is committed; a Tx counts inside the writer, seeing
// the writes ordered before it.
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
