package agentotp

import (
	"context"
	"time"
)

// ChangeFeed is what a store shared by several server instances offers so
// that a change made by one instance wakes the waiters of another at once
// (PostgreSQL: LISTEN/NOTIFY), instead of at their next periodic re-read.
type ChangeFeed interface {
	// WatchPermissions calls fn with the id of each permission whose row
	// changed, by any instance, until ctx ends; fn must not block. When
	// notifications may have been missed (the connection was lost and
	// re-established), it calls fn with "" so the caller re-reads what it
	// waits for. It returns ctx's error, or an error when it cannot watch
	// at all.
	WatchPermissions(ctx context.Context, fn func(PermissionID)) error
}

// Leaser is what a store shared by several server instances offers so that
// exactly one of them runs a singleton job (the expiry sweeper, the
// Telegram long-poller) at a time, handing over when that one dies.
type Leaser interface {
	// Lead blocks until ctx ends. Whenever this process holds the lease
	// named name, it runs fn with a context that is cancelled as soon as
	// the lease may have been lost (before another instance can take it);
	// fn returning early is run again while the lease is still held after
	// retry. Other instances calling Lead with the same name wait.
	Lead(ctx context.Context, name string, retry time.Duration, fn func(ctx context.Context)) error
}

// RunChangeFeed wakes this service's long-polls and event streams, and
// tells its notifiers, when an instance sharing the store changes a
// permission. It returns at once (nil) when the store has no feed; else it
// runs until ctx ends.
func (s *Service) RunChangeFeed(ctx context.Context) error {
	feed, ok := s.store.(ChangeFeed)
	if !ok {
		return nil
	}
	return feed.WatchPermissions(ctx, func(id PermissionID) {
		if id == "" {
			s.broker.publishAll()
			return
		}
		s.broker.publish(id)
		if s.watched.has(id) {
			s.reconcileSoon()
		}
	})
}
