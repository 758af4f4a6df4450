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
// directory, a second server) can decide them; the sweeper follows the
// audit trail for them so that notifiers still hear of every outcome — the
// Telegram message edited, the callback sent — whoever decided.
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

// empty reports whether nothing is watched.
func (w *watchlist) empty() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ids) == 0
}

func (w *watchlist) has(id PermissionID) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.ids[id]
	return ok
}

// reconcileBatch bounds the audit events one read of reconcile takes.
const reconcileBatch = 1000

// reconcile notifies the outcome of watched requests that left pending
// without this process noticing. It follows the audit trail from where it
// last stopped — one read per sweep, however many requests are watched —
// and reads a permission only when an event names a watched one.
func (s *Service) reconcile(ctx context.Context) {
	if s.watched.empty() {
		// Nothing to follow: start from the head when something is.
		if seq, _, err := s.store.AuditHead(ctx); err == nil {
			s.auditCursor.Store(seq)
		}
		return
	}
	for {
		events, err := s.store.AuditEvents(ctx, AuditFilter{AfterSeq: s.auditCursor.Load(), Ascending: true, Limit: reconcileBatch})
		if err != nil {
			return
		}
		for _, e := range events {
			s.auditCursor.Store(e.Seq)
			if e.PermissionID == "" || !s.watched.has(e.PermissionID) {
				continue
			}
			perm, err := s.store.Permission(ctx, e.PermissionID)
			switch {
			case err != nil:
				if ctx.Err() != nil {
					return
				}
				s.watched.remove(e.PermissionID) // deleted (pruned): nothing left to tell
			case perm.Status != StatusPending && s.watched.remove(perm.ID):
				// remove gates it: a decision this process also saw is told once.
				s.notifyResolved(perm)
			}
		}
		if len(events) < reconcileBatch {
			return
		}
	}
}

// followPolicies reloads the API-managed rules when another process
// sharing the store (a second instance, the CLI) changed them: it looks
// for policy_create, policy_update and policy_delete events after the last
// one it saw. A change made here was reloaded already; doing it again is
// harmless.
func (s *Service) followPolicies(ctx context.Context) {
	if _, ok := s.eval.(PolicyReloader); !ok {
		return
	}
	if at := s.policyRetryAt.Load(); at != 0 && s.clock().UnixNano() < at {
		return // a reload failed: wait before trying again, from the same place
	}
	from := s.policyCursor.Load()
	head, _, err := s.store.AuditHead(ctx)
	if err != nil {
		return // try again next sweep, from the same place
	}
	// The first look reloads once: a change made after the rules were
	// loaded but before it would otherwise be passed over.
	changed := from < 0
	if from >= 0 && head > from {
		for _, t := range []EventType{EventPolicyCreate, EventPolicyUpdate, EventPolicyDelete} {
			// Only the events since the last sweep: the cursor moves to the
			// head every time, so each sweep reads what is new, once.
			events, err := s.store.AuditEvents(ctx, AuditFilter{Type: t, AfterSeq: from, BeforeSeq: head + 1, Ascending: true, Limit: 1})
			if err != nil {
				return
			}
			changed = changed || len(events) > 0
		}
	}
	if changed && s.reloadPolicies(ctx) != nil {
		return // the cursor stays: the next sweep tries again
	}
	s.policyCursor.Store(max(head, from))
}
