package agentotp

import (
	"context"
	"errors"
	"time"
)

// VerifyResult answers a verify call. It never consumes a use.
type VerifyResult struct {
	Valid         bool
	Scope         map[string]any
	UsesRemaining int
	ExpiresAt     time.Time
	Reason        string
}

// UseResult answers a use call.
type UseResult struct {
	Success       bool
	UsesRemaining int
	Reason        string
}

// Reasons a token is refused; they name the state, never the secret.
const (
	ReasonTokenMismatch = "token does not match this permission"
	ReasonTokenExpired  = "token has expired"
	ReasonTokenUsed     = "token has been used up"
	ReasonRevoked       = "permission was revoked"
	ReasonNotApproved   = "permission is not approved"
	ReasonNotIssued     = "token has not been issued yet"
)

// tokenState explains why token cannot be used for perm at now, or "".
func tokenState(perm *Permission, token string, now time.Time) string {
	if perm.TokenHash == "" {
		if perm.Status == StatusApproved {
			return ReasonNotIssued
		}
		return ReasonNotApproved
	}
	if !ValidTokenFormat(token) || !EqualHash(perm.TokenHash, HashSecret(token)) {
		return ReasonTokenMismatch
	}
	switch perm.Effective(now).Status {
	case StatusApproved:
		return ""
	case StatusUsed:
		return ReasonTokenUsed
	case StatusRevoked:
		return ReasonRevoked
	case StatusExpired:
		return ReasonTokenExpired
	}
	return ReasonNotApproved
}

// Verify reports whether token is currently good for the permission,
// without spending it.
func (s *Service) Verify(ctx context.Context, p Principal, id PermissionID, token string) (VerifyResult, error) {
	if !p.IsAgent() {
		return VerifyResult{}, errAgentOnly
	}
	perm, err := s.load(ctx, p, id)
	if err != nil {
		return VerifyResult{}, err
	}
	if reason := tokenState(perm, token, s.clock()); reason != "" {
		return VerifyResult{Reason: reason}, nil
	}
	return VerifyResult{Valid: true, Scope: perm.GrantedScope, UsesRemaining: perm.UsesRemaining, ExpiresAt: perm.TokenExpiresAt}, nil
}

// Use spends one use of token on permission id, after checking details
// against the granted scope and the policy's useWhen. A refused use spends
// nothing and is audited with its reason.
func (s *Service) Use(ctx context.Context, p Principal, id PermissionID, token string, details map[string]any) (UseResult, error) {
	if !p.IsAgent() {
		return UseResult{}, errAgentOnly
	}
	if details == nil {
		details = map[string]any{}
	}
	if err := ValidateObject("actionDetails", details); err != nil {
		return UseResult{}, err
	}
	perm, err := s.load(ctx, p, id)
	if err != nil {
		return UseResult{}, err
	}
	now := s.clock()
	reason := tokenState(perm, token, now)
	if reason == "" {
		reason = checkUse(perm, details)
	}
	if reason == "" {
		reason = s.recheck(ctx, p, perm, now)
	}
	if reason == "" {
		reason = s.useWhen(ctx, p.Agent, perm, details, now)
	}

	var res UseResult
	err = s.store.Update(ctx, func(tx Tx) error {
		// A refusal still tells the uses left, as long as the grant lives:
		// nothing was spent.
		left := usable(perm, now)
		if reason == "" {
			remaining, err := tx.SpendToken(ctx, id, p.Agent.ID, HashSecret(token), now)
			switch {
			case err == nil:
				res = UseResult{Success: true, UsesRemaining: remaining}
				return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventUse, now, map[string]any{
					"actionDetails": details, "usesRemaining": remaining,
				}), perm))
			case !errors.Is(err, ErrConflict):
				return err
			}
			// Lost a race (another use, a revoke or expiry got in first):
			// explain from the current state.
			cur, err := tx.Permission(ctx, id)
			if err != nil {
				return err
			}
			if reason = tokenState(cur, token, now); reason == "" {
				reason = ReasonTokenUsed
			}
			left = usable(cur, now)
		}
		res = UseResult{Reason: reason, UsesRemaining: left}
		return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventUseRejected, now, rejectedUse(reason, details)), perm))
	})
	if err != nil {
		return UseResult{}, err
	}
	if res.Success && res.UsesRemaining == 0 {
		// The last use ends the permission: waiters wake, and notifiers
		// (the Telegram message, a callback) learn it was used.
		used := *perm
		used.Status, used.UsesRemaining, used.UpdatedAt = StatusUsed, 0, now
		s.notifyResolved(&used)
	}
	return res, nil
}

// usable is how many uses perm has left at now: none unless it is approved
// and unexpired.
func usable(perm *Permission, now time.Time) int {
	if perm.Effective(now).Status != StatusApproved {
		return 0
	}
	return perm.UsesRemaining
}

// checkUse holds one use's details to the grant. A tool call's permission
// approves exact arguments: the details must be those arguments as granted
// (after any narrowing), compared by their canonical hash, since argument
// names such as "max_results" or "file_pattern" are the tool's own, not
// scope rules. Any other permission's details are checked against the
// scope's rules (CheckDetails).
func checkUse(perm *Permission, details map[string]any) string {
	if perm.Tool != nil {
		if ArgsHash(details) != ArgsHash(perm.GrantedScope) {
			return "the arguments are not the ones approved for this tool call"
		}
		return ""
	}
	if err := CheckDetails(perm.GrantedScope, details); err != nil {
		return "outside the granted scope: " + errMessage(err)
	}
	return ""
}

// recheck asks the policy again at use: a rule that now denies the request
// stops tokens issued before it, so an operator's emergency deny
// takes effect at once. Only a deny refuses; an evaluation error refuses too
// (fail closed). The decision's policy version is on the permission. A tool
// call's permission shows the policy the same tool again, with the
// arguments when they are the scope (see useTool).
func (s *Service) recheck(ctx context.Context, p Principal, perm *Permission, now time.Time) string {
	// Budgets count committed permissions, and the one being spent is
	// one of them now: counted, it would hold its own grant against the
	// budget that allowed it.
	ctx = WithCounter(ctx, notCounting{PermissionCounter: s.store, perm: perm})
	d, err := s.eval.Evaluate(ctx, EvalInput{Agent: p.Agent, Action: perm.Action, Resource: perm.Resource,
		Scope: perm.Scope, Context: perm.Context, Now: now, Tool: useTool(perm)})
	switch {
	case err != nil:
		s.log.Error("policy re-check at use failed", "permission", perm.ID, "rule", d.Rule, "err", err)
		return "refused by policy: evaluation failed"
	case d.Effect == EffectDeny:
		if d.Reason != "" {
			return "refused by policy: " + d.Reason
		}
		return "refused by policy: the request is now denied"
	}
	return ""
}

func errMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "check failed"
}

// Revoke ends a permission: an approved grant's token stops working at once,
// a pending request is withdrawn. The owning agent and admins may revoke.
func (s *Service) Revoke(ctx context.Context, p Principal, id PermissionID, reason string) (*Permission, error) {
	if !p.IsAgent() && p.Role() != RoleAdmin {
		return nil, errAdminOnly
	}
	if len(reason) > MaxReasonLen || !validText(reason) {
		return nil, ValidationError("reason", "must be printable text of at most 1000 bytes")
	}
	perm, err := s.load(ctx, p, id)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	var out *Permission
	err = s.store.Update(ctx, func(tx Tx) error {
		cur, err := tx.Permission(ctx, perm.ID)
		if err != nil {
			return err
		}
		if eff := cur.Effective(now).Status; eff != StatusPending && eff != StatusApproved {
			return Errorf(CodeConflict, "permission request already %s", eff)
		}
		from := cur.Status
		cur.Status, cur.RevokedAt, cur.UpdatedAt = StatusRevoked, now, now
		if from == StatusPending {
			cur.DecidedAt = now
			cur.DecidedBy = "revoked"
			cur.DecisionReason = reason
		}
		if err := tx.UpdatePermission(ctx, cur, from); err != nil {
			return err
		}
		out = cur
		return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventRevoke, now, map[string]any{"from": string(from), "reason": reason}), cur))
	})
	if err != nil {
		return nil, err
	}
	s.notifyResolved(out)
	return out, nil
}

// ExpireDue moves due permissions to expired, each in its own transaction
// with an expire event, and returns how many it expired.
func (s *Service) ExpireDue(ctx context.Context) (int, error) {
	n := 0
	for {
		now := s.clock()
		due, err := s.store.DuePermissions(ctx, now, 100)
		if err != nil {
			return n, err
		}
		if len(due) == 0 {
			return n, nil
		}
		progressed := false
		for _, d := range due {
			var expired *Permission
			err := s.store.Update(ctx, func(tx Tx) error {
				cur, err := tx.Permission(ctx, d.ID)
				if err != nil || !cur.Due(now) {
					return err
				}
				from := cur.Status
				cur.Status, cur.UpdatedAt = StatusExpired, now
				if from == StatusPending {
					cur.DecidedBy, cur.DecidedAt, cur.DecisionReason = "timeout", now, "nobody answered in time"
				}
				if err := tx.UpdatePermission(ctx, cur, from); err != nil {
					return err
				}
				expired = cur
				return tx.AppendAudit(ctx, permEvent(s.event(ctx, SystemPrincipal, EventExpire, now, map[string]any{"from": string(from)}), cur))
			})
			if err != nil && !errors.Is(err, ErrConflict) {
				return n, err
			}
			if expired != nil {
				n++
				progressed = true
				s.notifyResolved(expired)
			}
		}
		if !progressed || len(due) < 100 {
			return n, nil
		}
	}
}

// RunSweeper expires due permissions every interval until ctx ends.
//
// On a store shared by several instances (a Leaser), only the instance
// holding the "expiry-sweeper" lease expires; every instance follows the
// trail for the requests it announced.
func (s *Service) RunSweeper(ctx context.Context, interval time.Duration) {
	leaser, shared := s.store.(Leaser)
	if shared {
		go func() {
			err := leaser.Lead(ctx, "expiry-sweeper", interval, func(ctx context.Context) { s.sweep(ctx, interval, true, false) })
			if err != nil && ctx.Err() == nil {
				s.log.Error("expiry sweeper lease failed", "err", err)
			}
		}()
	}
	s.sweep(ctx, interval, !shared, true)
}

// sweep expires due permissions and/or follows the trail every interval,
// and follows it at once when the change feed asks (reconcileSoon).
func (s *Service) sweep(ctx context.Context, interval time.Duration, expire, follow bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if expire {
			if _, err := s.ExpireDue(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("expiry sweep failed", "err", err)
			}
		}
		if follow {
			s.reconcile(ctx)
			s.followPolicies(ctx)
		}
		var kick <-chan struct{}
		if follow {
			kick = s.kick
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
	}
}

// reconcileSoon asks the sweeper to follow the trail now.
func (s *Service) reconcileSoon() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// spendFirst decides the first use of perm, a permission approved by the
// request that creates it (RequestAndUse), with the checks of Use: the
// details against the grant and the policy's useWhen (the policy itself
// was just asked). It returns the row to store for perm, the result and
// its audit event. Spent, the row is a copy of perm as SpendToken would
// leave it (one use fewer, used when none is left); refused, it is perm,
// and nothing is spent. perm itself is left as it was.
func (s *Service) spendFirst(ctx context.Context, p Principal, perm *Permission, details map[string]any, now time.Time) (*Permission, *UseResult, *AuditEvent) {
	left := usable(perm, now)
	reason := checkUse(perm, details)
	if reason == "" {
		reason = s.useWhen(ctx, p.Agent, perm, details, now)
	}
	if reason == "" && left < 1 {
		// Not reached by a validated request (a token lives 30 s or more,
		// with a use or more); should it be, nothing is spent.
		reason = ReasonTokenExpired
	}
	if reason != "" {
		return perm, &UseResult{Reason: reason, UsesRemaining: left}, permEvent(s.event(ctx, p, EventUseRejected, now, rejectedUse(reason, details)), perm)
	}
	spent := *perm
	spent.UsesRemaining, spent.UpdatedAt = left-1, now
	if spent.UsesRemaining == 0 {
		spent.Status = StatusUsed
	}
	return &spent, &UseResult{Success: true, UsesRemaining: spent.UsesRemaining}, permEvent(s.event(ctx, p, EventUse, now, map[string]any{
		"actionDetails": details, "usesRemaining": spent.UsesRemaining,
	}), perm)
}

// maxRejectedDetails bounds the actionDetails a refused use keeps in the
// audit trail as they were sent.
const maxRejectedDetails = 1 << 10

// rejectedUse is the audit record of a refused use: the reason, and the
// details when they are small, or else their SHA-256 and size. A refused
// use needs no grant and spends nothing, so an agent can send one after
// another at its rate limit, each up to 64 KiB; the trail is never pruned
// and no quota counts it, so it must not grow by what the agent chooses to
// send. A use that succeeds keeps its details whole: it is bounded by its
// grant's uses, and what was done must be on record.
func rejectedUse(reason string, details map[string]any) map[string]any {
	d := map[string]any{"reason": reason}
	b, err := canonicalJSON(details)
	if err != nil { // not reached: details were validated as JSON
		return d
	}
	if len(b) <= maxRejectedDetails {
		d["actionDetails"] = details
		return d
	}
	d["actionDetailsSha256"], d["actionDetailsBytes"] = hashHex(b), len(b)
	return d
}

// useWhen applies the policy's use condition, if the decision has one, and
// explains a refusal. A condition nobody here can check is not met.
func (s *Service) useWhen(ctx context.Context, agent *Agent, perm *Permission, details map[string]any, now time.Time) string {
	if perm.Decision.UseWhen == "" {
		return ""
	}
	uc, ok := s.eval.(UseChecker)
	if !ok {
		return "refused: the policy's use condition cannot be checked by this server"
	}
	if err := uc.CheckUse(ctx, agent, perm, details, now); err != nil {
		return "refused by policy: " + errMessage(err)
	}
	return ""
}
