package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// Two instances of the service, as two Store values on one database, each
// running the same workflows at once. Everything the SQLite store
// guarantees through its single writer must hold across them.

var t0 = time.Date(2031, 7, 14, 15, 9, 26, 535897932, time.UTC)

func testKey(t *testing.T) *agentotp.AuditKey {
	t.Helper()
	key, err := agentotp.NewAuditKey([]byte(strings.Repeat("two instances, one key ", 2)))
	require.NoError(t, err)
	return key
}

// twoInstances opens two keyed stores on a fresh database.
func twoInstances(t *testing.T) (*postgres.Store, *postgres.Store, []*postgres.Store) {
	dsn := pgtest.NewDatabase(t)
	key := testKey(t)
	a, b := open(t, dsn, postgres.Options{AuditKey: key}), open(t, dsn, postgres.Options{AuditKey: key})
	return a, b, []*postgres.Store{a, b}
}

// parallel runs fn(i) for i in [0, n) at once, each on store i%2.
func parallel(n int, stores []*postgres.Store, fn func(i int, s *postgres.Store)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			fn(i, stores[i%len(stores)])
		})
	}
	close(start)
	wg.Wait()
}

// verified checks the whole trail as `agentotp audit verify` does: chain,
// MACs, signed head, and every permission against its events.
func verified(t *testing.T, s agentotp.Store) agentotp.AuditReport {
	t.Helper()
	svc := agentotp.NewService(s, agentotp.Options{})
	rep, err := svc.VerifyAuditWith(context.Background(), agentotp.Principal{System: true}, agentotp.AuditVerifyOptions{})
	require.NoError(t, err)
	require.True(t, rep.OK, "audit verification: %s", rep.Reason)
	return rep
}

func newAgent(t *testing.T, s agentotp.Store, name string) *agentotp.Agent {
	t.Helper()
	ctx := context.Background()
	a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: name, KeyHash: agentotp.HashSecret(name), Active: true}
	require.NoError(t, s.Update(ctx, func(tx agentotp.Tx) error {
		if err := tx.CreateAgent(ctx, a); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: t0, Type: agentotp.EventAgentCreate, ActorType: "system", AgentID: a.ID})
	}))
	return a
}

func event(typ agentotp.EventType, p *agentotp.Permission, details map[string]any) *agentotp.AuditEvent {
	return &agentotp.AuditEvent{Time: t0, Type: typ, ActorType: "agent", ActorID: string(p.AgentID),
		AgentID: p.AgentID, PermissionID: p.ID, Details: details}
}

// request creates p with its request event, as the service does.
func request(ctx context.Context, tx agentotp.Tx, p *agentotp.Permission) error {
	if err := tx.CreatePermission(ctx, p); err != nil {
		return err
	}
	return tx.AppendAudit(ctx, event(agentotp.EventRequest, p, map[string]any{"uses": p.Uses}))
}

func TestSpendOneTokenOverTwoInstances(t *testing.T) {
	for _, uses := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d uses", uses), func(t *testing.T) {
			ctx := context.Background()
			a, _, both := twoInstances(t)
			agent := newAgent(t, a, "spender")
			hash := agentotp.HashSecret(string(agentotp.NewToken()))
			p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "db.query",
				Status: agentotp.StatusApproved, CreatedAt: t0, Decision: agentotp.Decision{Effect: agentotp.EffectAutoApprove},
				Uses: uses, UsesRemaining: uses, TokenExpiresAt: t0.Add(time.Hour), TokenHash: hash, TokenIssuedAt: t0}
			require.NoError(t, a.Update(ctx, func(tx agentotp.Tx) error {
				if err := request(ctx, tx, p); err != nil {
					return err
				}
				return tx.AppendAudit(ctx, event(agentotp.EventApprove, p, map[string]any{"token": map[string]any{"uses": uses}}))
			}))

			var ok, refused atomic.Int64
			parallel(128, both, func(_ int, s *postgres.Store) {
				err := s.Update(ctx, func(tx agentotp.Tx) error {
					left, err := tx.SpendToken(ctx, p.ID, agent.ID, hash, t0.Add(time.Second))
					if errors.Is(err, agentotp.ErrConflict) {
						refused.Add(1)
						return tx.AppendAudit(ctx, event(agentotp.EventUseRejected, p, map[string]any{"reason": "used"}))
					}
					if err != nil {
						return err
					}
					ok.Add(1)
					return tx.AppendAudit(ctx, event(agentotp.EventUse, p, map[string]any{"usesRemaining": left}))
				})
				if err != nil {
					t.Errorf("spend: %v", err)
				}
			})
			require.Equal(t, int64(uses), ok.Load(), "exactly the granted uses succeed")
			require.Equal(t, int64(128-uses), refused.Load())
			for _, s := range both {
				got, err := s.Permission(ctx, p.ID)
				require.NoError(t, err)
				require.Equal(t, agentotp.StatusUsed, got.Status)
				require.Zero(t, got.UsesRemaining)
			}
			rep := verified(t, a)
			require.Equal(t, int64(1+2+128), rep.Checked)
			require.Equal(t, int64(1), rep.Permissions)
		})
	}
}

// Budgets and the pending cap are counted inside the transaction; 100
// requests at once over two instances never get past them.
func TestCountsHoldOverTwoInstances(t *testing.T) {
	cases := []struct {
		name    string
		limit   int
		pattern string
		since   time.Time
		st      []agentotp.Status
		action  func(i int) string
		created func(i int) time.Time
	}{
		{"pending cap", 10, "*", time.Time{}, []agentotp.Status{agentotp.StatusPending},
			func(int) string { return "db.query" }, func(int) time.Time { return t0 }},
		{"budget by action since a moment", 7, "db.*", t0, nil,
			func(i int) string { return []string{"db.query", "db.write", "email.send"}[i%3] },
			func(i int) time.Time { return t0.Add(time.Duration(i) * time.Millisecond) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			a, _, both := twoInstances(t)
			agent := newAgent(t, a, "eager")
			// Permissions from before the window or of other statuses do
			// not count.
			old := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "db.old",
				Status: agentotp.StatusDenied, CreatedAt: t0.Add(-time.Hour), Uses: 1}
			require.NoError(t, a.Update(ctx, func(tx agentotp.Tx) error {
				if err := request(ctx, tx, old); err != nil {
					return err
				}
				return tx.AppendAudit(ctx, event(agentotp.EventDeny, old, nil))
			}))
			limited := errors.New("over the limit")
			var ok, refused atomic.Int64
			parallel(100, both, func(i int, s *postgres.Store) {
				err := s.Update(ctx, func(tx agentotp.Tx) error {
					n, err := tx.CountPermissions(ctx, agent.ID, tc.pattern, tc.since, tc.st)
					if err != nil {
						return err
					}
					action := tc.action(i)
					if n >= tc.limit && strings.HasPrefix(action, strings.TrimSuffix(tc.pattern, "*")) {
						return limited
					}
					return request(ctx, tx, &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID,
						Action: action, Status: agentotp.StatusPending, CreatedAt: tc.created(i), Uses: 1})
				})
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, limited):
					refused.Add(1)
				default:
					t.Errorf("request: %v", err)
				}
			})
			for _, s := range both {
				n, err := s.CountPermissions(ctx, agent.ID, tc.pattern, tc.since, tc.st)
				require.NoError(t, err)
				require.Equal(t, tc.limit, n, "never past the limit")
			}
			require.Equal(t, int64(100), ok.Load()+refused.Load())
			verified(t, a)
		})
	}
}

// A retried request carrying the same idempotency key, arriving at both
// instances at once, creates one permission; every other attempt finds it.
func TestIdempotencyOverTwoInstances(t *testing.T) {
	ctx := context.Background()
	a, _, both := twoInstances(t)
	agent := newAgent(t, a, "retrier")
	var created, found atomic.Int64
	ids := make([]agentotp.PermissionID, 50)
	parallel(50, both, func(i int, s *postgres.Store) {
		err := s.Update(ctx, func(tx agentotp.Tx) error {
			p, err := tx.PermissionByIdempotencyKey(ctx, agent.ID, "retry-me")
			if err == nil {
				found.Add(1)
				ids[i] = p.ID
				return nil
			}
			if !errors.Is(err, agentotp.ErrNotFound) {
				return err
			}
			q := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, IdempotencyKey: "retry-me",
				Status: agentotp.StatusPending, CreatedAt: t0, Uses: 1}
			created.Add(1)
			ids[i] = q.ID
			return request(ctx, tx, q)
		})
		if err != nil {
			t.Errorf("request: %v", err)
		}
	})
	require.Equal(t, int64(1), created.Load())
	require.Equal(t, int64(49), found.Load())
	for _, id := range ids {
		require.Equal(t, ids[0], id, "every attempt answers with the one permission")
	}
	verified(t, a)
}

// Approvers voting at once on two instances see each other's votes: the
// quorum is reached exactly once, by the vote that completes it.
func TestQuorumOverTwoInstances(t *testing.T) {
	ctx := context.Background()
	a, b, both := twoInstances(t)
	agent := newAgent(t, a, "asker")
	const approvers, quorum = 6, 3
	users := make([]*agentotp.User, approvers)
	for i := range users {
		users[i] = &agentotp.User{ID: agentotp.NewUserID(), Name: fmt.Sprint("approver", i), Role: agentotp.RoleApprover,
			Active: true, KeyHash: agentotp.HashSecret(fmt.Sprint("u", i))}
		require.NoError(t, b.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateUser(ctx, users[i]) }))
	}
	p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "deploy",
		Status: agentotp.StatusPending, CreatedAt: t0, Uses: 1, Decision: agentotp.Decision{Quorum: quorum}}
	require.NoError(t, a.Update(ctx, func(tx agentotp.Tx) error { return request(ctx, tx, p) }))

	var decided, late atomic.Int64
	counts := make([]int, approvers)
	parallel(approvers, both, func(i int, s *postgres.Store) {
		err := s.Update(ctx, func(tx agentotp.Tx) error {
			cur, err := tx.Permission(ctx, p.ID)
			if err != nil {
				return err
			}
			if cur.Status != agentotp.StatusPending {
				late.Add(1)
				return tx.AppendAudit(ctx, event(agentotp.EventDecideRejected, cur, nil))
			}
			if err := tx.AddApproval(ctx, agentotp.Approval{PermissionID: p.ID, UserID: users[i].ID, Approved: true, CreatedAt: t0}); err != nil {
				return err
			}
			votes, err := tx.Approvals(ctx, p.ID)
			if err != nil {
				return err
			}
			counts[i] = len(votes)
			if len(votes) < quorum {
				return tx.AppendAudit(ctx, event(agentotp.EventVote, cur, map[string]any{"approvals": len(votes)}))
			}
			cur.Status = agentotp.StatusApproved
			if err := tx.UpdatePermission(ctx, cur, agentotp.StatusPending); err != nil {
				return err
			}
			decided.Add(1)
			return tx.AppendAudit(ctx, event(agentotp.EventApprove, cur, nil))
		})
		if err != nil {
			t.Errorf("vote: %v", err)
		}
	})
	require.Equal(t, int64(1), decided.Load(), "the quorum is reached once")
	require.Equal(t, int64(approvers-quorum), late.Load(), "votes after the decision are refused")
	seen := map[int]bool{}
	for _, n := range counts {
		if n > 0 {
			require.False(t, seen[n], "two votes counted the same number of approvals: %v", counts)
			seen[n] = true
		}
	}
	got, err := b.Permission(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusApproved, got.Status)
	verified(t, a)
}

// Appends from two instances at once form one chain with no gaps or forks,
// its head signed, and verify.
func TestAuditChainOverTwoInstances(t *testing.T) {
	ctx := context.Background()
	a, b, both := twoInstances(t)
	const writers, each = 16, 30
	parallel(writers, both, func(w int, s *postgres.Store) {
		for i := range each {
			err := s.Update(ctx, func(tx agentotp.Tx) error {
				return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: t0.Add(time.Duration(i) * time.Second),
					Type: agentotp.EventPolicyReload, ActorType: "system", Details: map[string]any{"writer": w, "i": i}})
			})
			if err != nil {
				t.Errorf("append: %v", err)
			}
		}
	})
	for _, s := range []*postgres.Store{a, b} {
		rep := verified(t, s)
		require.Equal(t, int64(writers*each), rep.Checked)
		require.Equal(t, int64(1), rep.KeyedFrom)
		seq, _, err := s.AuditHead(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(writers*each), seq)
	}
	var commits, updates int64
	for _, s := range both {
		st := s.Stats()
		commits, updates = commits+st.Commits, updates+st.Updates
	}
	require.Equal(t, int64(writers*each), updates)
	t.Logf("%d updates in %d commits", updates, commits)
}

// Concurrent callers of one instance share commits (group commit).
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	s := open(t, pgtest.NewDatabase(t), postgres.Options{})
	hold := make(chan struct{})
	var first sync.WaitGroup
	first.Add(1)
	go func() {
		defer first.Done()
		// The first batch waits inside fn while the others queue up.
		_ = s.Update(ctx, func(agentotp.Tx) error { <-hold; return nil })
	}()
	time.Sleep(50 * time.Millisecond)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: fmt.Sprint("g", i), KeyHash: fmt.Sprint("g", i)}
			if err := s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) }); err != nil {
				t.Errorf("update: %v", err)
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	close(hold)
	wg.Wait()
	first.Wait()
	st := s.Stats()
	require.Equal(t, int64(21), st.Updates)
	require.LessOrEqual(t, st.Commits, int64(3), "the 20 queued updates share a commit or two")
}

// A request carrying its use, sent 100 times at once with one idempotency
// key through services on both instances, is spent once: the permission is
// inserted already spent, and every other attempt is a retry found by the
// key's unique index and answered from it, with nothing spent again.
func TestRequestAndUseOverTwoInstances(t *testing.T) {
	ctx := context.Background()
	a, _, both := twoInstances(t)
	agent := agentotp.Principal{Agent: newAgent(t, a, "gateway")}
	auto := agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
		return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "auto"}, nil
	})
	svcs := map[*postgres.Store]*agentotp.Service{}
	for _, s := range both {
		svcs[s] = agentotp.NewService(s, agentotp.Options{Evaluator: auto})
	}
	req := agentotp.PermissionRequest{Action: "mcp.fs.read", Scope: map[string]any{"path": "/a"}, IdempotencyKey: "call-1",
		Tool: &agentotp.ToolCall{Server: "fs", Name: "read", Args: map[string]any{"path": "/a"}}}
	var spent, retried atomic.Int64
	ids := make([]agentotp.PermissionID, 100)
	parallel(len(ids), both, func(i int, s *postgres.Store) {
		perm, tok, used, err := svcs[s].RequestAndUse(ctx, agent, req, map[string]any{"path": "/a"})
		if err != nil {
			t.Errorf("request %d: %v", i, err)
			return
		}
		ids[i] = perm.ID
		switch {
		case used != nil && used.Success && tok != "":
			spent.Add(1)
		case used == nil && tok == "" && perm.Status == agentotp.StatusUsed:
			retried.Add(1)
		default:
			t.Errorf("request %d: status %s, use %+v, token %t", i, perm.Status, used, tok != "")
		}
	})
	require.EqualValues(t, 1, spent.Load())
	require.EqualValues(t, len(ids)-1, retried.Load())
	for _, id := range ids {
		require.Equal(t, ids[0], id)
	}
	stored, err := a.Permission(ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusUsed, stored.Status)
	require.Zero(t, stored.UsesRemaining)
	verified(t, a)
}
