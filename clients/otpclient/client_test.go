package otpclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
)

func TestRequestPermission(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	ctx := context.Background()
	tests := []struct {
		name   string
		req    otpclient.Request
		status agentotp.Status
		err    error
		check  func(t *testing.T, p *otpclient.Permission)
	}{
		{name: "auto-approved carries the token", status: agentotp.StatusApproved,
			req: otpclient.Request{Action: "auto.read", Resource: "file:a", Scope: map[string]any{"max_rows": 10},
				TTL: time.Minute, Uses: 2},
			check: func(t *testing.T, p *otpclient.Permission) {
				require.True(t, p.Approved())
				require.True(t, agentotp.ValidTokenFormat(p.Token.Reveal()))
				require.Equal(t, 2, p.UsesRemaining)
				require.Equal(t, map[string]any{"max_rows": float64(10)}, p.Scope)
				require.NotEmpty(t, p.DecisionID)
				require.WithinDuration(t, e.clock.Now().Add(time.Minute), p.ExpiresAt, time.Second)
			}},
		{name: "denied returns the permission and ErrDenied with the reason", status: agentotp.StatusDenied,
			req: otpclient.Request{Action: "deny.delete"}, err: otpclient.ErrDenied,
			check: func(t *testing.T, p *otpclient.Permission) {
				require.Equal(t, denyReason, p.Reason)
				require.Empty(t, p.Token)
			}},
		{name: "pending without waiting", status: agentotp.StatusPending,
			req: otpclient.Request{Action: "human.send", Context: map[string]any{"why": "test"}, ApprovalTTL: time.Hour},
			check: func(t *testing.T, p *otpclient.Permission) {
				require.Contains(t, p.ApprovalURL, "/ui/requests/"+p.ID)
				require.Contains(t, p.WaitURL, p.ID+"?wait=")
				require.WithinDuration(t, e.clock.Now().Add(time.Hour), p.ExpiresAt, time.Second)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := c.RequestPermission(ctx, tt.req)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				var oe *otpclient.Error
				require.ErrorAs(t, err, &oe)
				require.Equal(t, p.ID, oe.PermissionID)
				require.Equal(t, p.Reason, oe.Reason)
				require.True(t, otpclient.IsDecision(err))
			} else {
				require.NoError(t, err)
			}
			require.NotNil(t, p)
			require.Equal(t, tt.status, p.Status)
			require.Equal(t, tt.req.Action, p.Action)
			tt.check(t, p)
		})
	}
}

// waitFor blocks until the agent's request shows up in the approval queue.
func TestWaitForDecision(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name   string
		act    func(e *env, p *otpclient.Permission)
		ctx    func() (context.Context, context.CancelFunc)
		opts   []otpclient.RequestOption
		status agentotp.Status
		err    []error
		reason string
	}{
		{name: "approved while waiting", status: agentotp.StatusApproved,
			act: func(e *env, p *otpclient.Permission) {
				e.decide(p.ID, otpclient.Decision{Approved: true, Reason: "fine"})
			}},
		{name: "denied while waiting", status: agentotp.StatusDenied, err: []error{otpclient.ErrDenied}, reason: "not today",
			act: func(e *env, p *otpclient.Permission) {
				e.decide(p.ID, otpclient.Decision{Approved: false, Reason: "not today"})
			}},
		{name: "expired while waiting", status: agentotp.StatusExpired, err: []error{otpclient.ErrExpired},
			act: func(e *env, p *otpclient.Permission) { e.clock.Add(10 * time.Minute) }},
		{name: "revoked while waiting", status: agentotp.StatusRevoked, err: []error{otpclient.ErrRevoked},
			act: func(e *env, p *otpclient.Permission) {
				_, err := e.admin.Revoke(context.Background(), p.ID, "withdrawn")
				require.NoError(t, err)
			}},
		{name: "context deadline", status: agentotp.StatusPending,
			err: []error{otpclient.ErrPending, context.DeadlineExceeded},
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 300*time.Millisecond)
			}},
		{name: "context cancelled", status: agentotp.StatusPending,
			err: []error{otpclient.ErrPending, context.Canceled},
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(200*time.Millisecond, cancel)
				return ctx, cancel
			}},
		{name: "wait limit", status: agentotp.StatusPending, opts: []otpclient.RequestOption{otpclient.Wait(200 * time.Millisecond)},
			err: []error{otpclient.ErrPending, context.DeadlineExceeded}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.client()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			var calls atomic.Int32
			opts := append([]otpclient.RequestOption{otpclient.Wait(0), otpclient.OnPending(func(p *otpclient.Permission) {
				calls.Add(1)
				require.NotEmpty(t, p.ApprovalURL)
				if tt.act != nil {
					go func() {
						time.Sleep(100 * time.Millisecond) // let the long-poll start
						tt.act(e, p)
					}()
				}
			})}, tt.opts...)
			start := time.Now()
			p, err := c.RequestPermission(ctx, otpclient.Request{Action: "human." + t.Name()}, opts...)
			require.Less(t, time.Since(start), 10*time.Second, "waiting must end promptly")
			require.EqualValues(t, 1, calls.Load(), "OnPending runs exactly once")
			for _, want := range tt.err {
				require.ErrorIs(t, err, want)
			}
			if len(tt.err) == 0 {
				require.NoError(t, err)
			}
			require.NotNil(t, p)
			require.Equal(t, tt.status, p.Status)
			if tt.reason != "" {
				require.Equal(t, tt.reason, p.Reason)
			}
			if tt.status == agentotp.StatusApproved {
				require.True(t, p.Approved())
				// The server hands the token out once; the client keeps it.
				again, err := c.GetPermission(context.Background(), p.ID)
				require.NoError(t, err)
				require.Equal(t, p.Token, again.Token)
				other, err := e.client().GetPermission(context.Background(), p.ID)
				require.NoError(t, err)
				require.Empty(t, other.Token, "a second client of the same agent gets no second copy")
			}
		})
	}
}

func TestWaitForDecisionByID(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	ctx := context.Background()
	p, err := c.RequestPermission(ctx, otpclient.Request{Action: "human.later"})
	require.NoError(t, err)
	decided := make(chan struct{})
	time.AfterFunc(100*time.Millisecond, func() { defer close(decided); e.decide(p.ID, otpclient.Decision{Approved: true}) })
	defer func() { <-decided }()
	got, err := c.WaitForDecision(ctx, p.ID)
	require.NoError(t, err)
	require.True(t, got.Approved())
	_, err = c.Use(ctx, got.ID, got.Token, nil)
	require.NoError(t, err)

	_, err = c.WaitForDecision(ctx, "perm_00000000000000000000000000")
	require.ErrorIs(t, err, otpclient.ErrNotFound)
}

func TestVerifyUseRevoke(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	ctx := context.Background()
	// Within the scope below: a use must name what max_emails limits, and
	// the recipient the scope fixes.
	okUse := map[string]any{"emails": 1, "recipient": "a@example.com"}
	newPerm := func(t *testing.T, uses int) *otpclient.Permission {
		p, err := c.RequestPermission(ctx, otpclient.Request{Action: "auto.mail", Uses: uses, TTL: time.Minute,
			Scope: map[string]any{"max_emails": 2, "recipient": "a@example.com"}})
		require.NoError(t, err)
		return p
	}

	t.Run("verify never spends, use spends, refusals are typed", func(t *testing.T) {
		p := newPerm(t, 2)
		v, err := c.Verify(ctx, p.ID, p.Token)
		require.NoError(t, err)
		require.True(t, v.Valid)
		require.Equal(t, 2, v.UsesRemaining)
		require.Equal(t, p.ExpiresAt, v.ExpiresAt)

		res, err := c.Use(ctx, p.ID, p.Token, map[string]any{"emails": 1, "recipient": "a@example.com"})
		require.NoError(t, err)
		require.Equal(t, 1, res.UsesRemaining)

		_, err = c.Use(ctx, p.ID, p.Token, map[string]any{"emails": 5})
		require.ErrorIs(t, err, otpclient.ErrUseRefused)
		require.ErrorIs(t, err, agentotp.ErrConflict, "reads like AgentSession's refusal")
		var oe *otpclient.Error
		require.ErrorAs(t, err, &oe)
		require.Contains(t, oe.Reason, "outside the granted scope")

		_, err = c.Use(ctx, p.ID, p.Token, okUse)
		require.NoError(t, err)
		_, err = c.Use(ctx, p.ID, p.Token, okUse)
		require.ErrorIs(t, err, otpclient.ErrUseRefused)
		require.ErrorAs(t, err, &oe)
		require.Equal(t, agentotp.ReasonTokenUsed, oe.Reason)

		v, err = c.Verify(ctx, p.ID, p.Token)
		require.NoError(t, err)
		require.False(t, v.Valid)
		require.Equal(t, agentotp.ReasonTokenUsed, v.Reason)
	})

	t.Run("wrong token", func(t *testing.T) {
		p := newPerm(t, 1)
		_, err := c.Use(ctx, p.ID, agentotp.NewToken(), nil)
		require.ErrorIs(t, err, otpclient.ErrUseRefused)
		require.NotErrorIs(t, err, otpclient.ErrExpired)
	})

	t.Run("expired token", func(t *testing.T) {
		p := newPerm(t, 1)
		e.clock.Add(2 * time.Minute)
		_, err := c.Use(ctx, p.ID, p.Token, okUse)
		require.ErrorIs(t, err, otpclient.ErrUseRefused)
		require.ErrorIs(t, err, otpclient.ErrExpired)
		got, err := c.GetPermission(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusExpired, got.Status)
		require.Empty(t, got.Token)
	})

	t.Run("revoke", func(t *testing.T) {
		p := newPerm(t, 1)
		r, err := c.Revoke(ctx, p.ID, "changed my mind")
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusRevoked, r.Status)
		_, err = c.Use(ctx, p.ID, p.Token, okUse)
		require.ErrorIs(t, err, otpclient.ErrRevoked)
		// Revoking again (as a retry whose answer was lost would) succeeds.
		r, err = c.Revoke(ctx, p.ID, "")
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusRevoked, r.Status)
	})

	t.Run("revoke a pending request", func(t *testing.T) {
		p, err := c.RequestPermission(ctx, otpclient.Request{Action: "human.x"})
		require.NoError(t, err)
		r, err := c.Revoke(ctx, p.ID, "")
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusRevoked, r.Status)
	})
}

func TestErrors(t *testing.T) {
	e := newEnv(t)
	limited := newEnv(t, func(o *httpapi.Options) { o.RateLimit = 0.2 })
	ctx := context.Background()
	tests := []struct {
		name  string
		run   func() error
		is    error
		check func(t *testing.T, oe *otpclient.Error)
	}{
		{name: "unauthorized", is: otpclient.ErrUnauthorized, run: func() error {
			_, err := otpclient.New(e.srv.URL, "ak_wrong", fast()).GetPermission(ctx, "perm_x")
			return err
		}},
		{name: "forbidden: agent key on an admin route", is: otpclient.ErrForbidden, run: func() error {
			_, _, err := otpclient.NewAdmin(e.srv.URL, e.agent.APIKey, fast()).ListAgents(ctx, otpclient.ListOptions{})
			return err
		}},
		{name: "forbidden: disabled agent", is: otpclient.ErrForbidden, run: func() error {
			a := e.newAgent("disabled")
			off := false
			_, err := e.admin.UpdateAgent(ctx, a.ID, otpclient.AgentPatch{IsActive: &off})
			require.NoError(t, err)
			_, err = otpclient.New(e.srv.URL, a.APIKey, fast()).RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
			return err
		}},
		{name: "not found", is: otpclient.ErrNotFound, run: func() error {
			_, err := e.client().GetPermission(ctx, "perm_00000000000000000000000000")
			return err
		}},
		{name: "validation with field details", is: otpclient.ErrValidation, run: func() error {
			_, err := e.client().RequestPermission(ctx, otpclient.Request{Action: "auto.x", TTL: 5 * time.Second})
			return err
		}, check: func(t *testing.T, oe *otpclient.Error) {
			require.Equal(t, http.StatusBadRequest, oe.Status)
			require.Contains(t, oe.Details, "ttl")
		}},
		{name: "conflict: deciding twice", is: otpclient.ErrConflict, run: func() error {
			p, err := e.client().RequestPermission(ctx, otpclient.Request{Action: "human.twice"})
			require.NoError(t, err)
			e.decide(p.ID, otpclient.Decision{Approved: true})
			_, err = e.admin.Approve(ctx, p.ID, "")
			return err
		}},
		{name: "rate limited with Retry-After", is: otpclient.ErrRateLimited, run: func() error {
			c := otpclient.New(limited.srv.URL, limited.agent.APIKey, otpclient.WithRetries(0, 0, 0))
			for range 5 {
				if _, err := c.GetPermission(ctx, "perm_00000000000000000000000000"); errors.Is(err, otpclient.ErrRateLimited) {
					return err
				}
			}
			return nil
		}, check: func(t *testing.T, oe *otpclient.Error) {
			require.GreaterOrEqual(t, oe.RetryAfter, time.Second)
			require.True(t, oe.Retryable())
		}},
		{name: "server error with request id", is: otpclient.ErrServer, run: func() error {
			e.faults.add(fault{method: "GET", suffix: "/permission", n: 4, status: 500})
			_, err := e.client().GetPermission(ctx, "perm_00000000000000000000000000")
			return err
		}, check: func(t *testing.T, oe *otpclient.Error) {
			require.Equal(t, otpclient.CodeInternal, oe.Code)
			require.Equal(t, "injected-Int", oe.RequestID)
			require.Contains(t, oe.Error(), "injected-Int")
		}},
		{name: "network error is returned wrapped", run: func() error {
			_, err := otpclient.New("http://127.0.0.1:1", "ak_x", fast()).GetPermission(ctx, "perm_x")
			require.Error(t, err)
			var oe *otpclient.Error
			require.False(t, errors.As(err, &oe))
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if tt.is == nil {
				return
			}
			require.ErrorIs(t, err, tt.is)
			var oe *otpclient.Error
			require.ErrorAs(t, err, &oe)
			require.NotEmpty(t, oe.RequestID, "every server answer has a request id")
			require.False(t, otpclient.IsDecision(err))
			if tt.check != nil {
				tt.check(t, oe)
			}
		})
	}
}

func TestRetries(t *testing.T) {
	ctx := context.Background()

	t.Run("429 and 503 before the handler: retried, one permission", func(t *testing.T) {
		e := newEnv(t)
		e.faults.add(fault{method: "POST", suffix: "/request", n: 1, status: 429, retryAfter: "0"})
		e.faults.add(fault{method: "POST", suffix: "/request", n: 1, status: 503})
		p, err := e.client().RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
		require.NoError(t, err)
		require.True(t, p.Approved())
		require.Equal(t, 1, e.faults.calls("POST /request"))
		require.Equal(t, 1, e.countRequests(t))
	})

	t.Run("answer lost after the server acted: same permission, token re-issued", func(t *testing.T) {
		e := newEnv(t)
		e.faults.add(fault{method: "POST", suffix: "/request", n: 1, status: 503, after: true})
		e.faults.add(fault{method: "POST", suffix: "/request", n: 1, drop: true, after: true})
		c := e.client()
		p, err := c.RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
		require.NoError(t, err)
		require.Equal(t, 3, e.faults.calls("POST /request"))
		require.Equal(t, 1, e.countRequests(t), "retries never create a second permission")
		_, err = c.Use(ctx, p.ID, p.Token, nil)
		require.NoError(t, err, "the re-issued token is the live one")
	})

	t.Run("Retry-After is honoured", func(t *testing.T) {
		e := newEnv(t)
		e.faults.add(fault{method: "GET", suffix: "/permission", n: 1, status: 429, retryAfter: "1"})
		start := time.Now()
		_, err := e.client().GetPermission(ctx, "perm_00000000000000000000000000")
		require.ErrorIs(t, err, otpclient.ErrNotFound)
		require.GreaterOrEqual(t, time.Since(start), time.Second)
	})

	t.Run("no retry past the context deadline", func(t *testing.T) {
		e := newEnv(t)
		e.faults.add(fault{method: "GET", suffix: "/permission", n: 1, status: 429, retryAfter: "30"})
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := e.client().GetPermission(cctx, "perm_00000000000000000000000000")
		require.ErrorIs(t, err, otpclient.ErrRateLimited)
	})

	t.Run("gives up after the retry budget", func(t *testing.T) {
		e := newEnv(t)
		e.faults.add(fault{method: "POST", suffix: "/request", n: 10, status: 503})
		_, err := e.client().RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
		require.ErrorIs(t, err, otpclient.ErrServer)
		require.Equal(t, 0, e.countRequests(t))
	})

	t.Run("token lost on the long-poll is recovered", func(t *testing.T) {
		e := newEnv(t)
		c := e.client()
		p, err := c.RequestPermission(ctx, otpclient.Request{Action: "human.x"})
		require.NoError(t, err)
		e.decide(p.ID, otpclient.Decision{Approved: true})
		// The read that mints and carries the token breaks off.
		e.faults.add(fault{method: "GET", suffix: "/permission", n: 1, drop: true, after: true})
		got, err := c.WaitForDecision(ctx, p.ID)
		require.NoError(t, err)
		require.True(t, got.Approved())
		_, err = c.Use(ctx, got.ID, got.Token, nil)
		require.NoError(t, err)
		require.Equal(t, 1, e.countRequests(t))
	})

	t.Run("token lost and no way to re-issue", func(t *testing.T) {
		e := newEnv(t)
		c := e.client()
		p, err := c.RequestPermission(ctx, otpclient.Request{Action: "human.x"})
		require.NoError(t, err)
		e.decide(p.ID, otpclient.Decision{Approved: true})
		e.faults.add(fault{method: "GET", suffix: "/permission", n: 1, drop: true, after: true})
		// A different client never saw the request, so it cannot replay it.
		_, err = e.client().WaitForDecision(ctx, p.ID)
		require.ErrorIs(t, err, otpclient.ErrTokenUnavailable)
	})
}

func TestUseIsNeverRetriedBlindly(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		fault   fault
		wantErr error
		reached int
		spent   bool
	}{
		{name: "429: nothing happened, retried", fault: fault{status: 429, retryAfter: "0"}, reached: 1, spent: true},
		{name: "503 before the server acted: not retried", fault: fault{status: 503}, wantErr: otpclient.ErrServer, reached: 0},
		{name: "503 after the server acted: not retried", fault: fault{status: 503, after: true}, wantErr: otpclient.ErrServer,
			reached: 1, spent: true},
		{name: "connection lost after the server acted: not retried", fault: fault{drop: true, after: true}, reached: 1, spent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.client()
			p, err := c.RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
			require.NoError(t, err)
			tt.fault.method, tt.fault.suffix, tt.fault.n = "POST", "/use", 1
			e.faults.add(tt.fault)
			_, err = c.Use(ctx, p.ID, p.Token, nil)
			switch {
			case tt.wantErr != nil:
				require.ErrorIs(t, err, tt.wantErr)
			case tt.fault.drop:
				require.Error(t, err)
			default:
				require.NoError(t, err)
			}
			require.Equal(t, tt.reached, e.faults.calls("POST /use"))
			v, err := c.Verify(ctx, p.ID, p.Token)
			require.NoError(t, err)
			require.Equal(t, !tt.spent, v.Valid)
		})
	}
}

func TestDo(t *testing.T) {
	ctx := context.Background()
	errBoom := errors.New("boom")
	tests := []struct {
		name    string
		action  string
		fault   *fault
		fn      error
		decide  *otpclient.Decision
		wantErr error
		runs    int32
		uses    int
	}{
		{name: "auto-approved: spends then runs", action: "auto.x", runs: 1, uses: 1},
		{name: "human-approved: waits, spends, runs", action: "human.x", decide: &otpclient.Decision{Approved: true}, runs: 1, uses: 1},
		{name: "fn error is returned; the use is not given back", action: "auto.x", fn: errBoom, wantErr: errBoom, runs: 1, uses: 1},
		{name: "denied: fn never runs", action: "deny.x", wantErr: otpclient.ErrDenied, runs: 0},
		{name: "human denies: fn never runs", action: "human.x", decide: &otpclient.Decision{Approved: false, Reason: "no"},
			wantErr: otpclient.ErrDenied, runs: 0},
		{name: "use answer lost: fn never runs, no second use", action: "auto.x",
			fault: &fault{method: "POST", suffix: "/use", n: 1, status: 503, after: true}, wantErr: otpclient.ErrServer, runs: 0, uses: 1},
		{name: "use rate limited: retried, fn runs once", action: "auto.x",
			fault: &fault{method: "POST", suffix: "/use", n: 2, status: 429, retryAfter: "0"}, runs: 1, uses: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.client()
			if tt.fault != nil {
				e.faults.add(*tt.fault)
			}
			var runs atomic.Int32
			var seen agentotp.Secret
			opts := []otpclient.RequestOption{otpclient.UseDetails(map[string]any{"n": 1})}
			decided := make(chan struct{})
			if tt.decide != nil {
				opts = append(opts, otpclient.OnPending(func(p *otpclient.Permission) {
					d := *tt.decide
					time.AfterFunc(50*time.Millisecond, func() { defer close(decided); e.decide(p.ID, d) })
				}))
				// The decider's answer may still be on the wire when Do
				// returns: let it land before the server shuts down.
				defer func() { <-decided }()
			}
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			err := c.Do(cctx, otpclient.Request{Action: tt.action}, func(_ context.Context, tok agentotp.Secret) error {
				runs.Add(1)
				seen = tok
				return tt.fn
			}, opts...)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tt.runs, runs.Load())
			require.Equal(t, tt.uses, e.faults.calls("POST /use"))
			if tt.runs == 1 {
				require.True(t, agentotp.ValidTokenFormat(seen.Reveal()))
			}
		})
	}
}

// authorizer is the interface tool guards declare.
type authorizer interface {
	Authorize(ctx context.Context, req agentotp.PermissionRequest, wait time.Duration) (*agentotp.Permission, agentotp.Secret, error)
	Spend(ctx context.Context, id agentotp.PermissionID, token agentotp.Secret, details map[string]any) error
}

var (
	_ authorizer = (*otpclient.Client)(nil)
	_ authorizer = (*agentotp.AgentSession)(nil)
)

func TestAuthorizeSpendMatchesAgentSession(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent, err := e.svc.Store().Agent(ctx, agentotp.AgentID(e.agent.ID))
	require.NoError(t, err)
	impls := map[string]authorizer{
		"client":  e.client(),
		"session": e.svc.AgentSession(agentotp.Principal{Agent: agent}),
	}
	for name, a := range impls {
		t.Run(name, func(t *testing.T) {
			p, tok, err := a.Authorize(ctx, agentotp.PermissionRequest{Action: "auto.x", Scope: map[string]any{"input": "hi"}}, 0)
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusApproved, p.Status)
			require.NotEmpty(t, tok)
			require.Equal(t, map[string]any{"input": "hi"}, p.GrantedScope)
			require.Error(t, a.Spend(ctx, p.ID, tok, map[string]any{"input": "other"}), "outside the scope")
			require.NoError(t, a.Spend(ctx, p.ID, tok, map[string]any{"input": "hi"}))
			err = a.Spend(ctx, p.ID, tok, nil)
			require.ErrorIs(t, err, agentotp.ErrConflict)

			p, tok, err = a.Authorize(ctx, agentotp.PermissionRequest{Action: "deny.x"}, time.Second)
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusDenied, p.Status)
			require.Equal(t, denyReason, p.DecisionReason)
			require.Empty(t, tok)

			p, tok, err = a.Authorize(ctx, agentotp.PermissionRequest{Action: "human.x"}, 300*time.Millisecond)
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusPending, p.Status)
			require.Empty(t, tok)
			require.False(t, p.ExpiresAt().IsZero())

			approved := make(chan struct{})
			go func() { defer close(approved); e.approveWhenPending(t, "human.approve-"+name) }()
			t.Cleanup(func() { <-approved })
			p, tok, err = a.Authorize(ctx, agentotp.PermissionRequest{Action: "human.approve-" + name}, 10*time.Second)
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusApproved, p.Status)
			require.NoError(t, a.Spend(ctx, p.ID, tok, nil))
		})
	}
}

type spender interface {
	authorizer
	AuthorizeAndSpend(ctx context.Context, req agentotp.PermissionRequest, wait time.Duration, details map[string]any) (*agentotp.Permission, agentotp.Secret, *agentotp.UseResult, error)
}

var (
	_ spender = (*otpclient.Client)(nil)
	_ spender = (*agentotp.AgentSession)(nil)
)

func TestAuthorizeAndSpendMatchesAgentSession(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent, err := e.svc.Store().Agent(ctx, agentotp.AgentID(e.agent.ID))
	require.NoError(t, err)
	impls := map[string]spender{
		"client":  e.client(),
		"session": e.svc.AgentSession(agentotp.Principal{Agent: agent}),
	}
	for name, a := range impls {
		t.Run(name, func(t *testing.T) {
			hi := map[string]any{"input": "hi"}
			p, tok, used, err := a.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "auto.x", Scope: hi}, 0, hi)
			require.NoError(t, err)
			require.Equal(t, &agentotp.UseResult{Success: true}, used)
			require.Equal(t, agentotp.StatusUsed, p.Status)
			require.Zero(t, p.UsesRemaining)
			stored, err := e.svc.Store().Permission(ctx, p.ID)
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusUsed, stored.Status, "spent in the request's own write")
			require.ErrorIs(t, a.Spend(ctx, p.ID, tok, hi), agentotp.ErrConflict, "single use")

			p, tok, used, err = a.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "auto.x", Scope: hi, Uses: 2}, 0, hi)
			require.NoError(t, err)
			require.Equal(t, &agentotp.UseResult{Success: true, UsesRemaining: 1}, used)
			require.Equal(t, agentotp.StatusApproved, p.Status)
			require.Equal(t, 1, p.UsesRemaining)
			require.NoError(t, a.Spend(ctx, p.ID, tok, hi), "the token keeps its remaining use")

			p, tok, used, err = a.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "auto.x", Scope: hi}, 0, map[string]any{"input": "other"})
			require.NoError(t, err)
			require.NotNil(t, used)
			require.False(t, used.Success, "outside the scope: refused, nothing spent")
			require.NotEmpty(t, used.Reason)
			require.Equal(t, agentotp.StatusApproved, p.Status)
			require.NoError(t, a.Spend(ctx, p.ID, tok, hi))

			p, tok, used, err = a.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "deny.x"}, time.Second, hi)
			require.NoError(t, err)
			require.Nil(t, used)
			require.Equal(t, agentotp.StatusDenied, p.Status)
			require.Empty(t, tok)

			p, tok, used, err = a.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "human.x"}, 200*time.Millisecond, hi)
			require.NoError(t, err)
			require.Nil(t, used, "pending: nothing spent")
			require.Equal(t, agentotp.StatusPending, p.Status)
			require.Empty(t, tok)

			approved := make(chan struct{})
			go func() { defer close(approved); e.approveWhenPending(t, "human.spend-"+name) }()
			t.Cleanup(func() { <-approved })
			p, tok, used, err = a.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "human.spend-" + name}, 10*time.Second, hi)
			require.NoError(t, err)
			require.Nil(t, used, "a human's approval is spent separately")
			require.Equal(t, agentotp.StatusApproved, p.Status)
			require.NoError(t, a.Spend(ctx, p.ID, tok, nil))
		})
	}
}

// A response lost after the server asked and spent: the client's retry
// (same idempotency key) is answered from the first request and spends
// nothing more.
func TestAuthorizeAndSpendLostResponse(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.faults.add(fault{method: http.MethodPost, suffix: "/request", n: 1, status: 503, after: true})
	c := e.client()
	hi := map[string]any{"input": "hi"}
	p, _, used, err := c.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "auto.lost", Scope: hi, IdempotencyKey: "lost-1"}, 0, hi)
	require.NoError(t, err)
	require.Equal(t, 2, e.faults.calls("POST /request"), "retried once")
	require.Nil(t, used, "the retry does not spend again")
	require.Equal(t, agentotp.StatusUsed, p.Status, "the first attempt's use stands")
	events, err := e.svc.Store().AuditEvents(ctx, agentotp.AuditFilter{PermissionID: p.ID})
	require.NoError(t, err)
	uses := 0
	for _, ev := range events {
		if ev.Type == agentotp.EventUse {
			uses++
		}
	}
	require.Equal(t, 1, uses)
}

// Against a server that ignores the request's "use" (Agent OTP v0.1.1),
// nothing is spent with the request and the caller spends as usual.
func TestAuthorizeAndSpendOlderServer(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	strip := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/request") {
			var body map[string]any
			require.NoError(t, json.NewDecoder(r.Body).Decode(&body))
			require.Contains(t, body, "use", "the client asks to spend with the request")
			delete(body, "use")
			b, err := json.Marshal(body)
			require.NoError(t, err)
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		}
		e.faults.ServeHTTP(w, r)
	}))
	t.Cleanup(strip.Close)
	c := otpclient.New(strip.URL, e.agent.APIKey, fast())
	hi := map[string]any{"input": "hi"}
	p, tok, used, err := c.AuthorizeAndSpend(ctx, agentotp.PermissionRequest{Action: "auto.old", Scope: hi}, 0, hi)
	require.NoError(t, err)
	require.Nil(t, used)
	require.Equal(t, agentotp.StatusApproved, p.Status)
	require.NoError(t, c.Spend(ctx, p.ID, tok, hi))
}

// A client keeps its connections to the server for concurrent calls: a
// gateway runs many at once, and http.DefaultTransport keeps only two idle
// per host, so every burst would close and re-dial the rest.
func TestConcurrentCallsReuseConnections(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	var dialed atomic.Int64
	front := httptest.NewUnstartedServer(e.faults)
	front.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dialed.Add(1)
		}
	}
	front.Start()
	t.Cleanup(front.Close)
	c := otpclient.New(front.URL, e.agent.APIKey, fast())
	p, err := c.RequestPermission(ctx, otpclient.Request{Action: "auto.x"})
	require.NoError(t, err)

	const parallel, rounds = 8, 20
	for range rounds {
		var wg sync.WaitGroup
		for range parallel {
			wg.Go(func() {
				v, err := c.Verify(ctx, p.ID, p.Token)
				if assert.NoError(t, err) {
					assert.True(t, v.Valid)
				}
			})
		}
		wg.Wait()
	}
	require.LessOrEqual(t, dialed.Load(), int64(parallel+1),
		"%d connections for %d rounds of %d concurrent calls", dialed.Load(), rounds, parallel)
}
