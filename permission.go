package agentotp

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Status is where a permission is in its lifecycle.
type Status string

const (
	StatusPending  Status = "pending"
	StatusApproved Status = "approved"
	StatusDenied   Status = "denied"
	StatusExpired  Status = "expired"
	StatusUsed     Status = "used"
	StatusRevoked  Status = "revoked"
)

// Terminal reports whether no further transition can happen.
func (s Status) Terminal() bool {
	switch s {
	case StatusDenied, StatusExpired, StatusUsed, StatusRevoked:
		return true
	}
	return false
}

// Valid reports whether s is one of the six statuses.
func (s Status) Valid() bool {
	switch s {
	case StatusPending, StatusApproved, StatusDenied, StatusExpired, StatusUsed, StatusRevoked:
		return true
	}
	return false
}

// Limits on a request, enforced at the edge of the service.
const (
	DefaultTokenTTL    = 300 * time.Second
	MinTokenTTL        = 30 * time.Second
	MaxTokenTTL        = 3600 * time.Second
	DefaultApprovalTTL = 300 * time.Second
	MinApprovalTTL     = 30 * time.Second
	MaxApprovalTTL     = 24 * time.Hour
	DefaultUses        = 1
	MaxUses            = 1000

	MaxActionLen         = 255
	MaxResourceLen       = 1024
	MaxIdempotencyKeyLen = 255
	MaxReasonLen         = 1000
	MaxNameLen           = 255
	MaxDescriptionLen    = 1000
	// MaxToolNameLen bounds a tool call's server and tool names.
	MaxToolNameLen = 255
	// MaxObjectKeys bounds scope, context, details and metadata objects
	// (a 10 000-key scope is refused, not stored).
	MaxObjectKeys = 256
	// MaxObjectDepth bounds nesting in those objects.
	MaxObjectDepth = 16
	// MaxObjectBytes bounds the JSON size of one such object, and is the
	// ceiling of Options.MaxRequestObjectBytes.
	MaxObjectBytes = 64 << 10
	// DefaultMaxRequestObjectBytes is the default cap on the JSON size of
	// each object a permission request stores: its scope, its context and
	// its tool call's annotations (Options.MaxRequestObjectBytes). One
	// agent key must not be able to fill the disk with large requests.
	DefaultMaxRequestObjectBytes = 8 << 10
)

// Permission is one request by one agent for one action, and — once
// approved — the token terms it grants. The token's plain text is never part
// of it: only its hash.
type Permission struct {
	ID             PermissionID
	AgentID        AgentID
	Action         string
	Resource       string
	Scope          map[string]any // as requested by the agent
	Context        map[string]any // agent-asserted, untrusted
	IdempotencyKey string
	// CallbackURL receives the signed status when the permission is
	// decided, expires or is revoked; "" = none. Set at request time only.
	CallbackURL string
	// Tool is the MCP tool call the permission was asked for (nil: not a
	// tool call). Set at request time only; its Args are not kept (the
	// scope holds them), only their ArgsHash.
	Tool      *ToolCall
	Status    Status
	CreatedAt time.Time
	UpdatedAt time.Time
	// ApprovalExpiresAt ends the pending window (approvalTtl).
	ApprovalExpiresAt time.Time

	// Decision made by the policy, then (for require_approval) by a human.
	Decision Decision
	// DecisionEventID is the audit event recording the policy decision.
	DecisionEventID EventID
	DecidedBy       string // "policy", "user:<id>", "timeout", "" while pending
	DecidedAt       time.Time
	DecisionReason  string

	// Grant: what the token allows. Set when approved.
	GrantedScope   map[string]any
	TokenTTL       time.Duration
	Uses           int
	UsesRemaining  int
	TokenExpiresAt time.Time
	// TokenHash is the SHA-256 of the token, "" until the token is issued.
	// Tokens are minted when handed to the agent: at once for auto-approval,
	// at the agent's first read after a human approval.
	TokenHash     string
	TokenIssuedAt time.Time
	RevokedAt     time.Time
}

// ExpiresAt is the moment that bounds the permission's current state: the end
// of the approval window while pending, the token's expiry once approved.
func (p *Permission) ExpiresAt() time.Time {
	if p.Status == StatusPending || p.TokenExpiresAt.IsZero() {
		return p.ApprovalExpiresAt
	}
	return p.TokenExpiresAt
}

// Due reports whether the permission should be expired at now: a pending
// request past its window, or an approved grant past its token expiry. The
// boundary is inclusive: at exactly ExpiresAt it is already expired.
func (p *Permission) Due(now time.Time) bool {
	switch p.Status {
	case StatusPending:
		return !now.Before(p.ApprovalExpiresAt)
	case StatusApproved:
		return !now.Before(p.TokenExpiresAt)
	}
	return false
}

// Effective returns a copy whose status reflects expiry at now, so that
// readers never see a live-looking permission that the sweeper has not
// reached yet.
func (p *Permission) Effective(now time.Time) *Permission {
	c := *p
	if c.Due(now) {
		c.Status = StatusExpired
	}
	return &c
}

// TokenPending reports whether a human approval produced a token that the
// owning agent has not received yet.
func (p *Permission) TokenPending() bool {
	return p.Status == StatusApproved && p.TokenHash == ""
}

// DeciderKind names who decided in the v0.1.1 vocabulary: "auto" (a
// policy), "user" (a person or the system), "timeout", "revoked", or ""
// while undecided.
func (p *Permission) DeciderKind() string {
	switch p.DecidedBy {
	case "":
		return ""
	case "policy":
		return "auto"
	case "timeout", "revoked":
		return p.DecidedBy
	}
	return "user"
}

// PermissionRequest is what an agent asks for.
type PermissionRequest struct {
	Action         string
	Resource       string
	Scope          map[string]any
	Context        map[string]any
	TTL            time.Duration // token lifetime; 0 = default
	ApprovalTTL    time.Duration // pending window; 0 = default
	Uses           int           // 0 = default
	IdempotencyKey string
	// CallbackURL, when set, receives the signed outcome (see
	// CallbackSignature). Its host must be on the service's allow-list.
	CallbackURL string
	// Tool is set by the MCP gateway for a gated tool call; nil otherwise.
	// Validate fills in its ArgsHash.
	Tool *ToolCall
}

// Validate checks a request at the edge and fills defaults. A tool call is
// replaced by a checked copy whose ArgsHash is computed from its Args. The
// objects the request stores are capped at DefaultMaxRequestObjectBytes.
func (r *PermissionRequest) Validate() error {
	return r.ValidateWithin(DefaultMaxRequestObjectBytes)
}

// ValidateWithin is Validate with the cap on the stored objects (scope,
// context, tool.annotations) set to maxObjectBytes of JSON (at most
// MaxObjectBytes; 0 or less means the default). An object over the cap is
// refused with PAYLOAD_TOO_LARGE naming the object, its size and the limit.
func (r *PermissionRequest) ValidateWithin(maxObjectBytes int) error {
	if maxObjectBytes <= 0 {
		maxObjectBytes = DefaultMaxRequestObjectBytes
	}
	maxObjectBytes = min(maxObjectBytes, MaxObjectBytes)
	switch {
	case r.Action == "":
		return ValidationError("action", "is required")
	case len(r.Action) > MaxActionLen:
		return ValidationError("action", "must be at most 255 bytes")
	case !validText(r.Action):
		return ValidationError("action", "must be printable UTF-8 without control characters")
	case len(r.Resource) > MaxResourceLen:
		return ValidationError("resource", "must be at most 1024 bytes")
	case !validText(r.Resource):
		return ValidationError("resource", "must be printable UTF-8 without control characters")
	case len(r.IdempotencyKey) > MaxIdempotencyKeyLen:
		return ValidationError("idempotencyKey", "must be at most 255 bytes")
	case !validText(r.IdempotencyKey):
		return ValidationError("idempotencyKey", "must be printable UTF-8 without control characters")
	}
	if r.CallbackURL != "" {
		if _, err := ParseCallbackURL(r.CallbackURL); err != nil {
			return err
		}
	}
	if r.TTL == 0 {
		r.TTL = DefaultTokenTTL
	}
	if r.TTL < MinTokenTTL || r.TTL > MaxTokenTTL {
		return ValidationError("ttl", "must be between 30 and 3600 seconds")
	}
	if r.ApprovalTTL == 0 {
		r.ApprovalTTL = DefaultApprovalTTL
	}
	if r.ApprovalTTL < MinApprovalTTL || r.ApprovalTTL > MaxApprovalTTL {
		return ValidationError("approvalTtl", "must be between 30 and 86400 seconds")
	}
	if r.Uses == 0 {
		r.Uses = DefaultUses
	}
	if r.Uses < 1 || r.Uses > MaxUses {
		return ValidationError("uses", "must be between 1 and 1000")
	}
	if r.Scope == nil {
		r.Scope = map[string]any{}
	}
	if r.Context == nil {
		r.Context = map[string]any{}
	}
	if err := validateStoredObject("scope", r.Scope, maxObjectBytes); err != nil {
		return err
	}
	if err := validateStoredObject("context", r.Context, maxObjectBytes); err != nil {
		return err
	}
	if r.Tool != nil {
		if err := validateStoredObject("tool.annotations", r.Tool.Annotations, maxObjectBytes); err != nil {
			return err
		}
		t, err := r.Tool.validated()
		if err != nil {
			return err
		}
		// The policy judges tool.args; the grant and every use are held to
		// the scope. They must be one thing, or a call approved for one
		// set of arguments could be spent on another.
		if ArgsHash(r.Scope) != t.ArgsHash {
			return ValidationError("scope", "must be exactly the tool call's arguments (tool.args)")
		}
		r.Tool = t
	}
	return nil
}

// validateStoredObject checks an object a request stores: the keys, depth
// and strings of ValidateObject, then its exact JSON size (as stored)
// against limit. Oversize is PAYLOAD_TOO_LARGE, not a validation error:
// the request is well formed, just bigger than this server keeps.
func validateStoredObject(field string, m map[string]any, limit int) error {
	if len(m) > MaxObjectKeys {
		return ValidationError(field, "has more than 256 keys")
	}
	if _, err := validateValue(field, m, 0); err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return ValidationError(field, "must hold only JSON values")
	}
	if len(b) > limit {
		problem := "is " + groupDigits(len(b)) + " bytes of JSON; the limit is " + groupDigits(limit)
		return &Error{Code: CodeTooLarge, Message: field + " " + problem, Details: map[string]string{field: problem}}
	}
	return nil
}

// groupDigits writes n with thousands separators: 9321 → "9,321".
func groupDigits(n int) string {
	if n < 0 {
		return "-" + groupDigits(-n)
	}
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// validText rejects invalid UTF-8, NUL and other C0/C1 control characters
// except tab (such bytes break logs, terminals and Telegram).
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if (r < 0x20 && r != '\t') || (r >= 0x7f && r < 0xa0) {
			return false
		}
	}
	return true
}

// ValidateObject bounds a JSON object's keys, depth, size and strings. It
// accepts the shapes encoding/json produces: map[string]any, []any, string,
// float64, json.Number, bool and nil.
func ValidateObject(field string, m map[string]any) error {
	if len(m) > MaxObjectKeys {
		return ValidationError(field, "has more than 256 keys")
	}
	size, err := validateValue(field, m, 0)
	if err != nil {
		return err
	}
	if size > MaxObjectBytes {
		return ValidationError(field, "is larger than 64 KiB")
	}
	return nil
}

// validateValue checks v and returns about how many bytes its JSON takes.
func validateValue(path string, v any, depth int) (int, error) {
	if depth > MaxObjectDepth {
		return 0, ValidationError(path, "is nested more than 16 levels deep")
	}
	switch x := v.(type) {
	case map[string]any:
		if len(x) > MaxObjectKeys {
			return 0, ValidationError(path, "has more than 256 keys")
		}
		size := 2
		for k, e := range x {
			if k == "" || !validText(k) || len(k) > MaxNameLen {
				return 0, ValidationError(path, "has an empty, over-long or non-printable key")
			}
			n, err := validateValue(path+"."+k, e, depth+1)
			if err != nil {
				return 0, err
			}
			size += len(k) + 4 + n
		}
		return size, nil
	case []any:
		if len(x) > MaxObjectKeys*4 {
			return 0, ValidationError(path, "has more than 1024 elements")
		}
		size := 2
		for _, e := range x {
			n, err := validateValue(path, e, depth+1)
			if err != nil {
				return 0, err
			}
			size += n + 1
		}
		return size, nil
	case string:
		if !utf8.ValidString(x) || strings.ContainsRune(x, 0) {
			return 0, ValidationError(path, "must be valid UTF-8 without NUL")
		}
		return len(x) + 2, nil
	}
	return 8, nil
}
