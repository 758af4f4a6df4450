package agentotp

import (
	"context"
	"time"
)

type commitDelayKey struct{}

// WithCommitDelay marks the store updates made under ctx as background
// writes that nobody waits on: a store may hold such an update for up to d
// so that it shares a commit (one fsync) with the next update instead of
// paying for one of its own. The update still returns only once it is
// durable; only its latency grows, and by at most d.
func WithCommitDelay(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, commitDelayKey{}, d)
}

// CommitDelay returns how long a store may hold an update made under ctx
// (see WithCommitDelay); zero for updates someone is waiting on.
func CommitDelay(ctx context.Context) time.Duration {
	d, _ := ctx.Value(commitDelayKey{}).(time.Duration)
	return max(d, 0)
}

// outcomeCommitDelay is how long an outcome record may wait for company:
// it follows the action it describes, and the next permission's commit
// usually comes well within this, so outcomes ride along for free.
const outcomeCommitDelay = 5 * time.Millisecond
