package agentotp

import (
	"context"
	"sync"
)

// maxWatched bounds the pending requests a service follows for decisions
// made by other processes.
const maxWatched = 10_000

// watchlist is the set of pending requests this process announced to its
// notifier. Another process on the same store (the CLI on the data
// directory, a second server) can decide them; the sweeper re-reads them
// so that notifiers still hear of every outcome — the Telegram message is
// edited, the callback sent — whoever decided.
type watchlist struct {
	mu  sync.Mutex
	ids map[PermissionID]struct{}
}

func (w *watchlist) add(id PermissionID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ids == nil {
		w.ids = map[PermissionID]struct{}{}
	}
	if len(w.ids) < maxWatched {
		w.ids[id] = struct{}{}
	}
}

// remove reports whether id was watched.
func (w *watchlist) remove(id PermissionID) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.ids[id]
	delete(w.ids, id)
	return ok
}

func (w *watchlist) list() []PermissionID {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]PermissionID, 0, len(w.ids))
	for id := range w.ids {
		out = append(out, id)
	}
	return out
}

// reconcile notifies the outcome of watched requests that left pending
// without this process noticing. Expiry is left to the sweep itself.
func (s *Service) reconcile(ctx context.Context) {
	for _, id := range s.watched.list() {
		perm, err := s.store.Permission(ctx, id)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			s.watched.remove(id) // deleted (pruned): nothing left to tell
		case perm.Status != StatusPending && s.watched.remove(id):
			// remove gates it: a decision this process also saw is told once.
			s.notifyResolved(perm)
		}
	}
}
