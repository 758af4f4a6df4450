package agentotp

import (
	"context"
	"time"
)

// Effect is what a policy decides. The zero value is Deny, so a Decision
// that was never filled in cannot approve anything.
type Effect int

const (
	EffectDeny Effect = iota
	EffectRequireApproval
	EffectAutoApprove
)

// String returns the policy-file spelling.
func (e Effect) String() string {
	switch e {
	case EffectAutoApprove:
		return "auto_approve"
	case EffectRequireApproval:
		return "require_approval"
	}
	return "deny"
}

// ParseEffect parses the policy-file spelling.
func ParseEffect(s string) (Effect, bool) {
	switch s {
	case "auto_approve":
		return EffectAutoApprove, true
	case "require_approval":
		return EffectRequireApproval, true
	case "deny":
		return EffectDeny, true
	}
	return EffectDeny, false
}

// Decision is a policy's answer to a request.
type Decision struct {
	Effect Effect
	// Rule names the rule that matched, "" for the default.
	Rule          string
	PolicyVersion string
	// Reason is shown to the agent; keep it free of policy internals.
	Reason string
	// Scope is the applied scope: the request's scope narrowed by the
	// rule's template. nil means the requested scope unchanged.
	Scope map[string]any
	// TokenTTL and Uses override the request's when non-zero.
	TokenTTL time.Duration
	Uses     int
	// UseWhen is checked at every use of the token.
	UseWhen string
	// Approvers (user names or roles) and Quorum for require_approval.
	Approvers []string
	Quorum    int
}

// EvalInput is everything a policy may look at. Agent attributes and Now are
// server-derived; Scope and Context are asserted by the agent.
type EvalInput struct {
	Agent    *Agent
	Action   string
	Resource string
	Scope    map[string]any
	Context  map[string]any
	Now      time.Time
	// Tool is the MCP tool call for gateway requests, nil otherwise. At
	// request time it carries the call's Args; when a token is used, the
	// call stored on the permission, with Args only when the scope is
	// those arguments (nil otherwise, so rules reading them fail closed).
	Tool *ToolCall
}

// Evaluator decides requests. It must be safe for concurrent use. An error
// fails closed: the service denies.
type Evaluator interface {
	Evaluate(ctx context.Context, in EvalInput) (Decision, error)
}

// UseChecker is implemented by evaluators that check useWhen expressions.
// agent is the permission's agent as it is at the use (its name and
// metadata may have changed since the request). A non-nil error rejects
// the use (the token is not spent).
type UseChecker interface {
	CheckUse(ctx context.Context, agent *Agent, p *Permission, details map[string]any, now time.Time) error
}

// PolicyValidator is implemented by evaluators that can compile a stored
// policy; the service refuses API-managed policies that do not compile.
type PolicyValidator interface {
	ValidatePolicy(p *Policy) error
}

// PolicyReloader is implemented by evaluators that read API-managed
// policies; the service calls Reload after every policy change.
type PolicyReloader interface {
	Reload(ctx context.Context) error
}

// RequireApprovalEvaluator sends every request to a human. It is the
// default until a policy engine is configured.
type RequireApprovalEvaluator struct{}

// Evaluate implements Evaluator.
func (RequireApprovalEvaluator) Evaluate(context.Context, EvalInput) (Decision, error) {
	return Decision{Effect: EffectRequireApproval, Reason: "no policy configured: a human must approve", PolicyVersion: "builtin"}, nil
}

// EvaluatorFunc adapts a function to Evaluator.
type EvaluatorFunc func(ctx context.Context, in EvalInput) (Decision, error)

// Evaluate implements Evaluator.
func (f EvaluatorFunc) Evaluate(ctx context.Context, in EvalInput) (Decision, error) {
	return f(ctx, in)
}

// DecideInput is a human's answer to a pending request.
type DecideInput struct {
	Approved bool
	Reason   string
	// ScopeModifications may only narrow the scope (see NarrowScope).
	ScopeModifications map[string]any
}

// Approval is one approver's vote, kept for quorum counting.
type Approval struct {
	PermissionID PermissionID
	UserID       UserID
	Approved     bool
	Reason       string
	CreatedAt    time.Time
}
