package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// TestWithdrawPending: the agent withdraws a pending request; a late
// decision is refused and audited.
func TestWithdrawPending(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("withdrawer")
	p := e.pending(agent.Key, "deploy.prod")
	var rv permView
	e.do("POST", "/api/v1/permissions/"+p.ID+"/revoke", agent.Key, map[string]any{"reason": "not needed"}).data(t, http.StatusOK, &rv)
	// To its agent, a request withdrawn before a decision reads as the
	// refusal it is (v0.1.1 clients know no "revoked"); staff see revoked.
	require.Equal(t, "denied", rv.Status)
	e.decide(e.adminKey, p.ID, true, "").fail(t, http.StatusConflict, "CONFLICT")
	var got permView
	e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &got)
	require.Equal(t, "denied", got.Status)
	e.do("GET", "/api/v1/permissions/"+p.ID, e.adminKey, nil).data(t, http.StatusOK, &got)
	require.Equal(t, "revoked", got.Status)
	require.Empty(t, got.Token)
	require.Equal(t, []string{"request", "revoke", "decide_rejected"}, eventTypes(e.auditOf(p.ID)))
	var pending []permView
	e.do("GET", "/api/v1/approvals", e.adminKey, nil).data(t, http.StatusOK, &pending)
	require.Empty(t, pending)
}

// TestApproverRules: a rule's approver list is enforced, and a quorum
// counts distinct people.
func TestApproverRules(t *testing.T) {
	eval := agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
		d := agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "r"}
		switch {
		case strings.HasPrefix(in.Action, "named."):
			d.Approvers = []string{"alice"}
		case strings.HasPrefix(in.Action, "quorum."):
			d.Quorum = 2
		}
		return d, nil
	})
	e := newTestServer(t, withEvaluator(eval))
	agent := e.createAgent("asker")
	alice := e.createUser("alice", "approver")
	bob := e.createUser("bob", "approver")

	t.Run("approver list", func(t *testing.T) {
		p := e.pending(agent.Key, "named.deploy")
		e.decide(bob.Key, p.ID, true, "").fail(t, http.StatusForbidden, "FORBIDDEN")
		var d permView
		e.decide(alice.Key, p.ID, true, "").data(t, http.StatusOK, &d)
		require.Equal(t, "approved", d.Status)
	})

	t.Run("quorum of two distinct approvers", func(t *testing.T) {
		p := e.pending(agent.Key, "quorum.deploy")
		var d permView
		e.decide(alice.Key, p.ID, true, "one").data(t, http.StatusOK, &d)
		require.Equal(t, "pending", d.Status, "one approval is not a quorum")
		var got permView
		e.do("GET", "/api/v1/permissions/"+p.ID, agent.Key, nil).data(t, http.StatusOK, &got)
		require.Equal(t, "pending", got.Status)
		require.Empty(t, got.Token)

		e.decide(alice.Key, p.ID, true, "again").fail(t, http.StatusConflict, "CONFLICT")
		d = permView{}
		e.decide(bob.Key, p.ID, true, "two").data(t, http.StatusOK, &d)
		require.Equal(t, "approved", d.Status)
		require.Equal(t, []string{"request", "vote", "decide_rejected", "approve"}, eventTypes(e.auditOf(p.ID)))
		e.fetchToken(agent.Key, p.ID)
	})
}

// TestConcurrentIdempotency: ten simultaneous retries with one key make
// one permission and leave exactly one live token.
func TestConcurrentIdempotency(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("eager")
	const n = 10
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		out   [n]resp
		errs  [n]error
	)
	for i := range n {
		wg.Go(func() {
			<-start
			out[i], errs[i] = e.try(context.Background(), "POST", "/api/v1/permissions/request", agent.Key,
				map[string]any{"action": "auto.pay", "resource": "invoice:7", "idempotencyKey": "pay-7"})
		})
	}
	close(start)
	wg.Wait()
	ids := map[string]bool{}
	var tokens []string
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, http.StatusCreated, out[i].Status, "body: %s", out[i].Body)
		var env struct {
			Data permView `json:"data"`
		}
		require.NoError(t, json.Unmarshal(out[i].Body, &env))
		ids[env.Data.ID] = true
		if env.Data.Token != "" {
			tokens = append(tokens, env.Data.Token)
		}
	}
	require.Len(t, ids, 1, "one permission")
	var id string
	for k := range ids {
		id = k
	}
	live := 0
	for _, tok := range tokens {
		if e.verify(agent.Key, id, tok).Valid {
			live++
		}
	}
	require.Equal(t, 1, live, "exactly one live token among %d handed out", len(tokens))
	counts := map[string]int{}
	for _, ev := range e.auditOf(id) {
		counts[ev.EventType]++
	}
	require.Equal(t, 1, counts["request"])
	// The first token goes out with the policy's approval, re-issues as
	// token_issue events.
	require.Equal(t, 1, counts["approve"])
	require.Equal(t, len(tokens), counts["approve"]+counts["token_issue"], "every token handed out is audited")
}
