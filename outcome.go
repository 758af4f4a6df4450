package agentotp

import (
	"context"
	"errors"
	"time"
)

// Outcome is what happened when a spent permission's action ran: the
// gateway records it after calling the downstream tool. Only its shape is
// kept, never the content.
type Outcome struct {
	// Success is false when the action failed (the tool answered an
	// error, or could not be reached).
	Success bool
	// Duration is how long the action took.
	Duration time.Duration
	// ResultBytes is the size of the result.
	ResultBytes int
	// Error is a short, safe description of a failure (at most 200 bytes).
	Error string
}

// maxOutcomeError bounds Outcome.Error as recorded.
const maxOutcomeError = 200

// RecordOutcome appends a tool_result event for a permission whose use the
// owning agent spent, so the audit shows not only that the action was
// allowed but whether it ran. It changes no state; a permission with no
// spent use is a CONFLICT (nothing ran under it).
func (s *Service) RecordOutcome(ctx context.Context, p Principal, id PermissionID, o Outcome) error {
	if !p.IsAgent() {
		return errAgentOnly
	}
	if o.Duration < 0 || o.ResultBytes < 0 {
		return ValidationError("outcome", "duration and result size cannot be negative")
	}
	if len(o.Error) > maxOutcomeError || !validText(o.Error) {
		return ValidationError("error", "must be printable text of at most 200 bytes")
	}
	if !id.Valid() {
		return errNotFoundPermission
	}
	d := map[string]any{"success": o.Success, "durationMs": o.Duration.Milliseconds(), "resultBytes": o.ResultBytes}
	if o.Error != "" {
		d["error"] = o.Error
	}
	now := s.clock()
	// Nobody acts on an outcome record: let it share the next commit. The
	// permission is read inside the write, where the writer has it at hand,
	// rather than on a separate read before it.
	ctx = WithCommitDelay(ctx, outcomeCommitDelay)
	return s.store.Update(ctx, func(tx Tx) error {
		perm, err := tx.Permission(ctx, id)
		if errors.Is(err, ErrNotFound) || err == nil && perm.AgentID != p.Agent.ID {
			return errNotFoundPermission
		}
		if err != nil {
			return err
		}
		if spent := perm.Status == StatusUsed || perm.UsesRemaining < perm.Uses; perm.TokenHash == "" || !spent {
			return Errorf(CodeConflict, "no use of this permission was spent")
		}
		return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventToolResult, now, d), perm))
	})
}
