package otpclient

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/agentotp/agentotp"
)

// Client talks to an agentotp server as one agent (an "ak_" key). It is
// safe for concurrent use.
//
// The client keeps every token it receives until the permission is spent,
// revoked or expired: the server hands a human-approved token out exactly
// once, so a later GetPermission or WaitForDecision of the same id returns
// the token this client already holds.
type Client struct {
	t *transport

	mu     sync.Mutex
	tokens map[string]heldToken     // permission id → token received
	asked  map[string]requestRecord // permission id → how it was asked, for re-issue
	links  map[string]string        // permission id → approval page, while pending
}

type heldToken struct {
	token   agentotp.Secret
	expires time.Time
}

type requestRecord struct {
	body    requestBody
	expires time.Time
}

// maxHeld bounds the tokens and requests a client remembers.
const maxHeld = 10000

// New returns a client for the server at baseURL (for example
// http://127.0.0.1:8787, without /api) authenticating with an agent key.
func New(baseURL, apiKey string, opts ...Option) *Client {
	return &Client{t: newTransport(baseURL, apiKey, opts), tokens: map[string]heldToken{}, asked: map[string]requestRecord{}, links: map[string]string{}}
}

// Request is what an agent asks for. Zero values take the server's
// defaults (token TTL 300 s, approval window 300 s, one use).
type Request struct {
	Action   string
	Resource string
	Scope    map[string]any
	Context  map[string]any
	// TTL is the token's lifetime once approved (30 s – 1 h).
	TTL time.Duration
	// ApprovalTTL is how long a human may take (30 s – 24 h).
	ApprovalTTL time.Duration
	// Uses is how many times the token may be spent (1 – 1000).
	Uses int
	// IdempotencyKey makes retries safe: the same key returns the same
	// permission. The client generates one when it is empty.
	IdempotencyKey string
	// CallbackURL, when set, receives the outcome: the server POSTs the
	// status (never the token), signed with the agent's callback secret,
	// when the request is decided, expires or is revoked. Its host must be
	// on the server's callback allow-list. See VerifyCallback.
	CallbackURL string
	// Tool names the MCP tool call the permission is for (gateways set
	// it): Server, Name, Annotations and Args are sent; the server hashes
	// Args itself, so ArgsHash is not sent.
	Tool *agentotp.ToolCall
}

// Permission is a permission request as the server reports it.
type Permission struct {
	ID     string
	Status agentotp.Status
	// Token is set when approved and this client holds the token. It
	// prints as [redacted]; Token.Reveal() gives the text.
	Token    agentotp.Secret
	Action   string
	Resource string
	// Scope is the granted scope (the request's, narrowed by policy and
	// approver).
	Scope map[string]any
	// RequestedScope and AgentID are filled for approvers and admins only.
	RequestedScope map[string]any
	AgentID        string
	Context        map[string]any
	// ExpiresAt ends the approval window while pending, the token's
	// life once approved.
	ExpiresAt time.Time
	// ApprovalURL is the console page where a human decides (pending only).
	ApprovalURL string
	// WaitURL long-polls this permission (pending only).
	WaitURL string
	// CallbackURL is where the server sends the outcome (own agent only).
	CallbackURL string
	// Tool is the MCP tool call the permission was asked for, nil for
	// other requests: the arguments by their ArgsHash only (Args is nil).
	Tool *agentotp.ToolCall
	// Reason explains a denial, expiry or revocation; for an approval it
	// is the decider's reason.
	Reason string
	// DecisionID is the audit event recording the policy decision.
	DecisionID    string
	DecidedBy     string // "auto", "user", "timeout", "revoked"
	DecidedAt     time.Time
	Rule          string // the matching policy rule (staff only)
	Uses          int
	UsesRemaining int
	CreatedAt     time.Time

	// spent is the outcome of a use asked together with the request
	// (AuthorizeAndSpend); nil when none was attempted.
	spent *agentotp.UseResult
}

// Approved reports whether the permission is approved and its token held.
func (p *Permission) Approved() bool { return p.Status == agentotp.StatusApproved && p.Token != "" }

type requestBody struct {
	Action         string         `json:"action"`
	Resource       string         `json:"resource,omitempty"`
	Scope          map[string]any `json:"scope,omitempty"`
	Context        map[string]any `json:"context,omitempty"`
	TTL            *int           `json:"ttl,omitempty"`
	ApprovalTTL    *int           `json:"approvalTtl,omitempty"`
	Uses           *int           `json:"uses,omitempty"`
	IdempotencyKey string         `json:"idempotencyKey,omitempty"`
	CallbackURL    string         `json:"callbackUrl,omitempty"`
	Tool           *toolBody      `json:"tool,omitempty"`
	Use            *useRequest    `json:"use,omitempty"`
}

// useRequest asks the server to spend the first use in the request's own
// transaction when the policy approves at once.
type useRequest struct {
	ActionDetails map[string]any `json:"actionDetails"`
}

type toolBody struct {
	Server      string         `json:"server,omitempty"`
	Name        string         `json:"name"`
	Annotations map[string]any `json:"annotations,omitempty"`
	Args        map[string]any `json:"args,omitempty"`
}

func toolRequest(t *agentotp.ToolCall) *toolBody {
	if t == nil {
		return nil
	}
	return &toolBody{Server: t.Server, Name: t.Name, Annotations: t.Annotations, Args: t.Args}
}

type toolWire struct {
	Server      string         `json:"server"`
	Name        string         `json:"name"`
	Annotations map[string]any `json:"annotations"`
	ArgsSHA256  string         `json:"argsSha256"`
}

func (w *toolWire) tool() *agentotp.ToolCall {
	if w == nil {
		return nil
	}
	return &agentotp.ToolCall{Server: w.Server, Name: w.Name, Annotations: w.Annotations, ArgsHash: w.ArgsSHA256}
}

type permissionWire struct {
	ID             string         `json:"id"`
	Status         string         `json:"status"`
	Token          string         `json:"token"`
	Action         string         `json:"action"`
	Resource       string         `json:"resource"`
	Scope          map[string]any `json:"scope"`
	RequestedScope map[string]any `json:"requestedScope"`
	Context        map[string]any `json:"context"`
	ExpiresAt      string         `json:"expiresAt"`
	ApprovalURL    string         `json:"approvalUrl"`
	WaitURL        string         `json:"waitUrl"`
	CallbackURL    string         `json:"callbackUrl"`
	Tool           *toolWire      `json:"tool"`
	Reason         string         `json:"reason"`
	DecisionReason string         `json:"decisionReason"`
	DecidedBy      string         `json:"decidedBy"`
	DecidedAt      string         `json:"decidedAt"`
	DecisionID     string         `json:"decisionId"`
	Rule           string         `json:"rule"`
	Uses           int            `json:"uses"`
	UsesRemaining  *int           `json:"usesRemaining"`
	AgentID        string         `json:"agentId"`
	CreatedAt      string         `json:"createdAt"`
	Use            *useWire       `json:"use"`
}

type useWire struct {
	Success       bool   `json:"success"`
	UsesRemaining int    `json:"usesRemaining"`
	Reason        string `json:"reason"`
}

func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

func (w *permissionWire) permission() *Permission {
	p := &Permission{
		ID: w.ID, Status: agentotp.Status(w.Status), Token: agentotp.Secret(w.Token), Action: w.Action,
		Resource: w.Resource, Scope: w.Scope, RequestedScope: w.RequestedScope, Context: w.Context,
		ExpiresAt: parseTime(w.ExpiresAt), ApprovalURL: w.ApprovalURL, WaitURL: w.WaitURL, CallbackURL: w.CallbackURL, Reason: w.Reason,
		DecisionID: w.DecisionID, DecidedBy: w.DecidedBy, DecidedAt: parseTime(w.DecidedAt), Rule: w.Rule,
		Uses: w.Uses, AgentID: w.AgentID, CreatedAt: parseTime(w.CreatedAt), Tool: w.Tool.tool(),
	}
	if p.Reason == "" {
		p.Reason = w.DecisionReason
	}
	if p.Status == agentotp.StatusDenied && p.DecidedBy == "revoked" {
		// The server shows a request withdrawn before any decision as a
		// refusal to v0.1.1 clients; this client knows it was revoked.
		p.Status = agentotp.StatusRevoked
	}
	if w.UsesRemaining != nil {
		p.UsesRemaining = *w.UsesRemaining
	}
	if w.Use != nil {
		p.spent = &agentotp.UseResult{Success: w.Use.Success, UsesRemaining: w.Use.UsesRemaining, Reason: w.Use.Reason}
	}
	if p.Scope == nil {
		p.Scope = map[string]any{}
	}
	return p
}

func seconds(d time.Duration) *int {
	if d <= 0 {
		return nil
	}
	n := int((d + time.Second - 1) / time.Second)
	return &n
}

func positive(n int) *int {
	if n <= 0 {
		return nil
	}
	return &n
}

// RequestOption tunes RequestPermission and Do.
type RequestOption func(*requestOptions)

type requestOptions struct {
	wait      bool
	waitLimit time.Duration
	onPending func(*Permission)
	details   map[string]any
}

// Wait makes RequestPermission wait for a decision when the request is
// pending, for at most limit (0: until the context ends). Waiting uses the
// server's long-poll, never fixed-interval polling. Do always waits.
func Wait(limit time.Duration) RequestOption {
	return func(o *requestOptions) { o.wait, o.waitLimit = true, limit }
}

// OnPending is called once, before waiting, when the request needs a
// human: show p.ApprovalURL to whoever should approve.
func OnPending(fn func(p *Permission)) RequestOption {
	return func(o *requestOptions) { o.onPending = fn }
}

// UseDetails are the actionDetails Do sends when it spends the token; the
// server checks them against the granted scope.
func UseDetails(details map[string]any) RequestOption {
	return func(o *requestOptions) { o.details = details }
}

func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "otpc-" + hex.EncodeToString(b[:])
}

// RequestPermission asks for a permission.
//
//   - Approved at once (policy): the permission with its Token, nil error.
//   - Denied: the permission and an error matching ErrDenied (Reason says why).
//   - Pending, without Wait: the pending permission (ApprovalURL, WaitURL), nil error.
//   - Pending, with Wait: OnPending runs once, then the client long-polls
//     until a decision (approved: token; denied: ErrDenied; nobody answered:
//     ErrExpired), the wait limit (ErrPending) or the context's end
//     (ErrPending wrapping the context error).
//
// Whenever the error is a decision (see IsDecision) the permission is
// returned too. The request carries an idempotency key (generated unless
// set), so retries after 429, 5xx or network errors never create a second
// permission, and a token lost with a broken response is re-issued.
func (c *Client) RequestPermission(ctx context.Context, req Request, opts ...RequestOption) (*Permission, error) {
	var o requestOptions
	for _, f := range opts {
		f(&o)
	}
	return c.ask(ctx, req.body(), o)
}

func (req Request) body() requestBody {
	return requestBody{
		Action: req.Action, Resource: req.Resource, Scope: req.Scope, Context: req.Context,
		TTL: seconds(req.TTL), ApprovalTTL: seconds(req.ApprovalTTL), Uses: positive(req.Uses),
		IdempotencyKey: req.IdempotencyKey, CallbackURL: req.CallbackURL, Tool: toolRequest(req.Tool),
	}
}

// ask posts a request and follows its answer as RequestPermission
// documents.
func (c *Client) ask(ctx context.Context, body requestBody, o requestOptions) (*Permission, error) {
	if body.IdempotencyKey == "" {
		body.IdempotencyKey = newIdempotencyKey()
	}
	p, err := c.request(ctx, body)
	if err != nil {
		return nil, err
	}
	if p.spent != nil {
		return p, nil // asked and spent at once (AuthorizeAndSpend)
	}
	switch p.Status {
	case agentotp.StatusApproved:
		if p.Token == "" {
			// A replay whose token was delivered elsewhere, or a human
			// approval not collected yet: collect it.
			return c.collect(ctx, p)
		}
		return p, nil
	case agentotp.StatusPending:
		if !o.wait {
			return p, nil
		}
		if o.onPending != nil {
			o.onPending(p)
		}
		if o.waitLimit > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, o.waitLimit)
			defer cancel()
		}
		return c.waitFor(ctx, p.ID, p)
	}
	return p, decisionError(p)
}

// request posts body and remembers it while the permission may still
// deliver a token.
func (c *Client) request(ctx context.Context, body requestBody) (*Permission, error) {
	var w permissionWire
	_, err := c.t.do(ctx, call{
		method: http.MethodPost, path: "/api/v1/permissions/request", body: body, mode: retrySafe,
		header: http.Header{"Idempotency-Key": {body.IdempotencyKey}},
	}, &w)
	if err != nil {
		return nil, err
	}
	p := w.permission()
	c.remember(p, &body)
	return p, nil
}

// remember keeps the token a response carried, fills p.Token from what the
// client holds, and forgets both once the permission is finished.
func (c *Client) remember(p *Permission, body *requestBody) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if len(c.tokens) >= maxHeld || len(c.asked) >= maxHeld {
		for id, h := range c.tokens {
			if now.After(h.expires) {
				delete(c.tokens, id)
			}
		}
		for id, r := range c.asked {
			if now.After(r.expires) {
				delete(c.asked, id)
			}
		}
	}
	if p.Status != agentotp.StatusPending {
		delete(c.links, p.ID)
	} else if p.ApprovalURL != "" && len(c.links) < maxHeld {
		c.links[p.ID] = p.ApprovalURL
	}
	if p.Status.Terminal() {
		delete(c.tokens, p.ID)
		delete(c.asked, p.ID)
		return
	}
	if body != nil && len(c.asked) < maxHeld {
		// Kept until the token is spent: a retry of the same key can
		// re-issue a token lost in transit while no use was made.
		c.asked[p.ID] = requestRecord{body: *body, expires: now.Add(25 * time.Hour)}
	}
	if p.Token != "" {
		if len(c.tokens) < maxHeld {
			c.tokens[p.ID] = heldToken{token: p.Token, expires: p.ExpiresAt}
		}
		return
	}
	if h, ok := c.tokens[p.ID]; ok && p.Status == agentotp.StatusApproved {
		p.Token = h.token
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.tokens, id)
	delete(c.asked, id)
	delete(c.links, id)
	c.mu.Unlock()
}

// collect obtains the token of an approved permission whose response did not
// carry it: first by reading the permission (the server delivers a
// human-approved token on the agent's first read), then — if the token went
// out in a response this client never got — by replaying the original
// request's idempotency key, which makes the server re-issue an unused
// token.
func (c *Client) collect(ctx context.Context, p *Permission) (*Permission, error) {
	if p.Token != "" {
		return p, nil
	}
	got, err := c.get(ctx, p.ID, 0)
	if err != nil {
		return nil, err
	}
	if got.Status != agentotp.StatusApproved || got.Token != "" {
		return got, decisionError(got)
	}
	c.mu.Lock()
	rec, ok := c.asked[p.ID]
	c.mu.Unlock()
	if ok {
		again, err := c.request(ctx, rec.body)
		if err != nil {
			return nil, err
		}
		if again.ID == p.ID && again.Token != "" {
			return again, nil
		}
		got = again
	}
	if got.Status != agentotp.StatusApproved {
		return got, decisionError(got)
	}
	return got, &Error{Code: CodeTokenUnavailable, PermissionID: p.ID,
		Message: "approved, but the token was delivered in a response this client did not receive and cannot be re-issued"}
}

// GetPermission reads a permission once, without waiting. For the owning
// agent, the first read after a human approval carries the token; the
// client keeps it, so later reads return it too while it is live.
func (c *Client) GetPermission(ctx context.Context, id string) (*Permission, error) {
	return c.get(ctx, id, 0)
}

func (c *Client) get(ctx context.Context, id string, wait time.Duration) (*Permission, error) {
	cl := call{method: http.MethodGet, path: "/api/v1/permissions/" + url.PathEscape(id), mode: retrySafe}
	if wait > 0 {
		cl.query = url.Values{"wait": {fmt.Sprintf("%ds", int(wait/time.Second))}}
		cl.extra = wait
	}
	var w permissionWire
	if _, err := c.t.do(ctx, cl, &w); err != nil {
		return nil, err
	}
	p := w.permission()
	c.remember(p, nil)
	return p, nil
}

// WaitForDecision long-polls the permission until it is decided or ctx
// ends. Each poll lasts up to 55 s (the server caps them at 60 s) and never
// beyond the context's deadline or much past the permission's expiry.
//
// Approved: the permission with its token, nil error. Denied, expired,
// revoked: the permission and ErrDenied, ErrExpired or ErrRevoked. Context
// done first: the last state seen and an error matching ErrPending and the
// context's error.
func (c *Client) WaitForDecision(ctx context.Context, id string) (*Permission, error) {
	return c.waitFor(ctx, id, nil)
}

func (c *Client) waitFor(ctx context.Context, id string, last *Permission) (*Permission, error) {
	for {
		wait := maxPoll
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)-100*time.Millisecond)
		}
		if last != nil && !last.ExpiresAt.IsZero() {
			// The server notices expiry itself; stop asking soon after.
			wait = min(wait, time.Until(last.ExpiresAt)+2*time.Second)
		}
		wait = max(wait, time.Second)
		p, err := c.get(ctx, id, wait)
		if err != nil {
			if ctx.Err() != nil {
				return last, pendingError(id, ctx)
			}
			return last, err
		}
		last = p
		switch p.Status {
		case agentotp.StatusPending:
			if ctx.Err() != nil {
				return p, pendingError(id, ctx)
			}
			c.t.log.DebugContext(ctx, "agentotp: still pending", "permission", id)
			continue
		case agentotp.StatusApproved:
			if p.Token == "" {
				return c.collect(ctx, p)
			}
			return p, nil
		}
		return p, decisionError(p)
	}
}

func pendingError(id string, ctx context.Context) error {
	return &Error{Code: CodePending, PermissionID: id, Message: "still pending: no decision yet", Err: context.Cause(ctx)}
}

// Verification answers Verify.
type Verification struct {
	Valid         bool
	Scope         map[string]any
	UsesRemaining int
	ExpiresAt     time.Time
	// Reason says why the token is not valid.
	Reason string
}

// Verify reports whether token is currently good for the permission. It
// never spends a use.
func (c *Client) Verify(ctx context.Context, id string, token agentotp.Secret) (*Verification, error) {
	var w struct {
		Valid         bool           `json:"valid"`
		Scope         map[string]any `json:"scope"`
		UsesRemaining *int           `json:"usesRemaining"`
		ExpiresAt     string         `json:"expiresAt"`
		Reason        string         `json:"reason"`
	}
	_, err := c.t.do(ctx, call{method: http.MethodPost, path: "/api/v1/permissions/" + url.PathEscape(id) + "/verify",
		body: map[string]string{"token": token.Reveal()}, mode: retrySafe}, &w)
	if err != nil {
		return nil, err
	}
	v := &Verification{Valid: w.Valid, Scope: w.Scope, ExpiresAt: parseTime(w.ExpiresAt), Reason: w.Reason}
	if w.UsesRemaining != nil {
		v.UsesRemaining = *w.UsesRemaining
	}
	return v, nil
}

// UseResult answers a successful Use.
type UseResult struct {
	UsesRemaining int
}

// Use spends one use of the token, sending details as actionDetails (the
// server checks them against the granted scope). A refusal — used up,
// expired, revoked, wrong token, outside the scope — is an error matching
// ErrUseRefused (and ErrExpired or ErrRevoked when that is the reason)
// with Reason set; nothing was spent.
//
// Use is retried only when the server provably did not act (429, or no
// connection). If the outcome is unknown (a 5xx or a connection lost after
// sending) the error says so and nothing is repeated: Verify tells whether
// the use happened.
func (c *Client) Use(ctx context.Context, id string, token agentotp.Secret, details map[string]any) (*UseResult, error) {
	var w struct {
		Success       bool   `json:"success"`
		UsesRemaining int    `json:"usesRemaining"`
		Reason        string `json:"reason"`
	}
	body := map[string]any{"token": token.Reveal()}
	if details != nil {
		body["actionDetails"] = details
	}
	res, err := c.t.do(ctx, call{method: http.MethodPost, path: "/api/v1/permissions/" + url.PathEscape(id) + "/use",
		body: body, mode: retryUnsent}, &w)
	if err != nil {
		return nil, err
	}
	if !w.Success {
		return nil, &Error{Code: CodeUseRefused, Status: res.status, PermissionID: id, Message: "use refused",
			Reason: w.Reason, RequestID: res.requestID}
	}
	if w.UsesRemaining == 0 {
		c.forget(id)
	}
	return &UseResult{UsesRemaining: w.UsesRemaining}, nil
}

// Revoke ends a pending request or a live token. Revoking a permission that
// is already revoked (a retry whose first answer was lost) is not an error.
func (c *Client) Revoke(ctx context.Context, id, reason string) (*Permission, error) {
	p, err := revoke(ctx, c.t, id, reason)
	if err == nil || errors.Is(err, ErrConflict) {
		c.forget(id)
	}
	if errors.Is(err, ErrConflict) {
		// Already revoked by an earlier attempt? Then this succeeded.
		if cur, gerr := c.GetPermission(ctx, id); gerr == nil && cur.Status == agentotp.StatusRevoked {
			return cur, nil
		}
	}
	return p, err
}

func revoke(ctx context.Context, t *transport, id, reason string) (*Permission, error) {
	var body any = struct{}{}
	if reason != "" {
		body = map[string]string{"reason": reason}
	}
	var w permissionWire
	if _, err := t.do(ctx, call{method: http.MethodPost, path: "/api/v1/permissions/" + url.PathEscape(id) + "/revoke",
		body: body, mode: retrySafe}, &w); err != nil {
		return nil, err
	}
	return w.permission(), nil
}

// Do runs fn under a fresh permission: it requests req, waits for the
// decision (bounded by ctx), spends one use of the token (with the
// UseDetails option as actionDetails), and only then runs fn — at most
// once. A failed fn does not give the use back. Do returns fn's error
// unchanged; a denial, expiry or refused use is returned as an *Error and
// fn does not run.
func (c *Client) Do(ctx context.Context, req Request, fn func(ctx context.Context, token agentotp.Secret) error, opts ...RequestOption) error {
	var o requestOptions
	for _, f := range opts {
		f(&o)
	}
	p, err := c.RequestPermission(ctx, req, append([]RequestOption{Wait(0)}, opts...)...)
	if err != nil {
		return err
	}
	if p.Status != agentotp.StatusApproved || p.Token == "" {
		return &Error{Code: CodeTokenUnavailable, PermissionID: p.ID, Message: "not approved: " + string(p.Status)}
	}
	if _, err := c.Use(ctx, p.ID, p.Token, o.details); err != nil {
		return err
	}
	return fn(ctx, p.Token)
}
