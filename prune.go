package agentotp

import (
	"context"
	"errors"
	"time"
)

// pruneBatch is how many permissions one prune transaction deletes, so
// that pruning a large backlog never holds the single writer for long.
const pruneBatch = 500

// Prune deletes the permissions that reached a final state (denied,
// expired, used, revoked) and have not changed for olderThan, with their
// approvals, and returns how many it deleted. Their audit events stay, so
// the trail still tells each permission's whole story and still verifies.
// Every batch commits with one prune event recording the count and the
// cutoff. Pending and approved permissions are never pruned. Admins and
// the system only.
func (s *Service) Prune(ctx context.Context, p Principal, olderThan time.Duration) (int, error) {
	if err := requireAdmin(p); err != nil {
		return 0, err
	}
	if olderThan < 0 {
		return 0, ValidationError("olderThan", "must not be negative")
	}
	now := s.clock()
	cutoff := now.Add(-olderThan)
	total := 0
	for {
		var n int
		err := s.store.Update(ctx, func(tx Tx) error {
			var err error
			if n, err = tx.PrunePermissions(ctx, cutoff, pruneBatch); err != nil || n == 0 {
				return err
			}
			return tx.AppendAudit(ctx, s.event(ctx, p, EventPrune, now, map[string]any{
				"count": n, "before": cutoff.UTC().Format(time.RFC3339Nano), "olderThan": olderThan.String(),
			}))
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < pruneBatch {
			return total, nil
		}
	}
}

// RunPruner prunes permissions older than retention at once and then every
// interval until ctx ends (see Prune), as the system.
func (s *Service) RunPruner(ctx context.Context, retention, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := s.Prune(ctx, SystemPrincipal, retention)
		switch {
		case err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled):
			s.log.Error("retention prune failed", "pruned", n, "err", err)
		case n > 0:
			s.log.Info("retention prune", "pruned", n, "retention", retention.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
