// Package tools puts langchaingo tools behind agentotp permissions: every
// Call of a guarded tool asks first, and the wrapped tool runs only after
// an approval, with the permission's one use already spent.
//
//	client := otpclient.New(url, apiKey)                 // remote server
//	// or: svc.AgentSession(principal)                     // in process
//	guarded := tools.GuardAll([]lctools.Tool{search, sendEmail}, client)
//	agent := agents.NewOneShotAgent(llm, guarded)
//
// A denial, an expiry or a wait that ran out comes back to the model as
// the tool's text output with a nil error — a returned error would abort
// the langchaingo agent run — so the model can choose another path.
package tools

import (
	"context"
	"errors"
	"fmt"
	"time"

	lctools "github.com/tmc/langchaingo/tools"

	"github.com/agentotp/agentotp"
)

// Authorizer is what a guard needs from agentotp. *agentotp.AgentSession
// (in process: svc.AgentSession(principal)) and *otpclient.Client (over
// HTTP) both implement it.
type Authorizer interface {
	// Authorize asks for a permission and waits up to wait while it is
	// pending; it returns the permission in its current state and an
	// error only when asking failed.
	Authorize(ctx context.Context, req agentotp.PermissionRequest, wait time.Duration) (*agentotp.Permission, agentotp.Secret, error)
	// Spend uses the token once; a refusal is an error matching
	// agentotp.ErrConflict.
	Spend(ctx context.Context, id agentotp.PermissionID, token agentotp.Secret, details map[string]any) error
}

// An Authorizer is exactly what the root Guard asks through.
var _ agentotp.GuardAuthorizer = Authorizer(nil)

// DefaultWait bounds how long one tool call waits for a human.
const DefaultWait = 2 * time.Minute

// Outcome is what a Hook sees: the request made for one call and its
// result, before anything is spent or run.
type Outcome struct {
	Tool       string
	Input      string
	Request    agentotp.PermissionRequest
	Permission *agentotp.Permission
	// Allowed is true when the permission is approved and its token held.
	// A hook may set it to false to veto the call (nothing is spent).
	Allowed bool
	// Message is the text the model receives when the call is not
	// allowed; a hook may rewrite it.
	Message string
}

// Hook runs after every decision, before the token is spent and the tool
// runs. It may veto or reword (see Outcome); a returned error aborts the
// agent run.
type Hook func(ctx context.Context, o *Outcome) error

// Option configures Guard, GuardAll and RequestPermission.
type Option func(*config)

type config struct {
	action   func(tool string) string
	resource func(input string) string
	scope    func(input string) (map[string]any, error)
	details  func(input string) map[string]any
	context  func(ctx context.Context, tool, input string) map[string]any
	wait     time.Duration
	hook     Hook
}

func newConfig(opts []Option) config {
	c := config{
		action: func(tool string) string { return "tool." + tool },
		scope:  func(input string) (map[string]any, error) { return map[string]any{"input": input}, nil },
		wait:   DefaultWait,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithAction sets the action asked for (default "tool.<Name>"). With
// GuardAll, "%s" in action is replaced by the tool's name.
func WithAction(action string) Option {
	return func(c *config) {
		c.action = func(tool string) string {
			if containsVerb(action) {
				return fmt.Sprintf(action, tool)
			}
			return action
		}
	}
}

func containsVerb(s string) bool {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == '%' && s[i+1] == 's' {
			return true
		}
	}
	return false
}

// WithResource derives the resource from the tool input (default none).
func WithResource(fn func(input string) string) Option {
	return func(c *config) { c.resource = fn }
}

// WithScope derives the requested scope from the tool input (default
// {"input": input}, which binds the approval to the exact input). An error
// is reported to the model as invalid input; nothing is asked.
func WithScope(fn func(input string) (map[string]any, error)) Option {
	return func(c *config) { c.scope = fn }
}

// WithDetails derives the actionDetails sent when the token is spent
// (default: the requested scope, so the server checks that the granted
// scope still covers this exact call).
func WithDetails(fn func(input string) map[string]any) Option {
	return func(c *config) { c.details = fn }
}

// WithContext adds context shown to the approver (agent-asserted, labelled
// as such), for example the conversation or user the call serves.
func WithContext(fn func(ctx context.Context, tool, input string) map[string]any) Option {
	return func(c *config) { c.context = fn }
}

// WithWait bounds how long one call waits for a human (default 2 min;
// 0 does not wait). The agent run's context bounds it too.
func WithWait(d time.Duration) Option {
	return func(c *config) { c.wait = max(0, d) }
}

// WithHook installs a Hook.
func WithHook(h Hook) Option {
	return func(c *config) { c.hook = h }
}

// Guarded is a langchaingo tool that asks for permission before each call.
type Guarded struct {
	inner lctools.Tool
	auth  Authorizer
	cfg   config
	guard *agentotp.Guard
}

var _ lctools.Tool = (*Guarded)(nil)

// Guard wraps tool so that each Call asks auth for permission first.
func Guard(tool lctools.Tool, auth Authorizer, opts ...Option) *Guarded {
	cfg := newConfig(opts)
	return &Guarded{inner: tool, auth: auth, cfg: cfg, guard: agentotp.NewGuard(cfg.wait)}
}

// GuardAll guards every tool with the same authorizer and options.
func GuardAll(ts []lctools.Tool, auth Authorizer, opts ...Option) []lctools.Tool {
	out := make([]lctools.Tool, 0, len(ts))
	for _, t := range ts {
		out = append(out, Guard(t, auth, opts...))
	}
	return out
}

// Name is the wrapped tool's name.
func (g *Guarded) Name() string { return g.inner.Name() }

// Description is the wrapped tool's, with a note that calls need approval.
func (g *Guarded) Description() string {
	return g.inner.Description() + " (Each call needs permission and may wait for a human; a refusal comes back as text.)"
}

// Unwrap returns the wrapped tool.
func (g *Guarded) Unwrap() lctools.Tool { return g.inner }

// Call asks for permission for this input, waits for a decision, spends the
// token's use and only then runs the wrapped tool. Anything short of an
// approval is returned as text with a nil error; an error means agentotp
// itself could not be asked (fail closed) or a hook aborted.
func (g *Guarded) Call(ctx context.Context, input string) (string, error) {
	name := g.inner.Name()
	req, msg := g.request(ctx, name, input)
	if msg != "" {
		return msg, nil
	}
	// The same input asked again picks up the decision on its pending
	// request instead of asking the human twice.
	v, err := g.guard.Ask(ctx, g.auth, input, name, req)
	if err != nil {
		return "", fmt.Errorf("agentotp: ask permission for %s: %w", name, err)
	}
	o := &Outcome{Tool: name, Input: input, Request: req, Permission: v.Permission, Allowed: v.Allowed, Message: v.Message}
	if g.cfg.hook != nil {
		allowed := o.Allowed
		if err := g.cfg.hook(ctx, o); err != nil {
			return "", err
		}
		o.Allowed = allowed && o.Allowed // a hook can veto, never approve
		if !o.Allowed && o.Message == "" {
			o.Message = fmt.Sprintf("The call to %s was not allowed.", name)
		}
	}
	if !o.Allowed {
		return o.Message, nil
	}

	details := req.Scope
	if g.cfg.details != nil {
		details = g.cfg.details(input)
	}
	ok, msg, err := g.guard.Spend(ctx, g.auth, v, name, details)
	if err != nil {
		return "", fmt.Errorf("agentotp: %w", err)
	}
	if !ok {
		return msg, nil
	}
	return g.inner.Call(ctx, input)
}

// request builds the permission request for one call, or the text telling
// the model its input could not be mapped.
func (g *Guarded) request(ctx context.Context, name, input string) (agentotp.PermissionRequest, string) {
	return buildRequest(ctx, g.cfg, name, input)
}

func buildRequest(ctx context.Context, cfg config, name, input string) (agentotp.PermissionRequest, string) {
	req := agentotp.PermissionRequest{Action: cfg.action(name)}
	if cfg.resource != nil {
		req.Resource = cfg.resource(input)
	}
	scope, err := cfg.scope(input)
	if err != nil {
		return req, fmt.Sprintf("Invalid input for %s: %v. The tool did not run.", name, err)
	}
	req.Scope = scope
	if cfg.context != nil {
		req.Context = cfg.context(ctx, name, input)
	}
	return req, ""
}

// asDomain finds an *agentotp.Error, or reads a client error's wire code
// through errors.Is against the root sentinels.
func asDomain(err error, target **agentotp.Error) bool {
	if errors.As(err, target) {
		return true
	}
	for _, s := range []*agentotp.Error{agentotp.ErrValidation, agentotp.ErrConflict} {
		if errors.Is(err, s) {
			*target = &agentotp.Error{Code: s.Code, Message: err.Error()}
			return true
		}
	}
	return false
}
