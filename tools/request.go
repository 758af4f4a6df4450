package tools

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	lctools "github.com/tmc/langchaingo/tools"

	"github.com/agentotp/agentotp"
)

// RequestTool lets the model ask for a permission explicitly, for example
// before a step that a plain tool cannot guard. Its input is JSON
//
//	{"action": "gmail.send", "resource": "email:bob@example.com",
//	 "scope": {"max_emails": 1}, "reason": "why, for the approver"}
//
// or just an action name. The answer is text: the decision, and when
// approved the permission id, granted scope, expiry and token. Nothing is
// spent: the token is for a tool that takes it.
type RequestTool struct {
	auth Authorizer
	cfg  config
}

var _ lctools.Tool = (*RequestTool)(nil)

// RequestPermission returns the explicit permission tool. WithWait and
// WithHook apply; the model names the action, and policies decide.
func RequestPermission(auth Authorizer, opts ...Option) *RequestTool {
	return &RequestTool{auth: auth, cfg: newConfig(opts)}
}

// Name implements tools.Tool.
func (*RequestTool) Name() string { return "request_permission" }

// Description implements tools.Tool.
func (*RequestTool) Description() string {
	return `Ask a human or policy for permission before a sensitive action. Input: JSON {"action": "...", "resource": "...", "scope": {...}, "reason": "..."} or just the action name. Answers approved (with permission id and token), denied (with the reason), or still pending.`
}

type requestInput struct {
	Action   string         `json:"action"`
	Resource string         `json:"resource"`
	Scope    map[string]any `json:"scope"`
	Reason   string         `json:"reason"`
	Context  map[string]any `json:"context"`
}

// Call implements tools.Tool.
func (t *RequestTool) Call(ctx context.Context, input string) (string, error) {
	var in requestInput
	trimmed := strings.TrimSpace(input)
	if strings.HasPrefix(trimmed, "{") {
		if err := json.Unmarshal([]byte(trimmed), &in); err != nil {
			return fmt.Sprintf("Invalid input: %v. Send JSON with at least an \"action\".", err), nil
		}
	} else {
		in.Action = trimmed
	}
	if in.Action == "" {
		return `Invalid input: "action" is required.`, nil
	}
	req := agentotp.PermissionRequest{Action: in.Action, Resource: in.Resource, Scope: in.Scope, Context: in.Context}
	if in.Reason != "" {
		if req.Context == nil {
			req.Context = map[string]any{}
		}
		req.Context["reason"] = in.Reason
	}
	perm, token, err := t.auth.Authorize(ctx, req, t.cfg.wait)
	if err != nil {
		var e *agentotp.Error
		if ok := asDomain(err, &e); ok && e.Code == agentotp.CodeValidation {
			return "Invalid request: " + e.Message, nil
		}
		return "", fmt.Errorf("agentotp: request permission %s: %w", in.Action, err)
	}
	o := &Outcome{Tool: t.Name(), Input: input, Request: req, Permission: perm}
	o.Allowed, o.Message = agentotp.Verdict(in.Action, perm, token)
	if t.cfg.hook != nil {
		allowed := o.Allowed
		if err := t.cfg.hook(ctx, o); err != nil {
			return "", err
		}
		o.Allowed = allowed && o.Allowed
	}
	if !o.Allowed {
		if o.Message == "" {
			o.Message = "Permission was not granted."
		}
		return o.Message, nil
	}
	scope, _ := json.Marshal(perm.GrantedScope)
	return fmt.Sprintf("Permission granted for %s: id %s, token %s, scope %s, expires %s.",
		in.Action, perm.ID, token.Reveal(), scope, perm.TokenExpiresAt.UTC().Format(time.RFC3339)), nil
}
