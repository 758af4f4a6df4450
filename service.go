package agentotp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"sync/atomic"
	"time"
)

// Options configures a Service. Zero values pick safe defaults.
type Options struct {
	// Evaluator decides requests; nil sends everything to a human.
	Evaluator Evaluator
	// Notifier announces pending requests; nil means nobody is pinged
	// (requests still wait for the console, CLI or API).
	Notifier Notifier
	Clock    Clock
	Logger   *slog.Logger
	// PublicURL is the base of approval links, e.g. http://127.0.0.1:8787.
	PublicURL string
	// MaxPendingPerAgent caps how many requests one agent may keep waiting
	// for humans (approval flooding). Default 100.
	MaxPendingPerAgent int
	// WaitPoll is how often waiters re-read the store for changes made by
	// other processes. Default 1 s.
	WaitPoll time.Duration
	// MaxRequestObjectBytes caps the JSON size of each object a request
	// stores (scope, context, tool.annotations); larger ones are refused
	// with PAYLOAD_TOO_LARGE. Default DefaultMaxRequestObjectBytes (8 KiB),
	// at most MaxObjectBytes (64 KiB).
	MaxRequestObjectBytes int
	// MaxStoredBytesPerAgent is the storage quota: how many bytes one
	// agent's stored permissions (pending, live, or decided and not yet
	// pruned; see StorageUsage and Prune) may take. Once they take that
	// much, requests are refused with RATE_LIMITED. Default
	// DefaultMaxStoredBytesPerAgent.
	MaxStoredBytesPerAgent int64
	// CallbackHosts is the allow-list of callback receivers: "host" or
	// "host:port" (see ParseCallbackHost). A request whose callbackUrl
	// names another host is refused; with an empty list every callbackUrl
	// is refused. Entries that do not parse match nothing.
	CallbackHosts []string
}

// Service is the permission workflow. All methods are safe for concurrent
// use; every state change and its audit events commit in one transaction.
type Service struct {
	store      Store
	eval       Evaluator
	notifier   Notifier
	clock      Clock
	log        *slog.Logger
	publicURL  string
	maxPending int
	waitPoll   time.Duration
	broker     *broker
	kick       chan struct{} // reconcileSoon
	keys       keyCache
	watched    watchlist // pending requests announced to the notifier
	// auditCursor is the audit seq reconcile has read up to.
	auditCursor atomic.Int64
	// policyCursor is the newest policy change followPolicies has seen
	// (-1: not looked yet).
	policyCursor atomic.Int64
	// policyRetryAt (unix ns) is when the sweep may try again a reload
	// that failed, and policyFailures how many failed in a row: each
	// failure is audited, so the retries back off.
	policyRetryAt  atomic.Int64
	policyFailures atomic.Int32

	callbackHosts []CallbackHost
	maxObject     int   // Options.MaxRequestObjectBytes
	maxStored     int64 // Options.MaxStoredBytesPerAgent
}

// NewService returns a Service over store.
func NewService(store Store, opts Options) *Service {
	s := &Service{
		store:      store,
		eval:       opts.Evaluator,
		notifier:   opts.Notifier,
		clock:      opts.Clock,
		log:        opts.Logger,
		publicURL:  opts.PublicURL,
		maxPending: opts.MaxPendingPerAgent,
		waitPoll:   opts.WaitPoll,
		broker:     newBroker(),
		kick:       make(chan struct{}, 1),
	}
	if s.eval == nil {
		s.eval = RequireApprovalEvaluator{}
	}
	if s.clock == nil {
		s.clock = SystemClock
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxPending <= 0 {
		s.maxPending = 100
	}
	if s.waitPoll <= 0 {
		s.waitPoll = time.Second
	}
	s.maxObject, s.maxStored = requestLimits(opts, s.log)
	s.policyCursor.Store(-1)
	for _, h := range opts.CallbackHosts {
		if ch, err := ParseCallbackHost(h); err == nil {
			s.callbackHosts = append(s.callbackHosts, ch)
		} else {
			s.log.Error("callback allow-list entry ignored", "err", err)
		}
	}
	return s
}

// Store returns the underlying store (for read-only adapters).
func (s *Service) Store() Store { return s.store }

// Now returns the service clock's time.
func (s *Service) Now() time.Time { return s.clock() }

// PublicURL returns the base URL of links the service hands out.
func (s *Service) PublicURL() string { return s.publicURL }

// ApprovalURL returns the console link for a permission.
func (s *Service) ApprovalURL(id PermissionID) string {
	return s.publicURL + "/ui/requests/" + string(id)
}

// event builds an audit event stamped with the actor and request id.
func (s *Service) event(ctx context.Context, p Principal, t EventType, now time.Time, details map[string]any) *AuditEvent {
	kind, id := p.Actor()
	if ch, ok := ChannelFrom(ctx); ok {
		if details == nil {
			details = map[string]any{}
		}
		details["channel"] = ch.details()
	}
	e := &AuditEvent{ID: NewEventID(), Time: now, Type: t, ActorType: kind, ActorID: id, RequestID: RequestID(ctx), Details: details}
	// Encode the details here, outside the store's single writer, so the
	// serialized part of a write stays short. Details are JSON-safe maps.
	_ = e.SealDetails()
	return e
}

func permEvent(e *AuditEvent, perm *Permission) *AuditEvent {
	e.AgentID, e.PermissionID = perm.AgentID, perm.ID
	return e
}

// errRetried stops a request whose idempotency key already made a
// permission; the caller answers with that one.
var errRetried = errors.New("idempotency key already used")

var (
	errNotFoundPermission = Errorf(CodeNotFound, "permission request not found")
	errAgentOnly          = Errorf(CodeForbidden, "only agents can do this")
	errDecideForbidden    = Errorf(CodeForbidden, "only approvers and admins can decide requests")
	errAdminOnly          = Errorf(CodeForbidden, "admin role required")
)

// Authenticate resolves an API key to a principal. Keys are looked up by
// their SHA-256 and compared in constant time; disabled principals get 403.
// A verified key is remembered for a second (see keyCacheTTL).
func (s *Service) Authenticate(ctx context.Context, key string) (Principal, error) {
	if !ValidKeyFormat(key) {
		return Principal{}, Errorf(CodeUnauthorized, "invalid API key")
	}
	hash := HashSecret(key)
	now := time.Now() // the cache ages in real time, whatever the clock says
	if p, ok := s.keys.get(hash, now); ok && EqualHash(p.keyHash(), hash) {
		return p, nil
	}
	gen := s.keys.gen.Load()
	if key[:3] == AgentKeyPrefix {
		a, err := s.store.AgentByKeyHash(ctx, hash)
		if err != nil || !EqualHash(a.KeyHash, hash) {
			return Principal{}, authError(err)
		}
		if !a.Active {
			return Principal{}, Errorf(CodeForbidden, "agent is disabled")
		}
		s.keys.put(hash, Principal{Agent: a}, gen, now)
		return Principal{Agent: a}, nil
	}
	u, err := s.store.UserByKeyHash(ctx, hash)
	if err != nil || !EqualHash(u.KeyHash, hash) {
		return Principal{}, authError(err)
	}
	if !u.Active {
		return Principal{}, Errorf(CodeForbidden, "user is disabled")
	}
	s.keys.put(hash, Principal{User: u}, gen, now)
	return Principal{User: u}, nil
}

func authError(err error) error {
	if err == nil || errors.Is(err, ErrNotFound) {
		return Errorf(CodeUnauthorized, "invalid API key")
	}
	return &Error{Code: CodeUnavailable, Message: "authentication unavailable", Err: err}
}

// RequestPermission records an agent's request, asks the policy and, on
// auto-approval, returns the token (the only time it is shown). A retry with
// the same idempotency key returns the same permission.
func (s *Service) RequestPermission(ctx context.Context, p Principal, req PermissionRequest) (*Permission, Secret, error) {
	perm, token, _, err := s.request(ctx, p, req, nil)
	return perm, token, err
}

// RequestAndUse is RequestPermission followed, when the policy approves at
// once, by the first use with details — in the same transaction, so a
// guarded call that runs right away costs one durable commit, not two.
// The use is checked as Use checks it (scope or exact tool arguments, the
// policy's useWhen). used is nil when no use was attempted (pending,
// denied, or a retry answered from an earlier request): then Use it as
// usual once approved.
func (s *Service) RequestAndUse(ctx context.Context, p Principal, req PermissionRequest, details map[string]any) (perm *Permission, token Secret, used *UseResult, err error) {
	if details == nil {
		details = map[string]any{}
	}
	if err := ValidateObject("actionDetails", details); err != nil {
		return nil, "", nil, err
	}
	return s.request(ctx, p, req, details)
}

func (s *Service) request(ctx context.Context, p Principal, req PermissionRequest, spend map[string]any) (*Permission, Secret, *UseResult, error) {
	if !p.IsAgent() {
		return nil, "", nil, errAgentOnly
	}
	if err := req.ValidateWithin(s.maxObject); err != nil {
		return nil, "", nil, err
	}
	if req.CallbackURL != "" {
		if err := s.checkCallback(req.CallbackURL); err != nil {
			return nil, "", nil, err
		}
	}
	agent := p.Agent
	now := s.clock()

	// Decide once outside the writer. A decision that consulted budgets
	// is decided again inside it, counting through the transaction, so
	// that concurrent requests cannot all see the same committed count
	// and overrun the budget; the pending cap is checked there too.
	probe := &budgetProbe{PermissionCounter: s.store}
	d, evalErr := s.evaluate(WithCounter(ctx, probe), agent, req, now)
	first, firstToken, firstEvents := s.newPermission(ctx, p, req, d, evalErr, now)

	var (
		perm  *Permission
		token Secret
		used  *UseResult
	)
	// A retry (its idempotency key already made a permission) is answered
	// by replay below. It is caught by the key's unique index when the
	// insert conflicts, not by a lookup first: retries are rare, and the
	// lookup cost every request a read in the writer. A refusal met before
	// the insert looks the key up then, so that a retry is answered from
	// its permission rather than refused.
	err := s.store.Update(ctx, func(tx Tx) error {
		var events []*AuditEvent
		perm, token, events = first, firstToken, firstEvents
		if probe.asked.Load() {
			d2, err2 := s.evaluate(WithCounter(ctx, tx), agent, req, now)
			if d2.Effect != d.Effect || d2.Rule != d.Rule || (err2 == nil) != (evalErr == nil) {
				perm, token, events = s.newPermission(ctx, p, req, d2, err2, now)
			}
		}
		if perm.Status == StatusPending {
			n, err := tx.CountPermissions(ctx, agent.ID, "*", time.Time{}, []Status{StatusPending})
			if err != nil {
				return fmt.Errorf("count pending: %w", err)
			}
			if n >= s.maxPending {
				return retryOr(ctx, tx, agent.ID, req.IdempotencyKey, Errorf(CodeRateLimited, "too many requests are waiting for approval"))
			}
		}
		if err := s.checkQuota(ctx, tx, agent.ID); err != nil {
			return retryOr(ctx, tx, agent.ID, req.IdempotencyKey, err)
		}
		// The first use asked with the request is decided before the row
		// is written: spent, the permission is stored as the spend leaves
		// it, in one insert instead of an insert and an update.
		row, useEvent := perm, (*AuditEvent)(nil)
		used = nil
		if spend != nil && perm.Status == StatusApproved && token != "" {
			row, used, useEvent = s.spendFirst(ctx, p, perm, spend, now)
		}
		if err := tx.CreatePermission(ctx, row); err != nil {
			return err
		}
		if useEvent != nil {
			events = append(events[:len(events):len(events)], useEvent)
		}
		return appendAll(ctx, tx, events)
	})
	if errors.Is(err, errRetried) || errors.Is(err, ErrConflict) && req.IdempotencyKey != "" {
		// A retry, or a race lost to a concurrent one with the same key.
		if perm, tok, done, rerr := s.replay(ctx, p, req, now); done || rerr != nil {
			return perm, tok, nil, rerr
		}
	}
	if err != nil {
		return nil, "", nil, err
	}
	if perm.Status == StatusPending {
		s.notifyPending(perm, agent)
	}
	if used != nil && used.Success && used.UsesRemaining == 0 {
		perm = perm.Effective(now)
		perm.Status, perm.UsesRemaining = StatusUsed, 0
		s.notifyResolved(perm)
	} else if used != nil && used.Success {
		perm.UsesRemaining = used.UsesRemaining
	}
	return perm, token, used, nil
}

// retryOr returns errRetried if refusal is a limit (ErrRateLimited) that
// a new request has reached and key already made one of agent's
// permissions, and refusal otherwise: a failure stays a failure, and a key
// that cannot be looked up leaves the request refused.
func retryOr(ctx context.Context, tx Tx, agent AgentID, key string, refusal error) error {
	if key == "" || !errors.Is(refusal, ErrRateLimited) {
		return refusal
	}
	if _, err := tx.PermissionByIdempotencyKey(ctx, agent, key); err == nil {
		return errRetried
	}
	return refusal
}

// evaluate asks the policy; an evaluation error fails closed to a deny.
func (s *Service) evaluate(ctx context.Context, agent *Agent, req PermissionRequest, now time.Time) (Decision, error) {
	d, err := s.eval.Evaluate(ctx, EvalInput{
		Agent: agent, Action: req.Action, Resource: req.Resource,
		Scope: req.Scope, Context: req.Context, Now: now, Tool: req.Tool,
	})
	if err != nil {
		// Fail closed: a policy that cannot answer never approves.
		s.log.Error("policy evaluation failed", "rule", d.Rule, "action", req.Action, "err", err)
		d = Decision{Effect: EffectDeny, Rule: d.Rule, PolicyVersion: d.PolicyVersion, Reason: "policy evaluation failed; request denied"}
	}
	return d, err
}

// newPermission builds the permission a decision makes of a request, its
// token when approved now, and the audit events recording it.
func (s *Service) newPermission(ctx context.Context, p Principal, req PermissionRequest, d Decision, evalErr error, now time.Time) (*Permission, Secret, []*AuditEvent) {
	agent := p.Agent

	perm := &Permission{
		ID: NewPermissionID(), AgentID: agent.ID, Action: req.Action, Resource: req.Resource,
		Scope: req.Scope, Context: req.Context, IdempotencyKey: req.IdempotencyKey, CallbackURL: req.CallbackURL,
		CreatedAt: now, UpdatedAt: now, ApprovalExpiresAt: now.Add(req.ApprovalTTL),
		Decision: d, TokenTTL: req.TTL, Uses: req.Uses, GrantedScope: req.Scope, Tool: storedTool(req.Tool),
	}
	// A policy may shorten the token's life and uses, never extend them.
	if d.TokenTTL > 0 && d.TokenTTL < perm.TokenTTL {
		perm.TokenTTL = d.TokenTTL
	}
	if d.Uses > 0 && d.Uses < perm.Uses {
		perm.Uses = d.Uses
	}
	if d.Scope != nil {
		perm.GrantedScope = d.Scope
	}

	reqDetails := map[string]any{
		"action": req.Action, "resource": req.Resource, "scope": req.Scope, "context": req.Context,
		"ttl": int(req.TTL / time.Second), "approvalTtl": int(req.ApprovalTTL / time.Second), "uses": req.Uses,
		"decision": decisionDetails(d, evalErr),
	}
	if t := perm.Tool; t != nil {
		reqDetails["tool"] = map[string]any{"server": t.Server, "name": t.Name, "annotations": t.Annotations, "argsSha256": t.ArgsHash}
	}
	if u, err := url.Parse(req.CallbackURL); err == nil && req.CallbackURL != "" {
		// Where the outcome will be sent; path and query may carry the
		// receiver's own secrets and stay out of the trail.
		reqDetails["callbackHost"] = u.Host
	}
	reqEvent := permEvent(s.event(ctx, p, EventRequest, now, reqDetails), perm)
	perm.DecisionEventID = reqEvent.ID

	var token Secret
	events := []*AuditEvent{reqEvent}
	switch d.Effect {
	case EffectAutoApprove:
		token = NewToken()
		perm.Status = StatusApproved
		perm.DecidedBy, perm.DecidedAt, perm.DecisionReason = "policy", now, d.Reason
		perm.TokenExpiresAt = now.Add(perm.TokenTTL)
		perm.UsesRemaining = perm.Uses
		perm.TokenHash, perm.TokenIssuedAt = token.Hash(), now
		// One decision, one event: the approval carries the token it
		// issued (what a token_issue would say), so an auto-approved
		// request costs two audit rows, not three.
		events = append(events, permEvent(s.event(ctx, p, EventApprove, now, map[string]any{
			"decidedBy": "policy", "rule": d.Rule, "scope": perm.GrantedScope,
			"token": map[string]any{"expiresAt": perm.TokenExpiresAt.UTC().Format(time.RFC3339Nano), "uses": perm.Uses, "delivery": "response"},
		}), perm))
	case EffectDeny:
		perm.Status = StatusDenied
		perm.DecidedBy, perm.DecidedAt = "policy", now
		perm.DecisionReason = d.Reason
		if perm.DecisionReason == "" {
			perm.DecisionReason = "denied by policy"
		}
		events = append(events, permEvent(s.event(ctx, p, EventDeny, now, map[string]any{"decidedBy": "policy", "rule": d.Rule, "reason": perm.DecisionReason}), perm))
	default:
		perm.Status = StatusPending
	}
	return perm, token, events
}

// replay answers a retried request with the permission its key created. If
// that permission was auto-approved and not used yet, the token from the
// lost first response is replaced by a new one, so the retry is useful and
// there is never more than one live token.
func (s *Service) replay(ctx context.Context, p Principal, req PermissionRequest, now time.Time) (*Permission, Secret, bool, error) {
	var (
		out   *Permission
		token Secret
	)
	err := s.store.Update(ctx, func(tx Tx) error {
		perm, err := tx.PermissionByIdempotencyKey(ctx, p.Agent.ID, req.IdempotencyKey)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if perm.Action != req.Action || perm.Resource != req.Resource || perm.CallbackURL != req.CallbackURL ||
			!reflect.DeepEqual(perm.Scope, req.Scope) || !reflect.DeepEqual(perm.Context, req.Context) ||
			!sameTool(perm.Tool, req.Tool) {
			return Errorf(CodeConflict, "idempotencyKey was already used for a different request")
		}
		out = perm
		if perm.Status != StatusApproved || perm.TokenHash == "" || perm.UsesRemaining != perm.Uses || perm.Due(now) {
			return nil
		}
		token = NewToken()
		perm.TokenHash, perm.TokenIssuedAt, perm.UpdatedAt = token.Hash(), now, now
		if err := tx.UpdatePermission(ctx, perm, StatusApproved); err != nil {
			return err
		}
		d := tokenDetails(perm, "response")
		d["reissued"] = true
		return tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventTokenIssue, now, d), perm))
	})
	if err != nil || out == nil {
		return nil, "", false, err
	}
	return out.Effective(now), token, true, nil
}

func decisionDetails(d Decision, evalErr error) map[string]any {
	m := map[string]any{"effect": d.Effect.String(), "rule": d.Rule, "policyVersion": d.PolicyVersion, "reason": d.Reason}
	if d.Scope != nil {
		m["scope"] = d.Scope
	}
	if evalErr != nil {
		m["error"] = evalErr.Error()
	}
	return m
}

func tokenDetails(p *Permission, delivery string) map[string]any {
	return map[string]any{
		"expiresAt": p.TokenExpiresAt.UTC().Format(time.RFC3339Nano), "uses": p.Uses,
		"scope": p.GrantedScope, "delivery": delivery,
	}
}

func appendAll(ctx context.Context, tx Tx, events []*AuditEvent) error {
	if a, ok := tx.(AuditAppender); ok && len(events) > 1 {
		if err := a.AppendAudits(ctx, events); err != nil {
			return fmt.Errorf("append audit events (%s to %s): %w", events[0].Type, events[len(events)-1].Type, err)
		}
		return nil
	}
	for _, e := range events {
		if err := tx.AppendAudit(ctx, e); err != nil {
			return fmt.Errorf("append audit %s: %w", e.Type, err)
		}
	}
	return nil
}

func (s *Service) notifyPending(perm *Permission, agent *Agent) {
	if s.notifier == nil {
		return
	}
	s.watched.add(perm.ID)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.notifier.NotifyPending(ctx, perm, agent); err != nil {
			s.log.Warn("notify pending failed", "permission", perm.ID, "err", err)
		}
	}()
}

func (s *Service) notifyResolved(perm *Permission) {
	s.broker.publish(perm.ID)
	if s.notifier == nil {
		return
	}
	if perm.Decision.Effect != EffectRequireApproval && perm.CallbackURL == "" && !s.watched.has(perm.ID) {
		// Decided by policy at once, nobody announced it and nobody
		// waits on a callback: there is no one to tell.
		return
	}
	s.watched.remove(perm.ID)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.notifier.NotifyResolved(ctx, perm); err != nil {
			s.log.Warn("notify resolved failed", "permission", perm.ID, "err", err)
		}
	}()
}

// load returns a permission the principal may see: its own for an agent,
// any for approvers and admins. Others get not-found, never forbidden, so
// ids of other agents' permissions cannot be probed.
func (s *Service) load(ctx context.Context, p Principal, id PermissionID) (*Permission, error) {
	if !id.Valid() {
		return nil, errNotFoundPermission
	}
	perm, err := s.store.Permission(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, errNotFoundPermission
	}
	if err != nil {
		return nil, err
	}
	switch {
	case p.IsAgent() && perm.AgentID == p.Agent.ID:
	case !p.IsAgent() && p.Role().CanDecide():
	default:
		return nil, errNotFoundPermission
	}
	return perm, nil
}

// GetPermission returns a permission, waiting up to wait while it is
// pending. When the caller is the owning agent and a human has approved, the
// token is minted and returned — exactly once; later reads never carry it.
func (s *Service) GetPermission(ctx context.Context, p Principal, id PermissionID, wait time.Duration) (*Permission, Secret, error) {
	perm, err := s.load(ctx, p, id)
	if err != nil {
		return nil, "", err
	}
	if wait > 0 && perm.Effective(s.clock()).Status == StatusPending {
		perm, err = s.waitChange(ctx, perm, wait)
		if err != nil {
			return nil, "", err
		}
	}
	now := s.clock()
	// A caller that left during the wait would lose the token with the
	// answer it never reads: leave it for the next read.
	if p.IsAgent() && perm.TokenPending() && !perm.Due(now) && ctx.Err() == nil {
		return s.deliver(ctx, p, perm.ID, now)
	}
	return perm.Effective(now), "", nil
}

// waitChange blocks until perm leaves pending, ctx ends or wait passes.
func (s *Service) waitChange(ctx context.Context, perm *Permission, wait time.Duration) (*Permission, error) {
	ch, cancel := s.broker.subscribe(perm.ID)
	defer cancel()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	poll := time.NewTicker(s.waitPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return perm, nil
		case <-deadline.C:
			return perm, nil
		case <-ch:
		case <-poll.C:
		}
		cur, err := s.store.Permission(ctx, perm.ID)
		if err != nil {
			if ctx.Err() != nil {
				return perm, nil
			}
			return nil, err
		}
		perm = cur
		if perm.Effective(s.clock()).Status != StatusPending {
			return perm, nil
		}
	}
}

// deliver mints the token of a human-approved permission for its agent.
func (s *Service) deliver(ctx context.Context, p Principal, id PermissionID, now time.Time) (*Permission, Secret, error) {
	var (
		out   *Permission
		token Secret
	)
	err := s.store.Update(ctx, func(tx Tx) error {
		perm, err := tx.Permission(ctx, id)
		if err != nil {
			return err
		}
		out = perm
		if !perm.TokenPending() || perm.Due(now) || perm.AgentID != p.Agent.ID {
			return nil // someone else got it first, or it lapsed
		}
		tok := NewToken()
		if err := tx.IssueToken(ctx, id, tok.Hash(), now); err != nil {
			return err
		}
		perm.TokenHash, perm.TokenIssuedAt = tok.Hash(), now
		if err := tx.AppendAudit(ctx, permEvent(s.event(ctx, p, EventTokenIssue, now, tokenDetails(perm, "get")), perm)); err != nil {
			return err
		}
		token = tok
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out.Effective(now), token, nil
}

// Watch calls fn with the permission now and after every change until it is
// terminal or ctx ends. The owning agent's token rides along once, as in
// GetPermission. Server-Sent Events use it.
func (s *Service) Watch(ctx context.Context, p Principal, id PermissionID, fn func(*Permission, Secret) error) error {
	ch, cancel := s.broker.subscribe(id)
	defer cancel()
	poll := time.NewTicker(s.waitPoll)
	defer poll.Stop()
	var last *Permission
	for {
		perm, tok, err := s.GetPermission(ctx, p, id, 0)
		if err != nil {
			return err
		}
		if last == nil || tok != "" || perm.Status != last.Status || perm.UsesRemaining != last.UsesRemaining {
			if err := fn(perm, tok); err != nil {
				return err
			}
			last = perm
		}
		if perm.Status.Terminal() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		case <-poll.C:
		}
	}
}
