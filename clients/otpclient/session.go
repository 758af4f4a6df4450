package otpclient

import (
	"context"
	"time"

	"github.com/agentotp/agentotp"
)

// Authorize asks for a permission and waits up to wait for a human while it
// is pending, exactly like agentotp.AgentSession.Authorize: it returns the
// permission in its current state — approved (with the token), denied,
// expired or still pending — and an error only when asking itself failed.
// Tool guards (package tools, mcpserver) take either.
//
// req.Tool is not sent: gateway tool metadata exists only in process.
func (c *Client) Authorize(ctx context.Context, req agentotp.PermissionRequest, wait time.Duration) (*agentotp.Permission, agentotp.Secret, error) {
	var opts []RequestOption
	if wait > 0 {
		opts = append(opts, Wait(wait))
	}
	p, err := c.RequestPermission(ctx, Request{
		Action: req.Action, Resource: req.Resource, Scope: req.Scope, Context: req.Context,
		TTL: req.TTL, ApprovalTTL: req.ApprovalTTL, Uses: req.Uses, IdempotencyKey: req.IdempotencyKey,
	}, opts...)
	if err != nil && !(p != nil && IsDecision(err)) {
		return nil, "", err
	}
	return p.Domain(), p.Token, nil
}

// Spend uses the token once, like agentotp.AgentSession.Spend. A refused use
// is an error matching both ErrUseRefused and agentotp.ErrConflict; nothing
// was spent.
func (c *Client) Spend(ctx context.Context, id agentotp.PermissionID, token agentotp.Secret, details map[string]any) error {
	_, err := c.Use(ctx, string(id), token, details)
	return err
}

// Domain converts the wire view to the root package's Permission (without
// the token, which the domain type never holds).
func (p *Permission) Domain() *agentotp.Permission {
	d := &agentotp.Permission{
		ID: agentotp.PermissionID(p.ID), AgentID: agentotp.AgentID(p.AgentID), Action: p.Action, Resource: p.Resource,
		Scope: p.RequestedScope, Context: p.Context, Status: p.Status, CreatedAt: p.CreatedAt,
		DecisionEventID: agentotp.EventID(p.DecisionID), DecidedBy: p.DecidedBy, DecidedAt: p.DecidedAt,
		DecisionReason: p.Reason, GrantedScope: p.Scope, Uses: p.Uses, UsesRemaining: p.UsesRemaining,
	}
	if d.Scope == nil {
		d.Scope = p.Scope
	}
	switch p.Status {
	case agentotp.StatusApproved, agentotp.StatusUsed:
		d.TokenExpiresAt = p.ExpiresAt
	default:
		d.ApprovalExpiresAt = p.ExpiresAt
	}
	return d
}
