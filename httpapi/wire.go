package httpapi

import (
	"time"

	"github.com/agentotp/agentotp"
)

// Wire shapes: camelCase as in Agent OTP v0.1.1. Domain types carry no JSON
// tags; every field that reaches a client is chosen here, one by one.

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

type permissionRequestBody struct {
	Action         string         `json:"action"`
	Resource       string         `json:"resource"`
	Scope          map[string]any `json:"scope"`
	Context        map[string]any `json:"context"`
	TTL            *int           `json:"ttl"`
	ApprovalTTL    *int           `json:"approvalTtl"`
	Uses           *int           `json:"uses"`
	IdempotencyKey string         `json:"idempotencyKey"`
	CallbackURL    string         `json:"callbackUrl"`
	Tool           *toolBody      `json:"tool"`
	// Use, when present, spends the first use at once if the policy
	// approves at once, in the same transaction as the request.
	Use *requestUseBody `json:"use"`
}

// requestUseBody is the first use asked together with a request: the
// actionDetails a separate use would send (the token is the one being
// issued).
type requestUseBody struct {
	ActionDetails map[string]any `json:"actionDetails"`
}

// toolBody is the MCP tool call a request is for. The server hashes args
// (agentotp.ArgsHash) and keeps only the hash; a client cannot send one.
type toolBody struct {
	Server      string         `json:"server"`
	Name        string         `json:"name"`
	Annotations map[string]any `json:"annotations"`
	Args        map[string]any `json:"args"`
}

func (b *toolBody) domain() *agentotp.ToolCall {
	if b == nil {
		return nil
	}
	return &agentotp.ToolCall{Server: b.Server, Name: b.Name, Annotations: b.Annotations, Args: b.Args}
}

// toolJSON is the tool call a permission was asked for, as its agent and
// its approvers see it: the arguments by their hash (the scope shows them
// for gateway calls).
type toolJSON struct {
	Server      string         `json:"server"`
	Name        string         `json:"name"`
	Annotations map[string]any `json:"annotations"`
	ArgsSHA256  string         `json:"argsSha256"`
}

func toolView(t *agentotp.ToolCall) *toolJSON {
	if t == nil {
		return nil
	}
	v := &toolJSON{Server: t.Server, Name: t.Name, Annotations: t.Annotations, ArgsSHA256: t.ArgsHash}
	if v.Annotations == nil {
		v.Annotations = map[string]any{}
	}
	return v
}

type permissionJSON struct {
	ID             string         `json:"id"`
	Status         string         `json:"status"`
	Token          string         `json:"token,omitempty"`
	Action         string         `json:"action"`
	Resource       string         `json:"resource,omitempty"`
	Scope          map[string]any `json:"scope"`
	RequestedScope map[string]any `json:"requestedScope,omitempty"`
	Context        map[string]any `json:"context,omitempty"`
	ExpiresAt      string         `json:"expiresAt"`
	ApprovalURL    string         `json:"approvalUrl,omitempty"`
	WaitURL        string         `json:"waitUrl,omitempty"`
	WebhookURL     string         `json:"webhookUrl,omitempty"`
	CallbackURL    string         `json:"callbackUrl,omitempty"`
	Tool           *toolJSON      `json:"tool,omitempty"`
	Reason         string         `json:"reason,omitempty"`
	DecisionReason string         `json:"decisionReason,omitempty"`
	DecidedBy      string         `json:"decidedBy,omitempty"`
	DecidedAt      string         `json:"decidedAt,omitempty"`
	DecisionID     string         `json:"decisionId"`
	Rule           string         `json:"rule,omitempty"`
	Uses           int            `json:"uses,omitempty"`
	UsesRemaining  *int           `json:"usesRemaining,omitempty"`
	AgentID        string         `json:"agentId,omitempty"`
	AgentName      string         `json:"agentName,omitempty"`
	CreatedAt      string         `json:"createdAt"`
	// Use is the outcome of the use asked with the request (its "use"
	// field); absent when no use was attempted.
	Use *useJSON `json:"use,omitempty"`
}

// decidedBy maps the domain's decider to the v0.1.1 vocabulary.
func decidedBy(p *agentotp.Permission) string { return p.DeciderKind() }

// permissionView renders p. The token, when given, is the one-time delivery
// to the owning agent; staff views add the agent and the rule.
func (s *Server) permissionView(p *agentotp.Permission, token agentotp.Secret, staff bool) permissionJSON {
	v := permissionJSON{
		ID: string(p.ID), Status: string(p.Status), Action: p.Action, Resource: p.Resource,
		Scope: p.GrantedScope, Context: p.Context, ExpiresAt: ts(p.ExpiresAt()),
		DecisionReason: p.DecisionReason, DecidedBy: decidedBy(p), DecidedAt: ts(p.DecidedAt),
		DecisionID: string(p.DecisionEventID), CreatedAt: ts(p.CreatedAt), Uses: p.Uses,
		Tool: toolView(p.Tool),
	}
	if v.Scope == nil {
		v.Scope = map[string]any{}
	}
	if token != "" {
		v.Token = token.Reveal()
	}
	switch p.Status {
	case agentotp.StatusPending:
		v.ApprovalURL = s.svc.ApprovalURL(p.ID)
		v.WaitURL = s.publicURL + "/api/v1/permissions/" + string(p.ID) + "?wait=30s"
		// v0.1.1 clients announce a pending request only when both URLs
		// are present; ours points at the Server-Sent Events stream.
		v.WebhookURL = s.publicURL + "/api/v1/permissions/" + string(p.ID) + "/events"
	case agentotp.StatusApproved, agentotp.StatusUsed:
		n := p.UsesRemaining
		v.UsesRemaining = &n
	}
	switch p.Status {
	case agentotp.StatusDenied, agentotp.StatusExpired, agentotp.StatusRevoked:
		v.Reason = p.DecisionReason
		if v.Reason == "" {
			v.Reason = "permission " + string(p.Status)
		}
	}
	if !staff {
		// The callback URL is the agent's own; its path or query may
		// carry the receiver's secrets, so approvers do not see it.
		v.CallbackURL = p.CallbackURL
		if p.Status == agentotp.StatusRevoked && p.DecidedBy == "revoked" {
			// Withdrawn before anyone decided: v0.1.1 clients know no
			// "revoked" and would wait for an approval that cannot come,
			// so the agent reads it as the refusal it is; decidedBy
			// "revoked" tells it apart (our client reports it as revoked).
			v.Status = string(agentotp.StatusDenied)
			v.Reason = "revoked before a decision"
			if p.DecisionReason != "" {
				v.Reason += ": " + p.DecisionReason
			}
			v.DecisionReason = v.Reason
		}
	}
	if staff {
		v.AgentID = string(p.AgentID)
		v.Rule = p.Decision.Rule
		v.RequestedScope = p.Scope
	}
	return v
}

type verifyBody struct {
	Token string `json:"token"`
}

type verifyJSON struct {
	Valid         bool           `json:"valid"`
	Scope         map[string]any `json:"scope,omitempty"`
	UsesRemaining *int           `json:"usesRemaining,omitempty"`
	ExpiresAt     string         `json:"expiresAt,omitempty"`
	Reason        string         `json:"reason,omitempty"`
}

type useBody struct {
	Token         string         `json:"token"`
	ActionDetails map[string]any `json:"actionDetails"`
}

type useJSON struct {
	Success       bool   `json:"success"`
	UsesRemaining int    `json:"usesRemaining"`
	Reason        string `json:"reason,omitempty"`
}

type revokeBody struct {
	Reason string `json:"reason"`
}

type decideBody struct {
	Approved           *bool          `json:"approved"`
	Reason             string         `json:"reason"`
	ScopeModifications map[string]any `json:"scopeModifications"`
}

type agentBody struct {
	Name        *string        `json:"name"`
	Description *string        `json:"description"`
	Metadata    map[string]any `json:"metadata"`
	IsActive    *bool          `json:"isActive"`
}

type agentJSON struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Description  string `json:"description"`
	APIKey       string `json:"apiKey,omitempty"`
	APIKeyPrefix string `json:"apiKeyPrefix"`
	// CallbackSecret signs the agent's decision callbacks; like the key,
	// only in the create and rotate-key responses.
	CallbackSecret string         `json:"callbackSecret,omitempty"`
	Metadata       map[string]any `json:"metadata"`
	IsActive       bool           `json:"isActive"`
	CreatedAt      string         `json:"createdAt"`
	UpdatedAt      string         `json:"updatedAt"`
}

func agentView(a *agentotp.Agent, key agentotp.Secret) agentJSON {
	v := agentJSON{ID: string(a.ID), Name: a.Name, Description: a.Description, APIKeyPrefix: a.KeyPrefix,
		Metadata: a.Metadata, IsActive: a.Active, CreatedAt: ts(a.CreatedAt), UpdatedAt: ts(a.UpdatedAt)}
	if v.Metadata == nil {
		v.Metadata = map[string]any{}
	}
	if key != "" {
		v.APIKey = key.Reveal()
	}
	return v
}

// agentWithKey renders an agent whose API key was just made, with its
// callback secret when the server has a callback key.
func (s *Server) agentWithKey(a *agentotp.Agent, key agentotp.Secret) agentJSON {
	v := agentView(a, key)
	if len(s.callbackKey) > 0 {
		v.CallbackSecret = agentotp.CallbackSecret(s.callbackKey, a).Reveal()
	}
	return v
}

type userBody struct {
	Name       *string `json:"name"`
	Role       *string `json:"role"`
	TelegramID *int64  `json:"telegramId"`
	IsActive   *bool   `json:"isActive"`
}

type userJSON struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Role         string `json:"role"`
	TelegramID   int64  `json:"telegramId,omitempty"`
	APIKey       string `json:"apiKey,omitempty"`
	APIKeyPrefix string `json:"apiKeyPrefix"`
	IsActive     bool   `json:"isActive"`
	CreatedAt    string `json:"createdAt"`
	UpdatedAt    string `json:"updatedAt"`
}

func userView(u *agentotp.User, key agentotp.Secret) userJSON {
	v := userJSON{ID: string(u.ID), Name: u.Name, Role: string(u.Role), TelegramID: u.TelegramID,
		APIKeyPrefix: u.KeyPrefix, IsActive: u.Active, CreatedAt: ts(u.CreatedAt), UpdatedAt: ts(u.UpdatedAt)}
	if key != "" {
		v.APIKey = key.Reveal()
	}
	return v
}

type tokenTerms struct {
	TTL  *int `json:"ttl,omitempty"`
	Uses *int `json:"uses,omitempty"`
}

type policyBody struct {
	AgentID       *string        `json:"agentId"`
	Name          *string        `json:"name"`
	Description   *string        `json:"description"`
	Priority      *int           `json:"priority"`
	Conditions    map[string]any `json:"conditions"`
	When          *string        `json:"when"`
	Action        *string        `json:"action"`
	ScopeTemplate map[string]any `json:"scopeTemplate"`
	Approvers     []string       `json:"approvers"`
	Quorum        *int           `json:"quorum"`
	Token         *tokenTerms    `json:"token"`
	UseWhen       *string        `json:"useWhen"`
	IsActive      *bool          `json:"isActive"`
}

type policyJSON struct {
	ID            string         `json:"id"`
	AgentID       *string        `json:"agentId"`
	Name          string         `json:"name"`
	Description   string         `json:"description,omitempty"`
	Priority      int            `json:"priority"`
	Conditions    map[string]any `json:"conditions"`
	When          string         `json:"when,omitempty"`
	Action        string         `json:"action"`
	ScopeTemplate map[string]any `json:"scopeTemplate,omitempty"`
	Approvers     []string       `json:"approvers,omitempty"`
	Quorum        int            `json:"quorum,omitempty"`
	Token         *tokenTerms    `json:"token,omitempty"`
	UseWhen       string         `json:"useWhen,omitempty"`
	IsActive      bool           `json:"isActive"`
	Source        string         `json:"source"`
	ReadOnly      bool           `json:"readOnly"`
	CreatedAt     string         `json:"createdAt,omitempty"`
	UpdatedAt     string         `json:"updatedAt,omitempty"`
}

func policyView(p *agentotp.Policy, source string) policyJSON {
	v := policyJSON{ID: string(p.ID), Name: p.Name, Description: p.Description, Priority: p.Priority,
		Conditions: p.Conditions, When: p.When, Action: p.Effect.String(), ScopeTemplate: p.ScopeTemplate,
		Approvers: p.Approvers, Quorum: p.Quorum, UseWhen: p.UseWhen, IsActive: p.Active,
		Source: source, ReadOnly: source != "api", CreatedAt: ts(p.CreatedAt), UpdatedAt: ts(p.UpdatedAt)}
	if p.AgentID != "" {
		id := string(p.AgentID)
		v.AgentID = &id
	}
	if v.Conditions == nil {
		v.Conditions = map[string]any{}
	}
	if p.TokenTTL > 0 || p.TokenUses > 0 {
		v.Token = &tokenTerms{}
		if p.TokenTTL > 0 {
			n := int(p.TokenTTL / time.Second)
			v.Token.TTL = &n
		}
		if p.TokenUses > 0 {
			n := p.TokenUses
			v.Token.Uses = &n
		}
	}
	return v
}

type auditJSON struct {
	ID                  string         `json:"id"`
	Seq                 int64          `json:"seq"`
	EventType           string         `json:"eventType"`
	ActorType           string         `json:"actorType"`
	ActorID             string         `json:"actorId,omitempty"`
	AgentID             string         `json:"agentId,omitempty"`
	PermissionRequestID string         `json:"permissionRequestId,omitempty"`
	RequestID           string         `json:"requestId,omitempty"`
	Details             map[string]any `json:"details"`
	CreatedAt           string         `json:"createdAt"`
	PrevHash            string         `json:"prevHash"`
	Hash                string         `json:"hash"`
}

// AuditView renders an audit event; the CLI's export uses it too, so the
// API and the CLI export the same lines.
func AuditView(e *agentotp.AuditEvent) any {
	d := e.Details
	if d == nil {
		d = map[string]any{}
	}
	return auditJSON{ID: string(e.ID), Seq: e.Seq, EventType: string(e.Type), ActorType: e.ActorType, ActorID: e.ActorID,
		AgentID: string(e.AgentID), PermissionRequestID: string(e.PermissionID), RequestID: e.RequestID,
		Details: d, CreatedAt: ts(e.Time), PrevHash: e.PrevHash, Hash: e.Hash}
}
