package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"

	"github.com/agentotp/agentotp"
)

type toolDef struct {
	Tool    mcp.Tool
	Handler agentHandler
}

func annotations(title string, readOnly, destructive, idempotent bool) mcp.ToolOption {
	return mcp.WithToolAnnotation(mcp.ToolAnnotation{
		Title: title, ReadOnlyHint: &readOnly, DestructiveHint: &destructive,
		IdempotentHint: &idempotent, OpenWorldHint: ptr(false),
	})
}

func ptr[T any](v T) *T { return &v }

// tool builds a definition around a hand-written input schema. (mcp.NewTool
// would also set a default typed schema, and a tool with both cannot be
// encoded.)
func tool(name, description, inputSchema string, opts ...mcp.ToolOption) mcp.Tool {
	t := mcp.NewToolWithRawSchema(name, description, json.RawMessage(inputSchema))
	for _, o := range opts {
		o(&t)
	}
	return t
}

// permissionSchema is the output of the tools that report a permission.
const permissionSchema = `{
  "type": "object",
  "properties": {
    "id": {"type": "string", "description": "Permission id (perm_…)."},
    "status": {"type": "string", "enum": ["pending", "approved", "denied", "expired", "used", "revoked"]},
    "action": {"type": "string"},
    "resource": {"type": "string"},
    "token": {"type": "string", "description": "One-time token (otp_…), present when approved and held for you. Keep it out of logs and messages."},
    "scope": {"type": "object", "description": "What the permission allows: the requested scope, possibly narrowed by policy or a person."},
    "uses_remaining": {"type": "integer"},
    "expires_at": {"type": "string", "format": "date-time", "description": "End of the approval window while pending; end of the token's life once approved."},
    "approval_url": {"type": "string", "description": "Page where a person decides, while pending."},
    "reason": {"type": "string"},
    "next_step": {"type": "string", "description": "What to do next."}
  },
  "required": ["id", "status", "next_step"]
}`

func (s *Server) tools() []toolDef {
	return []toolDef{
		{tool("request_permission",
			"Ask for a one-time permission before a sensitive action (sending an email, paying, deleting, "+
				"calling an external API). A policy approves, denies or asks a person. When approved you receive id and token: "+
				"call use_permission with them right before you act, once per action. When pending, tell the user the "+
				"approval_url and call get_permission with the id to wait for the decision. When denied or expired, do not act.",
			`{
  "type": "object",
  "properties": {
    "action": {"type": "string", "minLength": 1, "maxLength": 255, "description": "What you want to do, as service.verb, e.g. gmail.send, payments.charge, files.delete."},
    "resource": {"type": "string", "maxLength": 1024, "description": "What it acts on, e.g. an email address, an account, a path."},
    "scope": {"type": "object", "description": "Limits of the permission, e.g. {\"to\": \"client@example.com\", \"max_emails\": 1}. Uses are checked against it."},
    "context": {"type": "object", "description": "Why you ask, shown to the approver as your words, e.g. {\"reason\": \"user asked to send the invoice\"}."},
    "ttl_seconds": {"type": "integer", "minimum": 30, "maximum": 3600, "description": "How long the token lives once approved (default 300)."},
    "wait_seconds": {"type": "integer", "minimum": 0, "maximum": 55, "description": "How long to wait for a person if approval is needed (default 0: answer at once)."}
  },
  "required": ["action"],
  "additionalProperties": false
}`,
			mcp.WithRawOutputSchema(json.RawMessage(permissionSchema)),
			annotations("Request a permission", false, false, false),
		), s.requestPermission},

		{tool("get_permission",
			"Read a permission you requested, waiting up to wait_seconds while a person decides. "+
				"After a person approves, the first read returns the token. Call it again while the status is pending.",
			`{
  "type": "object",
  "properties": {
    "id": {"type": "string", "description": "Permission id from request_permission (perm_…)."},
    "wait_seconds": {"type": "integer", "minimum": 0, "maximum": 55, "description": "How long to wait while pending (default 30)."}
  },
  "required": ["id"],
  "additionalProperties": false
}`,
			mcp.WithRawOutputSchema(json.RawMessage(permissionSchema)),
			annotations("Get a permission", true, false, true),
		), s.getPermission},

		{tool("verify_permission",
			"Check whether a token is still valid for its permission, without spending it. "+
				"Returns the scope it allows and the uses left.",
			`{
  "type": "object",
  "properties": {
    "id": {"type": "string", "description": "Permission id (perm_…)."},
    "token": {"type": "string", "description": "Token from request_permission or get_permission (otp_…)."}
  },
  "required": ["id", "token"],
  "additionalProperties": false
}`,
			mcp.WithRawOutputSchema(json.RawMessage(`{
  "type": "object",
  "properties": {
    "valid": {"type": "boolean"},
    "scope": {"type": "object"},
    "uses_remaining": {"type": "integer"},
    "expires_at": {"type": "string", "format": "date-time"},
    "reason": {"type": "string", "description": "Why the token is not valid."}
  },
  "required": ["valid"]
}`)),
			annotations("Verify a token", true, false, true),
		), s.verifyPermission},

		{tool("use_permission",
			"Spend one use of an approved permission right before you perform the action. "+
				"Pass what you are about to do as details (e.g. {\"to\": \"client@example.com\"}); they are checked "+
				"against the approved scope. Only act if this succeeds. Each use is spent once, even if your action then fails.",
			`{
  "type": "object",
  "properties": {
    "id": {"type": "string", "description": "Permission id (perm_…)."},
    "token": {"type": "string", "description": "The permission's token (otp_…)."},
    "details": {"type": "object", "description": "What exactly you are about to do, checked against the scope."}
  },
  "required": ["id", "token"],
  "additionalProperties": false
}`,
			mcp.WithRawOutputSchema(json.RawMessage(`{
  "type": "object",
  "properties": {
    "success": {"type": "boolean"},
    "uses_remaining": {"type": "integer"},
    "reason": {"type": "string", "description": "Why the use was refused; nothing was spent."}
  },
  "required": ["success"]
}`)),
			annotations("Use a permission", false, true, false),
		), s.usePermission},

		{tool("revoke_permission",
			"Withdraw a pending request or end an approved permission you no longer need; its token stops working at once.",
			`{
  "type": "object",
  "properties": {
    "id": {"type": "string", "description": "Permission id (perm_…)."},
    "reason": {"type": "string", "maxLength": 1000, "description": "Why, for the audit trail."}
  },
  "required": ["id"],
  "additionalProperties": false
}`,
			mcp.WithRawOutputSchema(json.RawMessage(permissionSchema)),
			annotations("Revoke a permission", false, true, false),
		), s.revokePermission},

		{tool("approval_prompt",
			"Claude Code permission prompt (--permission-prompt-tool): decides whether a tool call may run, "+
				"by policy and, when needed, a person. Answers a JSON text {\"behavior\":\"allow\",\"updatedInput\":{…}} or "+
				"{\"behavior\":\"deny\",\"message\":\"…\"}. One approval covers one tool call.",
			`{
  "type": "object",
  "properties": {
    "tool_name": {"type": "string", "minLength": 1, "maxLength": 200, "description": "The tool Claude Code wants to run."},
    "input": {"type": "object", "description": "The tool's input."},
    "tool_use_id": {"type": "string", "description": "Claude Code's id of this tool use."}
  },
  "required": ["tool_name", "input"],
  "additionalProperties": false
}`,
			annotations("Approve a tool call", false, false, false),
		), s.approvalPrompt},
	}
}

// args reads tool arguments, refusing unknown ones and naming the argument
// that is wrong.
type args struct {
	m   map[string]any
	err error
}

func newArgs(req mcp.CallToolRequest, known ...string) *args {
	a := &args{m: req.GetArguments()}
	if a.m == nil {
		if raw := req.GetRawArguments(); raw != nil {
			if _, ok := raw.(map[string]any); !ok {
				a.err = errors.New("arguments must be a JSON object")
			}
		}
		a.m = map[string]any{}
	}
	var unknown []string
	for k := range a.m {
		if !contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 && a.err == nil {
		sort.Strings(unknown)
		a.err = fmt.Errorf("unknown argument %q (accepted: %s)", unknown[0], strings.Join(known, ", "))
	}
	return a
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (a *args) fail(name, problem string) {
	if a.err == nil {
		a.err = fmt.Errorf("invalid argument %s: %s", name, problem)
	}
}

func (a *args) str(name string, required bool) string {
	v, ok := a.m[name]
	if !ok || v == nil {
		if required {
			a.fail(name, "is required")
		}
		return ""
	}
	s, ok := v.(string)
	switch {
	case !ok:
		a.fail(name, "must be a string")
	case required && strings.TrimSpace(s) == "":
		a.fail(name, "must not be empty")
	}
	return s
}

func (a *args) obj(name string, required bool) map[string]any {
	v, ok := a.m[name]
	if !ok || v == nil {
		if required {
			a.fail(name, "is required")
		}
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		a.fail(name, "must be a JSON object")
	}
	return m
}

// seconds reads a whole number of seconds in [lo, hi]; absent gives def.
func (a *args) seconds(name string, lo, hi, def int) time.Duration {
	v, ok := a.m[name]
	if !ok || v == nil {
		return time.Duration(def) * time.Second
	}
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || f < float64(lo) || f > float64(hi) {
		a.fail(name, fmt.Sprintf("must be a whole number of seconds from %d to %d", lo, hi))
		return 0
	}
	return time.Duration(f) * time.Second
}

func (a *args) id() agentotp.PermissionID {
	id := agentotp.PermissionID(a.str("id", true))
	if a.err == nil && !id.Valid() {
		a.fail("id", "is not a permission id (perm_…)")
	}
	return id
}

// wireNames maps the service's field names to this protocol's arguments.
var wireNames = map[string]string{"ttl": "ttl_seconds", "actionDetails": "details"}

// errorResult turns a failure into a tool error the model can read. Only
// safe messages go out: the domain's own, or a generic one.
func (s *Server) errorResult(ctx context.Context, tool string, err error) *mcp.CallToolResult {
	var e *agentotp.Error
	if errors.As(err, &e) && e.Code != agentotp.CodeInternal && e.Code != agentotp.CodeUnavailable && e.Message != "" {
		msg := e.Message
		if e.Code == agentotp.CodeValidation {
			if field, rest, ok := strings.Cut(msg, ": "); ok {
				if w, ok := wireNames[field]; ok {
					field = w
				}
				msg = "invalid argument " + field + ": " + rest
			}
		}
		return mcp.NewToolResultError(fmt.Sprintf("%s failed (%s): %s", tool, e.Code, msg))
	}
	for _, c := range []struct {
		sentinel *agentotp.Error
		text     string
	}{
		{agentotp.ErrNotFound, "no such permission for this agent"},
		{agentotp.ErrUnauthorized, "the agent key was refused by the agentotp server"},
		{agentotp.ErrForbidden, "this agent may not do that"},
		{agentotp.ErrRateLimited, "too many requests; wait a little and retry"},
		{agentotp.ErrConflict, "the permission is not in a state that allows this"},
		{agentotp.ErrValidation, err.Error()},
	} {
		if errors.Is(err, c.sentinel) {
			return mcp.NewToolResultError(fmt.Sprintf("%s failed (%s): %s", tool, c.sentinel.Code, c.text))
		}
	}
	if ctx.Err() != nil {
		return mcp.NewToolResultError(tool + " was cancelled; nothing was approved or spent by this call")
	}
	s.log.Error("mcp tool failed", "tool", tool, "request_id", agentotp.RequestID(ctx), "err", err)
	return mcp.NewToolResultError(tool + " failed: agentotp is unavailable right now; nothing was approved. Retry later.")
}

func invalid(tool string, err error) *mcp.CallToolResult {
	return mcp.NewToolResultError(tool + ": " + err.Error())
}

type permissionView struct {
	ID            string         `json:"id"`
	Status        string         `json:"status"`
	Action        string         `json:"action,omitempty"`
	Resource      string         `json:"resource,omitempty"`
	Token         string         `json:"token,omitempty"`
	Scope         map[string]any `json:"scope,omitempty"`
	UsesRemaining *int           `json:"uses_remaining,omitempty"`
	ExpiresAt     string         `json:"expires_at,omitempty"`
	ApprovalURL   string         `json:"approval_url,omitempty"`
	Reason        string         `json:"reason,omitempty"`
	NextStep      string         `json:"next_step"`
}

func timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// permissionResult reports a permission with the step the model should
// take. Anything but an approval with its token in hand is an error
// result, so the model does not read it as leave to act.
func permissionResult(a Permissions, p *agentotp.Permission, tok agentotp.Secret) *mcp.CallToolResult {
	v := permissionView{ID: string(p.ID), Status: string(p.Status), Action: p.Action, Resource: p.Resource,
		ExpiresAt: timestamp(p.ExpiresAt()), Reason: p.DecisionReason}
	isErr := true
	var text string
	switch p.Status {
	case agentotp.StatusApproved:
		v.Scope, v.UsesRemaining = p.GrantedScope, ptr(p.UsesRemaining)
		if tok != "" {
			isErr = false
			v.Token = tok.Reveal()
			v.NextStep = "Right before you act, call use_permission with this id and token, once per action."
			text = fmt.Sprintf("approved: permission %s for %s. token: %s. %s Uses: %d; the token expires at %s.",
				p.ID, p.Action, v.Token, v.NextStep, p.UsesRemaining, v.ExpiresAt)
		} else {
			v.NextStep = "Use the token you received earlier for this id; if you no longer have it, revoke this permission and request a new one."
			text = fmt.Sprintf("approved, but the token of %s was already handed out in an earlier answer. %s", p.ID, v.NextStep)
		}
	case agentotp.StatusPending:
		v.ApprovalURL = a.ApprovalURL(p.ID)
		v.NextStep = fmt.Sprintf("A person must approve at %s; call get_permission with id %s and wait_seconds (up to 55) to continue. Do not act yet.",
			v.ApprovalURL, p.ID)
		text = "pending: " + v.NextStep
	case agentotp.StatusDenied:
		v.NextStep = "Do not act. Choose another approach or ask the user."
		text = fmt.Sprintf("denied: permission %s for %s (%s). %s", p.ID, p.Action, orDefault(p.DecisionReason, "no reason given"), v.NextStep)
	case agentotp.StatusExpired:
		v.NextStep = "Do not act. Request a new permission if the action is still needed."
		text = fmt.Sprintf("expired: permission %s for %s is no longer valid. %s", p.ID, p.Action, v.NextStep)
	case agentotp.StatusUsed:
		v.UsesRemaining = ptr(0)
		v.NextStep = "Every use is spent. Request a new permission for another action."
		text = fmt.Sprintf("used: permission %s for %s has no uses left. %s", p.ID, p.Action, v.NextStep)
	default: // revoked
		v.NextStep = "Do not act. Request a new permission if the action is still needed."
		text = fmt.Sprintf("%s: permission %s for %s. %s", p.Status, p.ID, p.Action, v.NextStep)
	}
	res := mcp.NewToolResultStructured(v, text)
	res.IsError = isErr
	return res
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (s *Server) requestPermission(ctx context.Context, a Permissions, req mcp.CallToolRequest) *mcp.CallToolResult {
	in := newArgs(req, "action", "resource", "scope", "context", "ttl_seconds", "wait_seconds")
	pr := agentotp.PermissionRequest{
		Action: in.str("action", true), Resource: in.str("resource", false),
		Scope: in.obj("scope", false), Context: in.obj("context", false),
		TTL: in.seconds("ttl_seconds", 30, 3600, 0),
	}
	wait := in.seconds("wait_seconds", 0, int(MaxWait/time.Second), 0)
	if in.err != nil {
		return invalid("request_permission", in.err)
	}
	// No idempotency key here: a model retrying is a new call, and the
	// remote client adds its own key to the HTTP retries it makes.
	perm, tok, err := a.Authorize(ctx, pr, wait)
	if err != nil {
		return s.errorResult(ctx, "request_permission", err)
	}
	return permissionResult(a, perm, tok)
}

func (s *Server) getPermission(ctx context.Context, a Permissions, req mcp.CallToolRequest) *mcp.CallToolResult {
	in := newArgs(req, "id", "wait_seconds")
	id := in.id()
	wait := in.seconds("wait_seconds", 0, int(MaxWait/time.Second), 30)
	if in.err != nil {
		return invalid("get_permission", in.err)
	}
	perm, tok, err := a.Await(ctx, id, wait)
	if err != nil {
		return s.errorResult(ctx, "get_permission", err)
	}
	return permissionResult(a, perm, tok)
}

type verifyView struct {
	Valid         bool           `json:"valid"`
	Scope         map[string]any `json:"scope,omitempty"`
	UsesRemaining *int           `json:"uses_remaining,omitempty"`
	ExpiresAt     string         `json:"expires_at,omitempty"`
	Reason        string         `json:"reason,omitempty"`
}

func (s *Server) verifyPermission(ctx context.Context, a Permissions, req mcp.CallToolRequest) *mcp.CallToolResult {
	in := newArgs(req, "id", "token")
	id, tok := in.id(), agentotp.Secret(in.str("token", true))
	if in.err != nil {
		return invalid("verify_permission", in.err)
	}
	v, err := a.VerifyToken(ctx, id, tok)
	if err != nil {
		return s.errorResult(ctx, "verify_permission", err)
	}
	if !v.Valid {
		res := mcp.NewToolResultStructured(verifyView{Reason: v.Reason},
			fmt.Sprintf("not valid: %s. Do not act on permission %s.", v.Reason, id))
		res.IsError = true
		return res
	}
	out := verifyView{Valid: true, Scope: v.Scope, UsesRemaining: ptr(v.UsesRemaining), ExpiresAt: timestamp(v.ExpiresAt)}
	return mcp.NewToolResultStructured(out, fmt.Sprintf("valid: permission %s has %d use(s) left until %s.", id, v.UsesRemaining, out.ExpiresAt))
}

type useView struct {
	Success       bool   `json:"success"`
	UsesRemaining *int   `json:"uses_remaining,omitempty"`
	Reason        string `json:"reason,omitempty"`
}

func (s *Server) usePermission(ctx context.Context, a Permissions, req mcp.CallToolRequest) *mcp.CallToolResult {
	in := newArgs(req, "id", "token", "details")
	id, tok, details := in.id(), agentotp.Secret(in.str("token", true)), in.obj("details", false)
	if in.err != nil {
		return invalid("use_permission", in.err)
	}
	r, err := a.UseToken(ctx, id, tok, details)
	if err != nil {
		return s.errorResult(ctx, "use_permission", err)
	}
	if !r.Success {
		res := mcp.NewToolResultStructured(useView{Reason: r.Reason},
			fmt.Sprintf("refused: %s. Nothing was spent; do not act on permission %s.", r.Reason, id))
		res.IsError = true
		return res
	}
	return mcp.NewToolResultStructured(useView{Success: true, UsesRemaining: ptr(r.UsesRemaining)},
		fmt.Sprintf("used: one use of %s is spent; %d left. You may act now.", id, r.UsesRemaining))
}

func (s *Server) revokePermission(ctx context.Context, a Permissions, req mcp.CallToolRequest) *mcp.CallToolResult {
	in := newArgs(req, "id", "reason")
	id, reason := in.id(), in.str("reason", false)
	if in.err != nil {
		return invalid("revoke_permission", in.err)
	}
	p, err := a.RevokePermission(ctx, id, reason)
	if err != nil {
		return s.errorResult(ctx, "revoke_permission", err)
	}
	v := permissionView{ID: string(p.ID), Status: string(p.Status), Action: p.Action, Resource: p.Resource,
		NextStep: "The permission is revoked and its token no longer works. Request a new one if needed."}
	return mcp.NewToolResultStructured(v, fmt.Sprintf("revoked: permission %s. %s", p.ID, v.NextStep))
}
