package otpclient

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/agentotp/agentotp"
)

// Authorize asks for a permission and waits up to wait for a human while it
// is pending, exactly like agentotp.AgentSession.Authorize: it returns the
// permission in its current state — approved (with the token), denied,
// expired or still pending — and an error only when asking itself failed.
// Tool guards (package tools, mcpserver) take either. req.Tool is sent
// (without ArgsHash, which the server computes).
func (c *Client) Authorize(ctx context.Context, req agentotp.PermissionRequest, wait time.Duration) (*agentotp.Permission, agentotp.Secret, error) {
	p, err := c.authorize(ctx, req, wait, nil)
	if err != nil {
		return nil, "", err
	}
	return p.Domain(), p.Token, nil
}

// AuthorizeAndSpend is Authorize followed by Spend with details, like
// agentotp.AgentSession.AuthorizeAndSpend: when the policy approves at once
// the server spends the first use in the request's own transaction (one
// round trip, one commit). used is nil when no use was attempted (pending,
// denied, approved by a human during the wait, a retry answered from an
// earlier request, or a server that does not spend with a request): then
// Spend as usual if it is approved.
func (c *Client) AuthorizeAndSpend(ctx context.Context, req agentotp.PermissionRequest, wait time.Duration, details map[string]any) (*agentotp.Permission, agentotp.Secret, *agentotp.UseResult, error) {
	if details == nil {
		details = map[string]any{}
	}
	p, err := c.authorize(ctx, req, wait, &useRequest{ActionDetails: details})
	if err != nil {
		return nil, "", nil, err
	}
	return p.Domain(), p.Token, p.spent, nil
}

func (c *Client) authorize(ctx context.Context, req agentotp.PermissionRequest, wait time.Duration, use *useRequest) (*Permission, error) {
	var o requestOptions
	if wait > 0 {
		Wait(wait)(&o)
	}
	body := Request{
		Action: req.Action, Resource: req.Resource, Scope: req.Scope, Context: req.Context,
		TTL: req.TTL, ApprovalTTL: req.ApprovalTTL, Uses: req.Uses, IdempotencyKey: req.IdempotencyKey,
		Tool: req.Tool, CallbackURL: req.CallbackURL,
	}.body()
	body.Use = use
	p, err := c.ask(ctx, body, o)
	// A decision, or a retry answered with a permission already spent, is
	// the permission's state, as AgentSession reports it: not an error.
	if err != nil && !(p != nil && (IsDecision(err) || p.Status == agentotp.StatusUsed)) {
		return nil, err
	}
	return p, nil
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
		Decision: agentotp.Decision{Rule: p.Rule}, CallbackURL: p.CallbackURL,
	}
	if p.Tool != nil {
		t := *p.Tool
		t.Args = nil // a permission keeps the arguments' hash only
		d.Tool = &t
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

// Await reads the permission, long-polling up to wait while it is pending,
// like agentotp.AgentSession.Await. The token rides along while this
// client holds it.
func (c *Client) Await(ctx context.Context, id agentotp.PermissionID, wait time.Duration) (*agentotp.Permission, agentotp.Secret, error) {
	p, err := c.get(ctx, string(id), wait)
	if err != nil {
		return nil, "", err
	}
	return p.Domain(), p.Token, nil
}

// VerifyToken is Verify with the root package's result type.
func (c *Client) VerifyToken(ctx context.Context, id agentotp.PermissionID, token agentotp.Secret) (agentotp.VerifyResult, error) {
	v, err := c.Verify(ctx, string(id), token)
	if err != nil {
		return agentotp.VerifyResult{}, err
	}
	return agentotp.VerifyResult{Valid: v.Valid, Scope: v.Scope, UsesRemaining: v.UsesRemaining, ExpiresAt: v.ExpiresAt, Reason: v.Reason}, nil
}

// UseToken spends one use, like agentotp.AgentSession.UseToken: a refusal
// is a result with Reason set, not an error.
func (c *Client) UseToken(ctx context.Context, id agentotp.PermissionID, token agentotp.Secret, details map[string]any) (agentotp.UseResult, error) {
	r, err := c.Use(ctx, string(id), token, details)
	var e *Error
	switch {
	case err == nil:
		return agentotp.UseResult{Success: true, UsesRemaining: r.UsesRemaining}, nil
	case errors.As(err, &e) && e.Code == CodeUseRefused:
		return agentotp.UseResult{Reason: e.Reason}, nil
	}
	return agentotp.UseResult{}, err
}

// RevokePermission is Revoke with the root package's permission type.
func (c *Client) RevokePermission(ctx context.Context, id agentotp.PermissionID, reason string) (*agentotp.Permission, error) {
	p, err := c.Revoke(ctx, string(id), reason)
	if err != nil {
		return nil, err
	}
	return p.Domain(), nil
}

// ApprovalURL is the console page the server named for a pending
// permission, or the server's usual address for it.
func (c *Client) ApprovalURL(id agentotp.PermissionID) string {
	c.mu.Lock()
	u, ok := c.links[string(id)]
	c.mu.Unlock()
	if ok {
		return u
	}
	return c.t.base + "/ui/requests/" + url.PathEscape(string(id))
}

// RecordOutcome reports how the action under a spent permission went, like
// agentotp.AgentSession.RecordOutcome. It is not retried after sending.
func (c *Client) RecordOutcome(ctx context.Context, id agentotp.PermissionID, o agentotp.Outcome) error {
	body := map[string]any{"success": o.Success, "durationMs": o.Duration.Milliseconds(), "resultBytes": o.ResultBytes}
	if o.Error != "" {
		body["error"] = o.Error
	}
	_, err := c.t.do(ctx, call{method: http.MethodPost, path: "/api/v1/permissions/" + url.PathEscape(string(id)) + "/outcome",
		body: body, mode: retryUnsent}, nil)
	return err
}
