package agentotp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Decide records a human's answer to a pending request. Only approvers and
// admins decide — never an agent, so no agent can approve itself.
// The state change is a compare-and-set: of two deciders at the same
// instant one wins, the other gets CONFLICT, and both attempts are audited.
// The token is not part of the answer: only the requesting agent receives it.
func (s *Service) Decide(ctx context.Context, p Principal, id PermissionID, in DecideInput) (*Permission, error) {
	if p.User != nil && !p.User.Active {
		return nil, Errorf(CodeForbidden, "user is disabled")
	}
	if p.IsAgent() || !p.Role().CanDecide() {
		// An agent trying to decide its own request is the self-approval
		// the v0.1.1 API allowed: refuse it and keep a record.
		if perm, err := s.load(ctx, p, id); err == nil {
			s.recordRefusal(ctx, p, perm, in, "agents cannot decide requests")
		}
		return nil, errDecideForbidden
	}
	if len(in.Reason) > MaxReasonLen || !validText(in.Reason) {
		return nil, ValidationError("reason", "must be printable text of at most 1000 bytes")
	}
	if in.ScopeModifications != nil {
		if !in.Approved {
			return nil, ValidationError("scopeModifications", "only applies to an approval")
		}
		if err := ValidateObject("scopeModifications", in.ScopeModifications); err != nil {
			return nil, err
		}
	}
	perm, err := s.load(ctx, p, id)
	if err != nil {
		return nil, err
	}
	if err := s.mayApprove(p, perm); err != nil {
		s.recordRefusal(ctx, p, perm, in, "not an approver named by the rule")
		return nil, err
	}
	if err := CheckNarrowing("scopeModifications", perm.GrantedScope, in.ScopeModifications); err != nil {
		return nil, err
	}
	now := s.clock()
	var (
		out      *Permission
		conflict error
	)
	err = s.store.Update(ctx, func(tx Tx) error {
		cur, err := tx.Permission(ctx, perm.ID)
		if err != nil {
			return err
		}
		reject := func(why string) error {
			conflict = Errorf(CodeConflict, "%s", why)
			return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventDecideRejected, now, map[string]any{
				"approved": in.Approved, "reason": why,
			}), cur))
		}
		if eff := cur.Effective(now).Status; eff != StatusPending {
			return reject(fmt.Sprintf("permission request already %s", eff))
		}
		if in.Approved && cur.Decision.Quorum > 1 {
			done, err := s.vote(ctx, tx, p, cur, in, now, reject)
			if err != nil || !done {
				out = cur
				return err
			}
		}
		decider := "system"
		if p.User != nil {
			decider = "user:" + string(p.User.ID)
		}
		cur.DecidedBy, cur.DecidedAt, cur.UpdatedAt = decider, now, now
		details := map[string]any{"decidedBy": "user", "reason": in.Reason}
		var typ EventType
		if in.Approved {
			cur.Status = StatusApproved
			cur.DecisionReason = in.Reason
			if cur.DecisionReason == "" {
				cur.DecisionReason = "approved"
			}
			if in.ScopeModifications != nil {
				cur.GrantedScope = NarrowScope(cur.GrantedScope, in.ScopeModifications)
			}
			cur.TokenExpiresAt = now.Add(cur.TokenTTL)
			cur.UsesRemaining = cur.Uses
			details["scope"] = cur.GrantedScope
			typ = EventApprove
		} else {
			cur.Status = StatusDenied
			cur.DecisionReason = in.Reason
			if cur.DecisionReason == "" {
				cur.DecisionReason = "denied by approver"
			}
			typ = EventDeny
		}
		if err := tx.UpdatePermission(ctx, cur, StatusPending); err != nil {
			return err
		}
		out = cur
		return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, typ, now, details), cur))
	})
	if err != nil {
		return nil, err
	}
	if conflict != nil {
		return nil, conflict
	}
	if out.Status != StatusPending {
		s.notifyResolved(out)
	}
	return out, nil
}

// vote records one approval toward a quorum and reports whether the quorum
// is now met. Approvers are counted once each, whatever channel they use;
// a second approval by the same person is refused.
func (s *Service) vote(ctx context.Context, tx Tx, p Principal, cur *Permission, in DecideInput, now time.Time, reject func(string) error) (bool, error) {
	if p.User == nil {
		return true, nil
	}
	err := tx.AddApproval(ctx, Approval{PermissionID: cur.ID, UserID: p.User.ID, Approved: true, Reason: in.Reason, CreatedAt: now})
	if errors.Is(err, ErrConflict) {
		return false, reject("you have already approved this request")
	}
	if err != nil {
		return false, err
	}
	votes, err := tx.Approvals(ctx, cur.ID)
	if err != nil {
		return false, err
	}
	n := 0
	for _, v := range votes {
		if !v.Approved {
			continue
		}
		// Rights count at decision time: the vote of someone disabled,
		// deleted or no longer an approver the rule names since they
		// voted does not make up the quorum.
		if v.UserID != p.User.ID {
			u, err := tx.User(ctx, v.UserID)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return false, err
			}
			if !u.Active || !u.Role.CanDecide() || s.mayApprove(Principal{User: u}, cur) != nil {
				continue
			}
		}
		n++
	}
	if n >= cur.Decision.Quorum {
		return true, nil
	}
	if in.ScopeModifications != nil {
		// Every approver's narrowing counts, not only the last one's.
		cur.GrantedScope = NarrowScope(cur.GrantedScope, in.ScopeModifications)
		cur.UpdatedAt = now
		if err := tx.UpdatePermission(ctx, cur, StatusPending); err != nil {
			return false, err
		}
	}
	return false, tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventVote, now, map[string]any{
		"approvals": n, "quorum": cur.Decision.Quorum, "reason": in.Reason,
	}), cur))
}

// recordRefusal audits a decision attempt by someone not allowed to make it.
// Failing to record it is logged, not returned: the
// caller is refused either way.
func (s *Service) recordRefusal(ctx context.Context, p Principal, perm *Permission, in DecideInput, why string) {
	now := s.clock()
	err := s.store.Update(ctx, func(tx Tx) error {
		return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventDecideRejected, now, map[string]any{
			"approved": in.Approved, "reason": why,
		}), perm))
	})
	if err != nil {
		s.log.Error("audit refused decision", "permission", perm.ID, "err", err)
	}
}

// mayApprove applies a rule's approver list: user names or roles.
func (s *Service) mayApprove(p Principal, perm *Permission) error {
	list := perm.Decision.Approvers
	if len(list) == 0 || p.System {
		return nil
	}
	if slices.Contains(list, p.User.Name) || slices.Contains(list, string(p.User.Role)) || slices.Contains(list, string(p.User.ID)) {
		return nil
	}
	return Errorf(CodeForbidden, "you are not an approver for this request")
}

// RecordUnknownDecider audits a decision attempt by someone who is not a
// user at all — a Telegram account linked to nobody — and changes nothing.
// actorType names the channel ("telegram"), actorID the
// account there.
func (s *Service) RecordUnknownDecider(ctx context.Context, actorType, actorID string, id PermissionID, approved bool, why string) error {
	perm, err := s.store.Permission(ctx, id)
	if err != nil {
		return err
	}
	now := s.clock()
	e := permEvent(s.event(ctx, SystemPrincipal, EventDecideRejected, now, map[string]any{"approved": approved, "reason": why}), perm)
	e.ActorType, e.ActorID = actorType, actorID
	return s.store.Update(ctx, func(tx Tx) error { return tx.AppendAudit(ctx, e) })
}
