package otpclient

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/agentotp/agentotp"
)

// Admin talks to an agentotp server as a human (a "uk_" key): approvers
// decide requests; admins also manage agents, users and policies and read
// the audit trail. The CLI's remote mode uses it. It is safe for concurrent
// use.
//
// Reads and updates are retried like the agent calls; creations, key
// rotations and decisions are retried only when the server provably did
// nothing (429, no connection), so a retry never creates twice.
type Admin struct {
	t *transport
}

// NewAdmin returns an admin client for the server at baseURL.
func NewAdmin(baseURL, userKey string, opts ...Option) *Admin {
	return &Admin{t: newTransport(baseURL, userKey, opts)}
}

// ListOptions pages through a list (page from 1, limit up to 100).
type ListOptions struct {
	Page  int
	Limit int
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.Page > 0 {
		q.Set("page", strconv.Itoa(o.Page))
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	return q
}

// PageInfo is a list's position.
type PageInfo struct {
	Page       int `json:"page"`
	Limit      int `json:"limit"`
	Total      int `json:"total"`
	TotalPages int `json:"totalPages"`
}

func (a *Admin) list(ctx context.Context, path string, q url.Values, out any) (PageInfo, error) {
	var info PageInfo
	res, err := a.t.do(ctx, call{method: http.MethodGet, path: path, query: q, mode: retrySafe}, out)
	if err != nil {
		return info, err
	}
	if len(res.meta) > 0 {
		_ = json.Unmarshal(res.meta, &info)
	}
	return info, nil
}

// ---- agents ----

// Agent is an agent as the server reports it.
type Agent struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Description  string `json:"description"`
	APIKey       string `json:"apiKey,omitempty"` // only from create and rotate
	APIKeyPrefix string `json:"apiKeyPrefix"`
	// CallbackSecret signs the agent's decision callbacks (see
	// VerifyCallback); only from create and rotate, and only when the
	// server has a callback key.
	CallbackSecret string         `json:"callbackSecret,omitempty"`
	Metadata       map[string]any `json:"metadata"`
	IsActive       bool           `json:"isActive"`
	CreatedAt      time.Time      `json:"createdAt"`
	UpdatedAt      time.Time      `json:"updatedAt"`
}

// Key returns the API key returned once by create and rotate, redacted in
// print.
func (a *Agent) Key() agentotp.Secret { return agentotp.Secret(a.APIKey) }

// CallbackKey returns the callback signing secret as a Secret ("" when the
// response carried none).
func (a *Agent) CallbackKey() agentotp.Secret { return agentotp.Secret(a.CallbackSecret) }

// AgentInput creates an agent.
type AgentInput struct {
	Name        string         `json:"name"`
	Description string         `json:"description,omitempty"`
	Metadata    map[string]any `json:"metadata,omitempty"`
}

// AgentPatch changes the fields that are set.
type AgentPatch struct {
	Name        *string        `json:"name,omitempty"`
	Description *string        `json:"description,omitempty"`
	Metadata    map[string]any `json:"metadata,omitempty"`
	IsActive    *bool          `json:"isActive,omitempty"`
}

func agentPath(id string) string { return "/api/v1/agents/" + url.PathEscape(id) }

// CreateAgent creates an agent; the result carries its API key (shown once).
func (a *Admin) CreateAgent(ctx context.Context, in AgentInput) (*Agent, error) {
	var out Agent
	_, err := a.t.do(ctx, call{method: http.MethodPost, path: "/api/v1/agents", body: in, mode: retryUnsent}, &out)
	return ret(&out, err)
}

// ListAgents lists agents.
func (a *Admin) ListAgents(ctx context.Context, o ListOptions) ([]Agent, PageInfo, error) {
	var out []Agent
	info, err := a.list(ctx, "/api/v1/agents", o.query(), &out)
	return out, info, err
}

// GetAgent reads one agent.
func (a *Admin) GetAgent(ctx context.Context, id string) (*Agent, error) {
	var out Agent
	_, err := a.t.do(ctx, call{method: http.MethodGet, path: agentPath(id), mode: retrySafe}, &out)
	return ret(&out, err)
}

// UpdateAgent changes an agent; IsActive false disables it (its key stops
// working), true enables it again.
func (a *Admin) UpdateAgent(ctx context.Context, id string, patch AgentPatch) (*Agent, error) {
	var out Agent
	_, err := a.t.do(ctx, call{method: http.MethodPatch, path: agentPath(id), body: patch, mode: retrySafe}, &out)
	return ret(&out, err)
}

// DeleteAgent deletes an agent; its history stays in the audit trail.
func (a *Admin) DeleteAgent(ctx context.Context, id string) error {
	_, err := a.t.do(ctx, call{method: http.MethodDelete, path: agentPath(id), mode: retryUnsent}, nil)
	return err
}

// RotateAgentKey replaces an agent's key; the result carries the new one.
func (a *Admin) RotateAgentKey(ctx context.Context, id string) (*Agent, error) {
	var out Agent
	_, err := a.t.do(ctx, call{method: http.MethodPost, path: agentPath(id) + "/rotate-key", mode: retryUnsent}, &out)
	return ret(&out, err)
}

// ---- users ----

// User is an approver or admin.
type User struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Role         string    `json:"role"`
	TelegramID   int64     `json:"telegramId,omitempty"`
	APIKey       string    `json:"apiKey,omitempty"` // only from create and rotate
	APIKeyPrefix string    `json:"apiKeyPrefix"`
	IsActive     bool      `json:"isActive"`
	CreatedAt    time.Time `json:"createdAt"`
	UpdatedAt    time.Time `json:"updatedAt"`
}

// Key returns the API key returned once by create and rotate.
func (u *User) Key() agentotp.Secret { return agentotp.Secret(u.APIKey) }

// UserInput creates a user; Role is "approver" or "admin".
type UserInput struct {
	Name       string `json:"name"`
	Role       string `json:"role"`
	TelegramID int64  `json:"telegramId,omitempty"`
}

// UserPatch changes the fields that are set.
type UserPatch struct {
	Name       *string `json:"name,omitempty"`
	Role       *string `json:"role,omitempty"`
	TelegramID *int64  `json:"telegramId,omitempty"`
	IsActive   *bool   `json:"isActive,omitempty"`
}

func userPath(id string) string { return "/api/v1/users/" + url.PathEscape(id) }

// CreateUser creates a user; the result carries the user's key (shown once).
func (a *Admin) CreateUser(ctx context.Context, in UserInput) (*User, error) {
	var out User
	_, err := a.t.do(ctx, call{method: http.MethodPost, path: "/api/v1/users", body: in, mode: retryUnsent}, &out)
	return ret(&out, err)
}

// ListUsers lists users.
func (a *Admin) ListUsers(ctx context.Context, o ListOptions) ([]User, PageInfo, error) {
	var out []User
	info, err := a.list(ctx, "/api/v1/users", o.query(), &out)
	return out, info, err
}

// GetUser reads one user.
func (a *Admin) GetUser(ctx context.Context, id string) (*User, error) {
	var out User
	_, err := a.t.do(ctx, call{method: http.MethodGet, path: userPath(id), mode: retrySafe}, &out)
	return ret(&out, err)
}

// UpdateUser changes a user.
func (a *Admin) UpdateUser(ctx context.Context, id string, patch UserPatch) (*User, error) {
	var out User
	_, err := a.t.do(ctx, call{method: http.MethodPatch, path: userPath(id), body: patch, mode: retrySafe}, &out)
	return ret(&out, err)
}

// DeleteUser deletes a user.
func (a *Admin) DeleteUser(ctx context.Context, id string) error {
	_, err := a.t.do(ctx, call{method: http.MethodDelete, path: userPath(id), mode: retryUnsent}, nil)
	return err
}

// RotateUserKey replaces a user's key; the result carries the new one.
func (a *Admin) RotateUserKey(ctx context.Context, id string) (*User, error) {
	var out User
	_, err := a.t.do(ctx, call{method: http.MethodPost, path: userPath(id) + "/rotate-key", mode: retryUnsent}, &out)
	return ret(&out, err)
}

// ---- policies ----

// TokenTerms caps what a policy's approvals grant.
type TokenTerms struct {
	TTL  *int `json:"ttl,omitempty"` // seconds
	Uses *int `json:"uses,omitempty"`
}

// Policy is a rule as the server reports it. File rules are read-only.
type Policy struct {
	ID            string         `json:"id"`
	AgentID       *string        `json:"agentId"`
	Name          string         `json:"name"`
	Description   string         `json:"description,omitempty"`
	Priority      int            `json:"priority"`
	Conditions    map[string]any `json:"conditions"`
	When          string         `json:"when,omitempty"`
	Action        string         `json:"action"` // auto_approve, require_approval, deny
	ScopeTemplate map[string]any `json:"scopeTemplate,omitempty"`
	Approvers     []string       `json:"approvers,omitempty"`
	Quorum        int            `json:"quorum,omitempty"`
	Token         *TokenTerms    `json:"token,omitempty"`
	UseWhen       string         `json:"useWhen,omitempty"`
	IsActive      bool           `json:"isActive"`
	Source        string         `json:"source"` // "api" or "file"
	ReadOnly      bool           `json:"readOnly"`
	CreatedAt     string         `json:"createdAt,omitempty"`
	UpdatedAt     string         `json:"updatedAt,omitempty"`
}

// PolicyInput creates (Action required) or changes (fields set) a policy.
type PolicyInput struct {
	AgentID       *string        `json:"agentId,omitempty"`
	Name          *string        `json:"name,omitempty"`
	Description   *string        `json:"description,omitempty"`
	Priority      *int           `json:"priority,omitempty"`
	Conditions    map[string]any `json:"conditions,omitempty"`
	When          *string        `json:"when,omitempty"`
	Action        *string        `json:"action,omitempty"`
	ScopeTemplate map[string]any `json:"scopeTemplate,omitempty"`
	Approvers     []string       `json:"approvers,omitempty"`
	Quorum        *int           `json:"quorum,omitempty"`
	Token         *TokenTerms    `json:"token,omitempty"`
	UseWhen       *string        `json:"useWhen,omitempty"`
	IsActive      *bool          `json:"isActive,omitempty"`
}

func policyPath(id string) string { return "/api/v1/policies/" + url.PathEscape(id) }

// CreatePolicy adds an API-managed policy.
func (a *Admin) CreatePolicy(ctx context.Context, in PolicyInput) (*Policy, error) {
	var out Policy
	_, err := a.t.do(ctx, call{method: http.MethodPost, path: "/api/v1/policies", body: in, mode: retryUnsent}, &out)
	return ret(&out, err)
}

// ListPolicies lists API-managed policies, then (on page 1) file rules.
func (a *Admin) ListPolicies(ctx context.Context, o ListOptions) ([]Policy, PageInfo, error) {
	var out []Policy
	info, err := a.list(ctx, "/api/v1/policies", o.query(), &out)
	return out, info, err
}

// GetPolicy reads one policy.
func (a *Admin) GetPolicy(ctx context.Context, id string) (*Policy, error) {
	var out Policy
	_, err := a.t.do(ctx, call{method: http.MethodGet, path: policyPath(id), mode: retrySafe}, &out)
	return ret(&out, err)
}

// UpdatePolicy changes the fields set in in (AgentID cannot change).
func (a *Admin) UpdatePolicy(ctx context.Context, id string, in PolicyInput) (*Policy, error) {
	var out Policy
	_, err := a.t.do(ctx, call{method: http.MethodPatch, path: policyPath(id), body: in, mode: retrySafe}, &out)
	return ret(&out, err)
}

// DeletePolicy deletes a policy.
func (a *Admin) DeletePolicy(ctx context.Context, id string) error {
	_, err := a.t.do(ctx, call{method: http.MethodDelete, path: policyPath(id), mode: retryUnsent}, nil)
	return err
}

// ---- decisions ----

// Decision is a human's answer to a pending request.
type Decision struct {
	Approved bool   `json:"approved"`
	Reason   string `json:"reason,omitempty"`
	// ScopeModifications narrow the granted scope (never widen it).
	ScopeModifications map[string]any `json:"scopeModifications,omitempty"`
}

// Decide approves or denies a pending request. The answer never carries
// the token: only the requesting agent receives it. A request that is no
// longer pending is ErrConflict. Decisions are not retried unless the
// server provably did not see them.
func (a *Admin) Decide(ctx context.Context, id string, d Decision) (*Permission, error) {
	var w permissionWire
	_, err := a.t.do(ctx, call{method: http.MethodPost, path: "/api/v1/permissions/" + url.PathEscape(id) + "/decide",
		body: d, mode: retryUnsent}, &w)
	if err != nil {
		return nil, err
	}
	return w.permission(), nil
}

// Approve approves a pending request.
func (a *Admin) Approve(ctx context.Context, id, reason string) (*Permission, error) {
	return a.Decide(ctx, id, Decision{Approved: true, Reason: reason})
}

// Deny denies a pending request; the agent sees reason.
func (a *Admin) Deny(ctx context.Context, id, reason string) (*Permission, error) {
	return a.Decide(ctx, id, Decision{Approved: false, Reason: reason})
}

// Approvals lists permissions in a status (default "pending"): the queue
// waiting for humans.
func (a *Admin) Approvals(ctx context.Context, status agentotp.Status, o ListOptions) ([]*Permission, PageInfo, error) {
	q := o.query()
	if status != "" {
		q.Set("status", string(status))
	}
	var ws []permissionWire
	info, err := a.list(ctx, "/api/v1/approvals", q, &ws)
	if err != nil {
		return nil, info, err
	}
	out := make([]*Permission, 0, len(ws))
	for i := range ws {
		out = append(out, ws[i].permission())
	}
	return out, info, nil
}

// GetPermission reads any permission (staff view: agent, rule, requested
// scope; never the token).
func (a *Admin) GetPermission(ctx context.Context, id string) (*Permission, error) {
	var w permissionWire
	if _, err := a.t.do(ctx, call{method: http.MethodGet, path: "/api/v1/permissions/" + url.PathEscape(id), mode: retrySafe}, &w); err != nil {
		return nil, err
	}
	return w.permission(), nil
}

// Revoke ends a pending request or a live token (admins only).
func (a *Admin) Revoke(ctx context.Context, id, reason string) (*Permission, error) {
	return revoke(ctx, a.t, id, reason)
}

// ---- audit ----

// AuditEvent is one link of the hash-chained audit trail.
type AuditEvent struct {
	ID                  string         `json:"id"`
	Seq                 int64          `json:"seq"`
	EventType           string         `json:"eventType"`
	ActorType           string         `json:"actorType"`
	ActorID             string         `json:"actorId,omitempty"`
	AgentID             string         `json:"agentId,omitempty"`
	PermissionRequestID string         `json:"permissionRequestId,omitempty"`
	RequestID           string         `json:"requestId,omitempty"`
	Details             map[string]any `json:"details"`
	CreatedAt           time.Time      `json:"createdAt"`
	PrevHash            string         `json:"prevHash"`
	Hash                string         `json:"hash"`
}

// AuditQuery filters the audit list, newest first. Cursor continues from
// a previous page's NextCursor.
type AuditQuery struct {
	AgentID      string
	PermissionID string
	EventType    string
	Start, End   time.Time
	Limit        int // 1–1000, default 50
	Cursor       string
}

// AuditPage is one page of events.
type AuditPage struct {
	Events     []AuditEvent
	HasMore    bool
	NextCursor string
}

func (a *Admin) auditPage(ctx context.Context, path string, q url.Values) (*AuditPage, error) {
	var events []AuditEvent
	res, err := a.t.do(ctx, call{method: http.MethodGet, path: path, query: q, mode: retrySafe}, &events)
	if err != nil {
		return nil, err
	}
	var meta struct {
		HasMore    bool   `json:"hasMore"`
		NextCursor string `json:"nextCursor"`
	}
	if len(res.meta) > 0 {
		_ = json.Unmarshal(res.meta, &meta)
	}
	return &AuditPage{Events: events, HasMore: meta.HasMore, NextCursor: meta.NextCursor}, nil
}

func (q AuditQuery) values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set("agentId", q.AgentID)
	set("permissionRequestId", q.PermissionID)
	set("eventType", q.EventType)
	set("cursor", q.Cursor)
	if !q.Start.IsZero() {
		v.Set("startDate", q.Start.UTC().Format(time.RFC3339Nano))
	}
	if !q.End.IsZero() {
		v.Set("endDate", q.End.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// Audit lists events matching q, newest first.
func (a *Admin) Audit(ctx context.Context, q AuditQuery) (*AuditPage, error) {
	return a.auditPage(ctx, "/api/v1/audit", q.values())
}

// AuditPermission lists one permission's events, oldest first.
func (a *Admin) AuditPermission(ctx context.Context, id string) (*AuditPage, error) {
	return a.auditPage(ctx, "/api/v1/audit/permissions/"+url.PathEscape(id), nil)
}

// AuditAgent lists one agent's events, newest first.
func (a *Admin) AuditAgent(ctx context.Context, id string, q AuditQuery) (*AuditPage, error) {
	q.AgentID = ""
	return a.auditPage(ctx, "/api/v1/audit/agents/"+url.PathEscape(id), q.values())
}

// AuditStats counts events by type over the last 30 days.
type AuditStats struct {
	Period      string           `json:"period"`
	Total       int64            `json:"total"`
	ByEventType map[string]int64 `json:"byEventType"`
}

// AuditStats reads the event counts.
func (a *Admin) AuditStats(ctx context.Context) (*AuditStats, error) {
	var out AuditStats
	_, err := a.t.do(ctx, call{method: http.MethodGet, path: "/api/v1/audit/stats", mode: retrySafe}, &out)
	return ret(&out, err)
}

// AuditReport is the result of checking the hash chain.
type AuditReport struct {
	OK       bool   `json:"ok"`
	Checked  int64  `json:"checked"`
	LastSeq  int64  `json:"lastSeq"`
	LastHash string `json:"lastHash"`
	BadSeq   int64  `json:"badSeq,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// VerifyAudit checks the whole hash chain on the server.
func (a *Admin) VerifyAudit(ctx context.Context) (*AuditReport, error) {
	var out AuditReport
	_, err := a.t.do(ctx, call{method: http.MethodGet, path: "/api/v1/audit/verify", mode: retrySafe}, &out)
	return ret(&out, err)
}

// ExportAudit streams the whole trail, oldest first, calling fn for each
// event. The stream is JSON lines; a stream cut short by the server shows
// as fewer events (compare with VerifyAudit's Checked).
func (a *Admin) ExportAudit(ctx context.Context, fn func(AuditEvent) error) error {
	_, err := a.t.send(ctx, call{method: http.MethodGet, path: "/api/v1/audit/export", query: url.Values{"format": {"jsonl"}},
		mode: retryUnsent, extra: 10 * time.Minute}, func(resp *http.Response) (*result, error) {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			if len(sc.Bytes()) == 0 {
				continue
			}
			var e AuditEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				return nil, fmt.Errorf("decode audit line: %w", err)
			}
			if err := fn(e); err != nil {
				return nil, &stopError{err}
			}
		}
		return &result{status: resp.StatusCode}, sc.Err()
	})
	if se, ok := asStop(err); ok {
		return se
	}
	return err
}

// ExportAuditTo copies the JSON-lines export to w unchanged.
func (a *Admin) ExportAuditTo(ctx context.Context, w io.Writer) error {
	_, err := a.t.send(ctx, call{method: http.MethodGet, path: "/api/v1/audit/export", query: url.Values{"format": {"jsonl"}},
		mode: retryUnsent, extra: 10 * time.Minute}, func(resp *http.Response) (*result, error) {
		_, err := io.Copy(w, resp.Body)
		return &result{status: resp.StatusCode}, err
	})
	return err
}

// stopError carries fn's own error out of the export unchanged.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

func asStop(err error) (error, bool) {
	var se *stopError
	if errors.As(err, &se) {
		return se.err, true
	}
	return nil, false
}

func ret[T any](v *T, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return v, nil
}
