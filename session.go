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
}

// AgentSession binds the service to an authenticated agent.
func (s *Service) AgentSession(p Principal) *AgentSession { return &AgentSession{svc: s, p: p} }

// Authorize asks for a permission and waits up to wait for a human while it
// is pending. It returns the permission in its current state — approved
// (with the token, delivered once), denied, expired or still pending — and
// an error only when asking itself failed.
func (a *AgentSession) Authorize(ctx context.Context, req PermissionRequest, wait time.Duration) (*Permission, Secret, error) {
	perm, tok, err := a.svc.RequestPermission(ctx, a.p, req)
	switch {
	case err != nil:
		return nil, "", err
	case perm.TokenPending():
		// A retry found a human approval whose token was never collected:
		// collect it now.
		return a.svc.GetPermission(ctx, a.p, perm.ID, 0)
	case perm.Status != StatusPending || wait <= 0:
		return perm, tok, nil
	}
	return a.svc.GetPermission(ctx, a.p, perm.ID, wait)
}

// Spend uses the token once. A refused use is a CONFLICT error carrying the
// reason; nothing was spent.
func (a *AgentSession) Spend(ctx context.Context, id PermissionID, token Secret, details map[string]any) error {
	res, err := a.svc.Use(ctx, a.p, id, token.Reveal(), details)
	if err != nil {
		return err
	}
	if !res.Success {
		return Errorf(CodeConflict, "use refused: %s", res.Reason)
	}
	return nil
}
