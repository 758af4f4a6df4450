package agentotp

import (
	"context"
	"time"
)

// AgentSession is the Service as one agent sees it: the small surface that
// tool guards (tools, mcpserver) need. *otpclient.Client offers the same two
// methods over HTTP, so a guard works in process and remotely alike.
type AgentSession struct {
	svc *Service
	p   Principal
	key Secret // when set, every call authenticates it again (who)
}

// AgentSession binds the service to an authenticated agent, as it is now:
// for the length of one request.
func (s *Service) AgentSession(p Principal) *AgentSession { return &AgentSession{svc: s, p: p} }

// AgentSessionForKey authenticates key as an agent and binds the service
// to it for as long as the key stays good: every call authenticates the
// key again (through the key cache, so at most a second late), and a
// session a process holds for its whole life stops working once its agent
// is disabled, deleted or given a new key.
func (s *Service) AgentSessionForKey(ctx context.Context, key Secret) (*AgentSession, error) {
	p, err := s.Authenticate(ctx, key.Reveal())
	if err != nil {
		return nil, err
	}
	if !p.IsAgent() {
		return nil, errAgentOnly
	}
	return &AgentSession{svc: s, p: p, key: key}, nil
}

// who is the agent the session acts as for one call.
func (a *AgentSession) who(ctx context.Context) (Principal, error) {
	if a.key == "" {
		return a.p, nil
	}
	p, err := a.svc.Authenticate(ctx, a.key.Reveal())
	if err != nil {
		return Principal{}, err
	}
	if !p.IsAgent() || p.Agent.ID != a.p.Agent.ID {
		return Principal{}, Errorf(CodeUnauthorized, "the agent key no longer names this session's agent")
	}
	return p, nil
}

// Authorize asks for a permission and waits up to wait for a human while it
// is pending. It returns the permission in its current state — approved
// (with the token, delivered once), denied, expired or still pending — and
// an error only when asking itself failed.
func (a *AgentSession) Authorize(ctx context.Context, req PermissionRequest, wait time.Duration) (*Permission, Secret, error) {
	p, err := a.who(ctx)
	if err != nil {
		return nil, "", err
	}
	perm, tok, err := a.svc.RequestPermission(ctx, p, req)
	switch {
	case err != nil:
		return nil, "", err
	case perm.TokenPending():
		// A retry found a human approval whose token was never collected:
		// collect it now.
		return a.svc.GetPermission(ctx, p, perm.ID, 0)
	case perm.Status != StatusPending || wait <= 0:
		return perm, tok, nil
	}
	return a.svc.GetPermission(ctx, p, perm.ID, wait)
}

// Spend uses the token once. A refused use is a CONFLICT error carrying the
// reason; nothing was spent.
func (a *AgentSession) Spend(ctx context.Context, id PermissionID, token Secret, details map[string]any) error {
	p, err := a.who(ctx)
	if err != nil {
		return err
	}
	res, err := a.svc.Use(ctx, p, id, token.Reveal(), details)
	if err != nil {
		return err
	}
	if !res.Success {
		return Errorf(CodeConflict, "use refused: %s", res.Reason)
	}
	return nil
}

// Agent returns the agent this session acts as.
func (a *AgentSession) Agent() *Agent { return a.p.Agent }

// Await returns the permission, waiting up to wait while it is pending.
// After a human approval its first read carries the token, once.
func (a *AgentSession) Await(ctx context.Context, id PermissionID, wait time.Duration) (*Permission, Secret, error) {
	p, err := a.who(ctx)
	if err != nil {
		return nil, "", err
	}
	return a.svc.GetPermission(ctx, p, id, wait)
}

// VerifyToken reports whether token is good for the permission, without
// spending it.
func (a *AgentSession) VerifyToken(ctx context.Context, id PermissionID, token Secret) (VerifyResult, error) {
	p, err := a.who(ctx)
	if err != nil {
		return VerifyResult{}, err
	}
	return a.svc.Verify(ctx, p, id, token.Reveal())
}

// UseToken spends one use of token. A refusal is a result with Reason set,
// not an error; nothing was spent.
func (a *AgentSession) UseToken(ctx context.Context, id PermissionID, token Secret, details map[string]any) (UseResult, error) {
	p, err := a.who(ctx)
	if err != nil {
		return UseResult{}, err
	}
	return a.svc.Use(ctx, p, id, token.Reveal(), details)
}

// RevokePermission withdraws a pending request or ends a live token.
func (a *AgentSession) RevokePermission(ctx context.Context, id PermissionID, reason string) (*Permission, error) {
	p, err := a.who(ctx)
	if err != nil {
		return nil, err
	}
	return a.svc.Revoke(ctx, p, id, reason)
}

// ApprovalURL is the console page where a human decides the permission.
func (a *AgentSession) ApprovalURL(id PermissionID) string { return a.svc.ApprovalURL(id) }

// RecordOutcome audits how the action under a spent permission went.
func (a *AgentSession) RecordOutcome(ctx context.Context, id PermissionID, o Outcome) error {
	p, err := a.who(ctx)
	if err != nil {
		return err
	}
	return a.svc.RecordOutcome(ctx, p, id, o)
}

// AuthorizeAndSpend is Authorize followed by Spend with details, in one
// transaction when the policy approves at once (see RequestAndUse). used
// is nil when no use was attempted: the permission is pending, denied, a
// human approved it during the wait, or the request was a retry; then
// Spend as usual if it is approved.
func (a *AgentSession) AuthorizeAndSpend(ctx context.Context, req PermissionRequest, wait time.Duration, details map[string]any) (*Permission, Secret, *UseResult, error) {
	p, err := a.who(ctx)
	if err != nil {
		return nil, "", nil, err
	}
	perm, tok, used, err := a.svc.RequestAndUse(ctx, p, req, details)
	switch {
	case err != nil:
		return nil, "", nil, err
	case used != nil:
		return perm, tok, used, nil
	case perm.TokenPending():
		perm, tok, err = a.svc.GetPermission(ctx, p, perm.ID, 0)
	case perm.Status == StatusPending && wait > 0:
		perm, tok, err = a.svc.GetPermission(ctx, p, perm.ID, wait)
	}
	return perm, tok, nil, err
}
