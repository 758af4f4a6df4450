package agentotp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// GuardAuthorizer is what a Guard asks through: *AgentSession in process,
// *otpclient.Client over HTTP.
type GuardAuthorizer interface {
	// Authorize asks for a permission and waits up to wait while it is
	// pending; an error means asking failed, not that it was refused.
	Authorize(ctx context.Context, req PermissionRequest, wait time.Duration) (*Permission, Secret, error)
	// Spend uses the token once; a refusal is an error matching ErrConflict.
	Spend(ctx context.Context, id PermissionID, token Secret, details map[string]any) error
}

// Guard puts tool calls behind permissions: each call asks (or picks up the
// decision on the same call asked before), and may run only once an
// approval's use is spent. The langchaingo tool wrappers, Claude Code's
// permission prompt and the MCP gateway are thin adapters around it.
//
// A Guard remembers the calls still waiting for a person, by a key the
// adapter derives from the call (tool and input): asking again with the
// same key reuses that request's idempotency key, so the person is asked
// once and the agent gets their answer.
type Guard struct {
	wait    time.Duration
	mu      sync.Mutex
	pending map[string]string // call key → idempotency key of its pending request
}

// maxGuardPending bounds the pending calls a Guard remembers.
const maxGuardPending = 1000

// NewGuard returns a Guard whose calls wait up to wait for a person.
func NewGuard(wait time.Duration) *Guard {
	return &Guard{wait: max(0, wait), pending: map[string]string{}}
}

// GuardVerdict is the outcome of asking for one call.
type GuardVerdict struct {
	Permission *Permission
	Token      Secret
	// Allowed is true when the permission is approved and its token held.
	Allowed bool
	// Message is what the model reads when the call is not allowed.
	Message string
}

// Ask requests permission for one call, named name in messages and
// identified by key, through auth, and waits for a decision. The verdict
// spends nothing. An error means agentotp could not be asked (the call
// must not run).
func (g *Guard) Ask(ctx context.Context, auth GuardAuthorizer, key, name string, req PermissionRequest) (*GuardVerdict, error) {
	idem := g.idempotencyKey(key)
	req.IdempotencyKey = idem
	perm, token, err := auth.Authorize(ctx, req, g.wait)
	g.remember(key, idem, perm, err)
	if err != nil {
		return nil, err
	}
	v := &GuardVerdict{Permission: perm, Token: token}
	v.Allowed, v.Message = Verdict(name, perm, token)
	return v, nil
}

// idempotencyKey is the key of the call's pending request, or a new one.
func (g *Guard) idempotencyKey(key string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if idem, ok := g.pending[key]; ok {
		return idem
	}
	return newGuardKey()
}

// remember keeps the call's idempotency key while its request waits — or
// when the wait broke off (the caller left) and the request may exist — so
// the same call asked again picks it up; a decided call is forgotten, and
// so is a key the server refused as used for a different request (the
// call would be refused the same way for ever).
func (g *Guard) remember(key, idem string, perm *Permission, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil && !errors.Is(err, ErrConflict) || err == nil && perm.Status == StatusPending {
		if len(g.pending) >= maxGuardPending {
			clear(g.pending)
		}
		g.pending[key] = idem
		return
	}
	delete(g.pending, key)
}

// Spend uses the verdict's token once, before the call runs: at most once,
// and a call whose run fails does not get its use back. A use the server
// refuses (details outside the approved scope, say) gives ok false and the
// words for the model; an error means agentotp could not be asked.
func (g *Guard) Spend(ctx context.Context, auth GuardAuthorizer, v *GuardVerdict, name string, details map[string]any) (ok bool, msg string, err error) {
	if !v.Allowed {
		return false, v.Message, nil
	}
	if err := auth.Spend(ctx, v.Permission.ID, v.Token, details); err != nil {
		if errors.Is(err, ErrConflict) {
			return false, fmt.Sprintf("Permission %s for %s was approved but could not be used (%s). The tool did not run.",
				v.Permission.ID, name, errorText(err)), nil
		}
		return false, "", fmt.Errorf("use permission %s for %s: %w", v.Permission.ID, name, err)
	}
	return true, "", nil
}

// Verdict turns a permission's state into "allowed", or the words a model
// reads instead: what happened, that the tool did not run, and what to do.
func Verdict(name string, p *Permission, token Secret) (bool, string) {
	reason := ""
	if p.DecisionReason != "" {
		reason = " Reason: " + p.DecisionReason + "."
	}
	switch p.Status {
	case StatusApproved:
		if token != "" {
			return true, ""
		}
		return false, fmt.Sprintf("Permission %s for %s was approved, but its token was not delivered to this agent. The tool did not run; call it again to ask anew.", p.ID, name)
	case StatusPending:
		return false, fmt.Sprintf("Permission for %s is still waiting for a human decision (approval pending, request %s). The tool did not run. Calling it again with the same input picks up the decision; meanwhile you may do something else.", name, p.ID)
	case StatusDenied:
		return false, fmt.Sprintf("Permission denied for %s.%s The tool did not run. Do not retry the same call; choose another approach or tell the user.", name, reason)
	case StatusExpired:
		return false, fmt.Sprintf("Permission for %s expired before anyone approved it (request %s). The tool did not run.", name, p.ID)
	}
	return false, fmt.Sprintf("Permission for %s is %s.%s The tool did not run.", name, p.Status, reason)
}

// errorText is an error's client-safe message.
func errorText(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Message != "" {
		return e.Message
	}
	return err.Error()
}

func newGuardKey() string {
	// Time-ordered like the ids (newID): the store's idempotency index
	// grows at one end instead of taking each key at a random place.
	return newID("guard-")
}

// spender is an authorizer that can ask and spend in one step when the
// policy approves at once (*AgentSession: one transaction instead of two).
type spender interface {
	AuthorizeAndSpend(ctx context.Context, req PermissionRequest, wait time.Duration, details map[string]any) (*Permission, Secret, *UseResult, error)
}

// AskAndSpend is Ask followed by Spend with details, for a call that will
// run as soon as it is allowed (no hook in between): through an authorizer
// that can, an at-once approval is asked and spent in one transaction.
func (g *Guard) AskAndSpend(ctx context.Context, auth GuardAuthorizer, key, name string, req PermissionRequest, details map[string]any) (v *GuardVerdict, ok bool, msg string, err error) {
	sp, can := auth.(spender)
	if !can {
		if v, err = g.Ask(ctx, auth, key, name, req); err != nil {
			return nil, false, "", err
		}
		ok, msg, err = g.Spend(ctx, auth, v, name, details)
		return v, ok, msg, err
	}
	idem := g.idempotencyKey(key)
	req.IdempotencyKey = idem
	perm, token, used, err := sp.AuthorizeAndSpend(ctx, req, g.wait, details)
	g.remember(key, idem, perm, err)
	if err != nil {
		return nil, false, "", err
	}
	v = &GuardVerdict{Permission: perm, Token: token}
	v.Allowed, v.Message = Verdict(name, perm, token)
	if used != nil {
		// Approved at once: the verdict is the approval's, whatever the
		// spend left of the permission (used, with its last use).
		v.Allowed, v.Message = true, ""
	}
	switch {
	case used == nil:
		ok, msg, err = g.Spend(ctx, auth, v, name, details)
		return v, ok, msg, err
	case !used.Success:
		return v, false, fmt.Sprintf("Permission %s for %s was approved but could not be used (%s). The tool did not run.",
			perm.ID, name, used.Reason), nil
	}
	return v, true, "", nil
}
