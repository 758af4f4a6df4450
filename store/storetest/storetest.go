// Package storetest is the contract every agentotp.Store passes. A store's
// own tests call Run with a function that opens a fresh, empty store (and
// closes it when the test ends); stores that can be shared by processes also
// call RunTwoStores.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/stretchr/testify/require"
)

// Opener returns a fresh, empty store for one test and arranges its Close.
type Opener func(t *testing.T) agentotp.Store

// Run runs the whole contract, each subtest on its own fresh store.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s agentotp.Store)
	}{
		{"PermissionRoundTrip", testPermissionRoundTrip},
		{"AgentRoundTrip", testAgentRoundTrip},
		{"UserRoundTrip", testUserRoundTrip},
		{"PolicyRoundTrip", testPolicyRoundTrip},
		{"ApprovalRoundTripAndUniqueness", testApprovals},
		{"AuditRoundTrip", testAuditRoundTrip},
		{"Uniqueness", testUniqueness},
		{"NotFound", testNotFound},
		{"UpdatePermissionCAS", testUpdatePermissionCAS},
		{"IssueTokenOnce", testIssueTokenOnce},
		{"SpendTokenRejects", testSpendTokenRejects},
		{"SpendTokenUses", testSpendTokenUses},
		{"SpendTokenConcurrent", func(t *testing.T, s agentotp.Store) { testConcurrentSpend(t, s, s) }},
		{"IdempotencyKey", testIdempotencyKey},
		{"DeleteKeepsHistory", testDeleteKeepsHistory},
		{"RollbackOnError", testRollback},
		{"ConcurrentUpdatesIsolated", testConcurrentUpdatesIsolated},
		{"CallerLeavingMidUpdate", testCallerLeavingMidUpdate},
		{"AuditChain", testAuditChain},
		{"AuditFilters", testAuditFilters},
		{"AuditStats", testAuditStats},
		{"PermissionsList", testPermissionsList},
		{"DuePermissions", testDuePermissions},
		{"CountPermissions", testCountPermissions},
		{"StorageUsage", testStorageUsage},
		{"PrunePermissions", testPrunePermissions},
		{"PruneInBatches", testPruneInBatches},
		{"Ping", func(t *testing.T, s agentotp.Store) { require.NoError(t, s.Ping(context.Background())) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
	t.Run("ConsoleSessions", func(t *testing.T) { RunConsoleSessions(t, open) })
}

// RunTwoStores checks stores that share one database, as two processes on
// one file do: open2 returns two stores opened separately on the same fresh
// database.
func RunTwoStores(t *testing.T, open2 func(t *testing.T) (agentotp.Store, agentotp.Store)) {
	t.Run("SpendTokenConcurrent", func(t *testing.T) {
		a, b := open2(t)
		testConcurrentSpend(t, a, b)
	})
	t.Run("AuditChainConcurrent", func(t *testing.T) {
		a, b := open2(t)
		testConcurrentAudit(t, a, b)
	})
	t.Run("StorageUsageConcurrent", func(t *testing.T) {
		a, b := open2(t)
		testConcurrentQuota(t, a, b)
	})
	t.Run("SeesOtherWrites", func(t *testing.T) {
		a, b := open2(t)
		ag := createAgent(t, a, "shared")
		got, err := b.Agent(context.Background(), ag.ID)
		require.NoError(t, err)
		require.Equal(t, ag, got)
	})
}

// Values that break naive SQL, JSON or encodings.
const (
	injection = `'; DROP TABLE agents;--`
	quotes    = `"double" 'single' \back\slash` + "`tick`"
	unicode   = "Zürich — 東京 — Ελλάδα — \u200b zero width — عربى"
	emoji     = "🔐🤖👩🏽‍💻🇪🇺"
)

var long = strings.Repeat("long ✓ ", 20000) // about 180 KB

// base is an arbitrary instant with nanoseconds; every time in the suite is
// derived from it (UTC, no monotonic reading) so round trips compare with
// require.Equal.
var base = time.Date(2031, 7, 14, 15, 9, 26, 535897932, time.UTC)

func at(d time.Duration) time.Time { return base.Add(d) }

// object returns a JSON-shaped map (the shapes encoding/json decodes to).
func object() map[string]any {
	return map[string]any{
		"sql":     injection,
		"quotes":  quotes,
		"unicode": unicode,
		"emoji":   emoji,
		emoji:     "key is an emoji",
		"html":    "<script>&amp;</script>",
		"num":     1.5,
		"big":     1e300,
		"neg":     -0.000123,
		"int":     float64(1 << 52),
		"bool":    true,
		"null":    nil,
		"list":    []any{"a", 2.0, false, nil, map[string]any{"deep": []any{injection}}},
		"nested":  map[string]any{"empty": map[string]any{}, "emptyList": []any{}},
	}
}

func update(t *testing.T, s agentotp.Store, fn func(tx agentotp.Tx) error) {
	t.Helper()
	require.NoError(t, s.Update(context.Background(), fn))
}

func createAgent(t *testing.T, s agentotp.Store, name string) *agentotp.Agent {
	t.Helper()
	a := &agentotp.Agent{
		ID: agentotp.NewAgentID(), Name: name, Description: "agent " + name, Active: true,
		KeyHash: agentotp.HashSecret("key-" + name), KeyPrefix: "ak_" + name[:min(len(name), 5)],
		Metadata: map[string]any{"team": name}, CreatedAt: base, UpdatedAt: base,
	}
	update(t, s, func(tx agentotp.Tx) error { return tx.CreateAgent(context.Background(), a) })
	return a
}

func createUser(t *testing.T, s agentotp.Store, name string) *agentotp.User {
	t.Helper()
	u := &agentotp.User{
		ID: agentotp.NewUserID(), Name: name, Role: agentotp.RoleApprover, Active: true,
		KeyHash: agentotp.HashSecret("ukey-" + name), KeyPrefix: "uk_x", CreatedAt: base, UpdatedAt: base,
	}
	update(t, s, func(tx agentotp.Tx) error { return tx.CreateUser(context.Background(), u) })
	return u
}

// fullPermission returns a permission with every field set to a distinct,
// awkward value.
func fullPermission(agent agentotp.AgentID) *agentotp.Permission {
	id := agentotp.NewPermissionID()
	return &agentotp.Permission{
		ID:             id,
		AgentID:        agent,
		Action:         "db.query" + injection,
		Resource:       quotes + unicode + emoji,
		Scope:          object(),
		Context:        map[string]any{"ticket": "OPS-1", "why": long},
		IdempotencyKey: "idem-" + emoji + injection + string(id),
		CallbackURL:    "https://hooks.example.com:8443/cb/" + string(id) + "?q=" + injection + emoji,
		Tool: &agentotp.ToolCall{
			Server: "fs " + quotes, Name: "write_file" + injection + emoji,
			Annotations: map[string]any{"readOnlyHint": false, "title": unicode, "nested": object()},
			ArgsHash:    agentotp.ArgsHash(object()),
		},
		Status:            agentotp.StatusApproved,
		CreatedAt:         at(0),
		UpdatedAt:         at(time.Nanosecond),
		ApprovalExpiresAt: at(5 * time.Minute),
		Decision: agentotp.Decision{
			Effect:        agentotp.EffectRequireApproval,
			Rule:          "rule " + quotes,
			PolicyVersion: "v" + unicode,
			Reason:        "because " + injection,
			Scope:         map[string]any{"rows": 10.0, "table": emoji},
			TokenTTL:      90*time.Second + 7*time.Nanosecond,
			Uses:          7,
			UseWhen:       `details.amount < 100 && details.who != "x'y"`,
			Approvers:     []string{"alice", "admin", emoji, injection},
			Quorum:        2,
		},
		DecisionEventID: agentotp.NewEventID(),
		DecidedBy:       "user:" + string(agentotp.NewUserID()),
		DecidedAt:       at(2 * time.Minute),
		DecisionReason:  "approved: " + quotes,
		GrantedScope:    map[string]any{"rows": 5.0, "list": []any{"a", "b"}},
		TokenTTL:        2*time.Minute + 3*time.Nanosecond,
		Uses:            7,
		UsesRemaining:   6,
		TokenExpiresAt:  at(4 * time.Minute),
		TokenHash:       agentotp.HashSecret(string(agentotp.NewToken())),
		TokenIssuedAt:   at(2*time.Minute + time.Millisecond),
		RevokedAt:       at(3 * time.Minute),
	}
}

// approved returns a live approved permission with an issued token.
func approved(agent agentotp.AgentID, uses int, expires time.Time) (*agentotp.Permission, string) {
	hash := agentotp.HashSecret(string(agentotp.NewToken()))
	return &agentotp.Permission{
		ID: agentotp.NewPermissionID(), AgentID: agent, Action: "db.query", Resource: "db://x",
		Status: agentotp.StatusApproved, CreatedAt: base, UpdatedAt: base, ApprovalExpiresAt: at(time.Minute),
		Decision: agentotp.Decision{Effect: agentotp.EffectAutoApprove}, DecidedBy: "policy", DecidedAt: base,
		TokenTTL: expires.Sub(base), Uses: uses, UsesRemaining: uses, TokenExpiresAt: expires,
		TokenHash: hash, TokenIssuedAt: base,
	}, hash
}

func createPermission(t *testing.T, s agentotp.Store, p *agentotp.Permission) {
	t.Helper()
	update(t, s, func(tx agentotp.Tx) error { return tx.CreatePermission(context.Background(), p) })
}

func spend(s agentotp.Store, id agentotp.PermissionID, agent agentotp.AgentID, hash string, now time.Time) (int, error) {
	var left int
	err := s.Update(context.Background(), func(tx agentotp.Tx) error {
		var err error
		left, err = tx.SpendToken(context.Background(), id, agent, hash, now)
		return err
	})
	return left, err
}

func event(i int, typ agentotp.EventType) *agentotp.AuditEvent {
	return &agentotp.AuditEvent{
		Time: at(time.Duration(i) * time.Minute), Type: typ, ActorType: "system",
		Details: map[string]any{"i": float64(i)},
	}
}

func appendEvents(t *testing.T, s agentotp.Store, events ...*agentotp.AuditEvent) {
	t.Helper()
	update(t, s, func(tx agentotp.Tx) error {
		for _, e := range events {
			if err := tx.AppendAudit(context.Background(), e); err != nil {
				return err
			}
		}
		return nil
	})
}

// verifyChain scans the whole trail through a ChainVerifier.
func verifyChain(t *testing.T, s agentotp.Store) int64 {
	t.Helper()
	v := agentotp.NewChainVerifier()
	require.NoError(t, s.ScanAudit(context.Background(), v.Next))
	return v.Checked
}

func testPermissionRoundTrip(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "roundtrip")
	cases := map[string]func(p *agentotp.Permission){
		"every field": func(*agentotp.Permission) {},
		"zero values": func(p *agentotp.Permission) {
			*p = agentotp.Permission{ID: p.ID, AgentID: p.AgentID, Status: agentotp.StatusPending}
		},
		"empty collections": func(p *agentotp.Permission) {
			p.Scope, p.Context, p.GrantedScope, p.Decision.Scope = map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}
			p.Decision.Approvers = []string{}
		},
		"deny effect": func(p *agentotp.Permission) {
			p.Decision.Effect, p.Status = agentotp.EffectDeny, agentotp.StatusDenied
		},
		"auto approve effect": func(p *agentotp.Permission) { p.Decision.Effect = agentotp.EffectAutoApprove },
		"very long":           func(p *agentotp.Permission) { p.Action, p.Resource, p.DecisionReason = long, long, long },
		"no tool call":        func(p *agentotp.Permission) { p.Tool = nil },
		"tool call with empty strings and no annotations": func(p *agentotp.Permission) {
			p.Tool = &agentotp.ToolCall{}
		},
		"tool call with empty annotations": func(p *agentotp.Permission) {
			p.Tool = &agentotp.ToolCall{Name: "t", Annotations: map[string]any{}, ArgsHash: agentotp.ArgsHash(nil)}
		},
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			p := fullPermission(agent.ID)
			mod(p)
			want := *p
			createPermission(t, s, p)
			require.Equal(t, &want, p, "CreatePermission must not modify its argument")

			got, err := s.Permission(ctx, p.ID)
			require.NoError(t, err)
			require.Equal(t, &want, got)
			update(t, s, func(tx agentotp.Tx) error {
				got, err := tx.Permission(ctx, p.ID)
				require.NoError(t, err)
				require.Equal(t, &want, got)
				if p.IdempotencyKey != "" {
					got, err = tx.PermissionByIdempotencyKey(ctx, agent.ID, p.IdempotencyKey)
					require.NoError(t, err)
					require.Equal(t, &want, got)
				}
				return nil
			})
		})
	}

	t.Run("update writes every mutable field", func(t *testing.T) {
		p := fullPermission(agent.ID)
		p.Status = agentotp.StatusPending
		createPermission(t, s, p)
		q := fullPermission(agent.ID)
		q.ID, q.CreatedAt, q.IdempotencyKey = p.ID, p.CreatedAt, p.IdempotencyKey
		q.Status, q.UpdatedAt = agentotp.StatusRevoked, at(time.Hour)
		q.Decision.Effect, q.Decision.Approvers, q.Decision.Scope = agentotp.EffectAutoApprove, nil, nil
		q.Action = "changed " + emoji
		q.CallbackURL = "https://elsewhere.example/changed"
		q.Tool = &agentotp.ToolCall{Server: "other", Name: "other", ArgsHash: agentotp.ArgsHash(map[string]any{"x": 1.0})}
		update(t, s, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, q, agentotp.StatusPending) })
		got, err := s.Permission(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, p.CallbackURL, got.CallbackURL, "the callback URL is fixed at creation")
		require.Equal(t, p.Tool, got.Tool, "the tool call is fixed at creation")
		q.CallbackURL, q.Tool = p.CallbackURL, p.Tool
		require.Equal(t, q, got)
	})
}

func testAgentRoundTrip(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	cases := []*agentotp.Agent{
		{Name: injection, Description: quotes + unicode + emoji, Metadata: object(), Active: true,
			KeyHash: agentotp.HashSecret("k1"), KeyPrefix: "ak_" + emoji, CreatedAt: at(time.Nanosecond), UpdatedAt: at(time.Hour)},
		{Name: long, Description: long, Metadata: map[string]any{}, KeyHash: agentotp.HashSecret("k2")},
		{Name: "nil metadata", KeyHash: agentotp.HashSecret("k3"), CreatedAt: base},
	}
	for i, a := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			a.ID = agentotp.NewAgentID()
			update(t, s, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) })
			got, err := s.Agent(ctx, a.ID)
			require.NoError(t, err)
			require.Equal(t, a, got)
			got, err = s.AgentByKeyHash(ctx, a.KeyHash)
			require.NoError(t, err)
			require.Equal(t, a, got)

			b := *a
			b.Name, b.Description, b.Metadata, b.Active = a.Name+" v2", "new "+injection, map[string]any{"v": 2.0}, !a.Active
			b.KeyHash, b.KeyPrefix, b.UpdatedAt = agentotp.HashSecret(a.KeyHash), "ak_new", at(48*time.Hour)
			update(t, s, func(tx agentotp.Tx) error { return tx.UpdateAgent(ctx, &b) })
			got, err = s.Agent(ctx, a.ID)
			require.NoError(t, err)
			require.Equal(t, &b, got)
			_, err = s.AgentByKeyHash(ctx, a.KeyHash)
			require.ErrorIs(t, err, agentotp.ErrNotFound, "the old key must stop working")
		})
	}
	list, total, err := s.Agents(ctx, agentotp.Page{})
	require.NoError(t, err)
	require.Equal(t, len(cases), total)
	require.Len(t, list, len(cases))
}

func testUserRoundTrip(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	cases := []*agentotp.User{
		{Name: injection + emoji, Role: agentotp.RoleAdmin, TelegramID: -1001234567890123, Active: true,
			KeyHash: agentotp.HashSecret("u1"), KeyPrefix: "uk_" + quotes, CreatedAt: base, UpdatedAt: at(time.Second)},
		{Name: long, Role: agentotp.RoleApprover, TelegramID: 1<<62 + 1, KeyHash: agentotp.HashSecret("u2")},
		{Name: "no role", Role: agentotp.RoleNone, KeyHash: agentotp.HashSecret("u3")},
	}
	for i, u := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			u.ID = agentotp.NewUserID()
			update(t, s, func(tx agentotp.Tx) error { return tx.CreateUser(ctx, u) })
			lookups := map[string]func() (*agentotp.User, error){
				"id":   func() (*agentotp.User, error) { return s.User(ctx, u.ID) },
				"key":  func() (*agentotp.User, error) { return s.UserByKeyHash(ctx, u.KeyHash) },
				"name": func() (*agentotp.User, error) { return s.UserByName(ctx, u.Name) },
				"tx name": func() (got *agentotp.User, err error) {
					err = s.Update(ctx, func(tx agentotp.Tx) error { got, err = tx.UserByName(ctx, u.Name); return err })
					return got, err
				},
			}
			if u.TelegramID != 0 {
				lookups["telegram"] = func() (*agentotp.User, error) { return s.UserByTelegramID(ctx, u.TelegramID) }
			}
			for name, get := range lookups {
				got, err := get()
				require.NoError(t, err, name)
				require.Equal(t, u, got, name)
			}

			v := *u
			v.Name, v.Role, v.TelegramID, v.Active = u.Name+"2", agentotp.RoleAdmin, 42+int64(i), !u.Active
			v.KeyHash, v.KeyPrefix, v.UpdatedAt = agentotp.HashSecret(u.KeyHash), "uk_2", at(time.Hour)
			update(t, s, func(tx agentotp.Tx) error { return tx.UpdateUser(ctx, &v) })
			got, err := s.UserByTelegramID(ctx, v.TelegramID)
			require.NoError(t, err)
			require.Equal(t, &v, got)
		})
	}
	_, err := s.UserByTelegramID(ctx, 0)
	require.ErrorIs(t, err, agentotp.ErrNotFound, "0 means no Telegram account")
	list, total, err := s.Users(ctx, agentotp.Page{Limit: 2})
	require.NoError(t, err)
	require.Equal(t, len(cases), total)
	require.Len(t, list, 2)
}

func testPolicyRoundTrip(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "pol")
	cases := []*agentotp.Policy{
		{Name: injection, Description: unicode + emoji, Priority: -5, AgentID: agent.ID, Conditions: object(),
			When: `action == "db.query" && resource.startsWith('x')`, Effect: agentotp.EffectAutoApprove,
			ScopeTemplate: map[string]any{"rows": 1.0}, Approvers: []string{"alice", emoji}, Quorum: 3,
			TokenTTL: time.Minute + time.Nanosecond, TokenUses: 9, UseWhen: quotes, Active: true,
			CreatedAt: base, UpdatedAt: at(time.Second)},
		{Name: long, Description: long, Priority: 1 << 40, Effect: agentotp.EffectRequireApproval,
			Conditions: map[string]any{}, ScopeTemplate: map[string]any{}, Approvers: []string{}},
		{Name: "nils", Effect: agentotp.EffectDeny, Active: true},
	}
	for i, p := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			p.ID = agentotp.NewPolicyID()
			update(t, s, func(tx agentotp.Tx) error { return tx.CreatePolicy(ctx, p) })
			got, err := s.Policy(ctx, p.ID)
			require.NoError(t, err)
			require.Equal(t, p, got)

			q := *p
			q.Name, q.Effect, q.Active, q.Priority, q.UpdatedAt = p.Name+"2", agentotp.EffectDeny, !p.Active, 7, at(time.Hour)
			q.Approvers, q.Conditions = []string{"bob"}, map[string]any{"x": injection}
			update(t, s, func(tx agentotp.Tx) error { return tx.UpdatePolicy(ctx, &q) })
			got, err = s.Policy(ctx, p.ID)
			require.NoError(t, err)
			require.Equal(t, &q, got)
		})
	}
	all, total, err := s.Policies(ctx, agentotp.PolicyFilter{})
	require.NoError(t, err)
	require.Equal(t, 3, total)
	require.Len(t, all, 3)
	active, total, err := s.Policies(ctx, agentotp.PolicyFilter{ActiveOnly: true})
	require.NoError(t, err)
	require.Equal(t, 1, total) // the updates flipped Active
	require.Len(t, active, 1)
	require.True(t, active[0].Active)
}

func testApprovals(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "appr")
	alice, bob := createUser(t, s, "alice"), createUser(t, s, "bob")
	p := fullPermission(agent.ID)
	p.Status = agentotp.StatusPending
	createPermission(t, s, p)
	votes := []agentotp.Approval{
		{PermissionID: p.ID, UserID: alice.ID, Approved: true, Reason: injection + emoji, CreatedAt: at(time.Second)},
		{PermissionID: p.ID, UserID: bob.ID, Approved: false, Reason: "", CreatedAt: at(2 * time.Second)},
	}
	for _, v := range votes {
		update(t, s, func(tx agentotp.Tx) error { return tx.AddApproval(ctx, v) })
	}
	got, err := s.Approvals(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, votes, got)

	// A second vote by the same person is refused, and nothing changes.
	err = s.Update(ctx, func(tx agentotp.Tx) error {
		return tx.AddApproval(ctx, agentotp.Approval{PermissionID: p.ID, UserID: alice.ID, Approved: true, CreatedAt: at(time.Hour)})
	})
	require.ErrorIs(t, err, agentotp.ErrConflict)
	update(t, s, func(tx agentotp.Tx) error {
		got, err := tx.Approvals(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, votes, got)
		return nil
	})
	// The same user may vote on another permission.
	q := fullPermission(agent.ID)
	q.IdempotencyKey = "other"
	createPermission(t, s, q)
	update(t, s, func(tx agentotp.Tx) error {
		return tx.AddApproval(ctx, agentotp.Approval{PermissionID: q.ID, UserID: alice.ID, Approved: true, CreatedAt: base})
	})
	got, err = s.Approvals(ctx, agentotp.NewPermissionID())
	require.NoError(t, err)
	require.Empty(t, got)
}

func testAuditRoundTrip(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	events := []*agentotp.AuditEvent{
		{Time: at(time.Nanosecond), Type: agentotp.EventRequest, ActorType: "agent", ActorID: injection,
			AgentID: agentotp.NewAgentID(), PermissionID: agentotp.NewPermissionID(), RequestID: quotes + emoji,
			Details: object()},
		{ID: agentotp.NewEventID(), Time: base, Type: agentotp.EventUse, ActorType: "user", ActorID: unicode,
			RequestID: long, Details: map[string]any{"long": long}},
		// Pre-sealed bytes are stored exactly, spacing and key order included.
		{Time: at(time.Hour), Type: agentotp.EventPolicyReload, ActorType: "system",
			DetailsJSON: []byte(`{ "z" : 1,"a":[ true ,null], "s":"\u00e9\"` + emoji + `" }`)},
		{Time: at(2 * time.Hour), Type: agentotp.EventExpire, ActorType: "system"}, // nil details
	}
	appendEvents(t, s, events...)
	for i, e := range events {
		require.Equal(t, int64(i+1), e.Seq)
		require.NotEmpty(t, e.ID)
		require.NotEmpty(t, e.Hash)
		if i == 0 {
			require.Equal(t, agentotp.GenesisHash, e.PrevHash)
		} else {
			require.Equal(t, events[i-1].Hash, e.PrevHash)
		}
	}
	got, err := s.AuditEvents(ctx, agentotp.AuditFilter{Ascending: true})
	require.NoError(t, err)
	require.Len(t, got, len(events))
	for i, e := range events {
		want := *e
		if want.Details == nil {
			// Readers decode Details from the stored bytes.
			want.Details = map[string]any{}
			if i == 2 {
				want.Details = map[string]any{"z": 1.0, "a": []any{true, nil}, "s": "é\"" + emoji}
			}
		}
		require.Equal(t, &want, got[i], "event %d", i)
	}
	require.Equal(t, int64(len(events)), verifyChain(t, s))
}

func testUniqueness(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	a := createAgent(t, s, "agent-a")
	b := createAgent(t, s, "agent-b")
	u := createUser(t, s, "user-u")
	u.TelegramID = 777
	update(t, s, func(tx agentotp.Tx) error { return tx.UpdateUser(ctx, u) })
	v := createUser(t, s, "user-v")
	pol := &agentotp.Policy{ID: agentotp.NewPolicyID(), Name: "pol", Effect: agentotp.EffectDeny}
	update(t, s, func(tx agentotp.Tx) error { return tx.CreatePolicy(ctx, pol) })
	p, _ := approved(a.ID, 1, at(time.Hour))
	createPermission(t, s, p)

	cases := map[string]func(tx agentotp.Tx) error{
		"agent name": func(tx agentotp.Tx) error {
			return tx.CreateAgent(ctx, &agentotp.Agent{ID: agentotp.NewAgentID(), Name: a.Name, KeyHash: "x1"})
		},
		"agent key hash": func(tx agentotp.Tx) error {
			return tx.CreateAgent(ctx, &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "new", KeyHash: a.KeyHash})
		},
		"agent id": func(tx agentotp.Tx) error {
			return tx.CreateAgent(ctx, &agentotp.Agent{ID: a.ID, Name: "new", KeyHash: "x2"})
		},
		"agent renamed onto another": func(tx agentotp.Tx) error {
			c := *b
			c.Name = a.Name
			return tx.UpdateAgent(ctx, &c)
		},
		"user name": func(tx agentotp.Tx) error {
			return tx.CreateUser(ctx, &agentotp.User{ID: agentotp.NewUserID(), Name: u.Name, KeyHash: "y1"})
		},
		"user key hash": func(tx agentotp.Tx) error {
			return tx.CreateUser(ctx, &agentotp.User{ID: agentotp.NewUserID(), Name: "new", KeyHash: u.KeyHash})
		},
		"user telegram id": func(tx agentotp.Tx) error {
			w := *v
			w.TelegramID = u.TelegramID
			return tx.UpdateUser(ctx, &w)
		},
		"policy name": func(tx agentotp.Tx) error {
			return tx.CreatePolicy(ctx, &agentotp.Policy{ID: agentotp.NewPolicyID(), Name: pol.Name})
		},
		"permission id": func(tx agentotp.Tx) error {
			q, _ := approved(a.ID, 1, at(time.Hour))
			q.ID = p.ID
			return tx.CreatePermission(ctx, q)
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			err := s.Update(ctx, fn)
			require.ErrorIs(t, err, agentotp.ErrConflict)
			var e *agentotp.Error
			require.ErrorAs(t, err, &e)
			require.NotContains(t, strings.ToLower(e.Message), "constraint", "the client message must not leak SQL")
		})
	}
	t.Run("telegram id 0 is not unique", func(t *testing.T) {
		createUser(t, s, "no-telegram-1")
		createUser(t, s, "no-telegram-2")
	})
}

func testNotFound(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	reads := map[string]func() error{
		"permission":      func() error { _, err := s.Permission(ctx, agentotp.NewPermissionID()); return err },
		"agent":           func() error { _, err := s.Agent(ctx, agentotp.NewAgentID()); return err },
		"agent by key":    func() error { _, err := s.AgentByKeyHash(ctx, "nope"); return err },
		"agent empty key": func() error { _, err := s.AgentByKeyHash(ctx, ""); return err },
		"user":            func() error { _, err := s.User(ctx, agentotp.NewUserID()); return err },
		"user by key":     func() error { _, err := s.UserByKeyHash(ctx, injection); return err },
		"user by name":    func() error { _, err := s.UserByName(ctx, injection); return err },
		"user by tg":      func() error { _, err := s.UserByTelegramID(ctx, 5); return err },
		"policy":          func() error { _, err := s.Policy(ctx, agentotp.NewPolicyID()); return err },
	}
	for name, read := range reads {
		require.ErrorIs(t, read(), agentotp.ErrNotFound, name)
	}
	writes := map[string]func(tx agentotp.Tx) error{
		"tx permission": func(tx agentotp.Tx) error { _, err := tx.Permission(ctx, agentotp.NewPermissionID()); return err },
		"idempotency key": func(tx agentotp.Tx) error {
			_, err := tx.PermissionByIdempotencyKey(ctx, agentotp.NewAgentID(), "k")
			return err
		},
		"tx user by name": func(tx agentotp.Tx) error { _, err := tx.UserByName(ctx, "x"); return err },
		"update permission": func(tx agentotp.Tx) error {
			p, _ := approved(agentotp.NewAgentID(), 1, base)
			return tx.UpdatePermission(ctx, p, agentotp.StatusApproved)
		},
		"issue token":   func(tx agentotp.Tx) error { return tx.IssueToken(ctx, agentotp.NewPermissionID(), "h", base) },
		"update agent":  func(tx agentotp.Tx) error { return tx.UpdateAgent(ctx, &agentotp.Agent{ID: agentotp.NewAgentID()}) },
		"delete agent":  func(tx agentotp.Tx) error { return tx.DeleteAgent(ctx, agentotp.NewAgentID()) },
		"update user":   func(tx agentotp.Tx) error { return tx.UpdateUser(ctx, &agentotp.User{ID: agentotp.NewUserID()}) },
		"delete user":   func(tx agentotp.Tx) error { return tx.DeleteUser(ctx, agentotp.NewUserID()) },
		"update policy": func(tx agentotp.Tx) error { return tx.UpdatePolicy(ctx, &agentotp.Policy{ID: agentotp.NewPolicyID()}) },
		"delete policy": func(tx agentotp.Tx) error { return tx.DeletePolicy(ctx, agentotp.NewPolicyID()) },
		"permission of unknown agent": func(tx agentotp.Tx) error {
			p, _ := approved(agentotp.NewAgentID(), 1, base)
			return tx.CreatePermission(ctx, p)
		},
	}
	for name, w := range writes {
		require.ErrorIs(t, s.Update(ctx, w), agentotp.ErrNotFound, name)
	}
}

func testUpdatePermissionCAS(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "cas")
	p := fullPermission(agent.ID)
	p.Status = agentotp.StatusPending
	createPermission(t, s, p)

	first := *p
	first.Status, first.DecisionReason = agentotp.StatusApproved, "first"
	update(t, s, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, &first, agentotp.StatusPending) })

	// A second decider still expecting pending loses and writes nothing.
	second := *p
	second.Status, second.DecisionReason = agentotp.StatusDenied, "second"
	err := s.Update(ctx, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, &second, agentotp.StatusPending) })
	require.ErrorIs(t, err, agentotp.ErrConflict)
	got, err := s.Permission(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, &first, got)
}

func testIssueTokenOnce(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "issue")
	p, _ := approved(agent.ID, 1, at(time.Hour))
	p.TokenHash, p.TokenIssuedAt = "", time.Time{}
	createPermission(t, s, p)
	pending, _ := approved(agent.ID, 1, at(time.Hour))
	pending.Status, pending.TokenHash, pending.TokenIssuedAt = agentotp.StatusPending, "", time.Time{}
	createPermission(t, s, pending)

	h1, h2 := agentotp.HashSecret("t1"), agentotp.HashSecret("t2")
	update(t, s, func(tx agentotp.Tx) error { return tx.IssueToken(ctx, p.ID, h1, at(time.Second)) })
	err := s.Update(ctx, func(tx agentotp.Tx) error { return tx.IssueToken(ctx, p.ID, h2, at(2*time.Second)) })
	require.ErrorIs(t, err, agentotp.ErrConflict)
	got, err := s.Permission(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, h1, got.TokenHash)
	require.Equal(t, at(time.Second), got.TokenIssuedAt)

	err = s.Update(ctx, func(tx agentotp.Tx) error { return tx.IssueToken(ctx, pending.ID, h2, base) })
	require.ErrorIs(t, err, agentotp.ErrConflict, "only an approved permission gets a token")
	got, err = s.Permission(ctx, pending.ID)
	require.NoError(t, err)
	require.Empty(t, got.TokenHash)
}

func testSpendTokenRejects(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent, other := createAgent(t, s, "spender"), createAgent(t, s, "other")
	expires := at(5 * time.Minute)
	live, hash := approved(agent.ID, 3, expires)
	createPermission(t, s, live)
	otherLive, otherHash := approved(agent.ID, 3, expires)
	createPermission(t, s, otherLive)

	withStatus := func(st agentotp.Status) (*agentotp.Permission, string) {
		p, h := approved(agent.ID, 3, expires)
		p.Status = st
		createPermission(t, s, p)
		return p, h
	}
	type attempt struct {
		p     *agentotp.Permission
		id    agentotp.PermissionID
		agent agentotp.AgentID
		hash  string
		now   time.Time
	}
	cases := map[string]func() attempt{
		"unknown permission": func() attempt { return attempt{live, agentotp.NewPermissionID(), agent.ID, hash, base} },
		"other permission's token": func() attempt {
			return attempt{live, live.ID, agent.ID, otherHash, base}
		},
		"token on other permission": func() attempt { return attempt{otherLive, otherLive.ID, agent.ID, hash, base} },
		"wrong agent":               func() attempt { return attempt{live, live.ID, other.ID, hash, base} },
		"wrong hash":                func() attempt { return attempt{live, live.ID, agent.ID, agentotp.HashSecret("x"), base} },
		"empty hash":                func() attempt { return attempt{live, live.ID, agent.ID, "", base} },
		"at expiry":                 func() attempt { return attempt{live, live.ID, agent.ID, hash, expires} },
		"after expiry":              func() attempt { return attempt{live, live.ID, agent.ID, hash, expires.Add(time.Nanosecond)} },
		"long after expiry":         func() attempt { return attempt{live, live.ID, agent.ID, hash, expires.Add(24 * time.Hour)} },
	}
	for _, st := range []agentotp.Status{agentotp.StatusPending, agentotp.StatusRevoked, agentotp.StatusUsed,
		agentotp.StatusDenied, agentotp.StatusExpired} {
		p, h := withStatus(st)
		cases["status "+string(st)] = func() attempt { return attempt{p, p.ID, agent.ID, h, base} }
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			a := mk()
			before, err := s.Permission(ctx, a.p.ID)
			require.NoError(t, err)
			_, err = spend(s, a.id, a.agent, a.hash, a.now)
			require.ErrorIs(t, err, agentotp.ErrConflict)
			after, err := s.Permission(ctx, a.p.ID)
			require.NoError(t, err)
			require.Equal(t, before, after, "a rejected spend changes nothing")
		})
	}
	t.Run("just before expiry", func(t *testing.T) {
		left, err := spend(s, live.ID, agent.ID, hash, expires.Add(-time.Nanosecond))
		require.NoError(t, err)
		require.Equal(t, 2, left)
	})
}

func testSpendTokenUses(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "uses")
	p, hash := approved(agent.ID, 3, at(time.Hour))
	createPermission(t, s, p)
	for i, want := range []int{2, 1, 0} {
		now := at(time.Duration(i+1) * time.Second)
		left, err := spend(s, p.ID, agent.ID, hash, now)
		require.NoError(t, err)
		require.Equal(t, want, left)
		got, err := s.Permission(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, want, got.UsesRemaining)
		require.Equal(t, now, got.UpdatedAt)
		wantStatus := agentotp.StatusApproved
		if want == 0 {
			wantStatus = agentotp.StatusUsed
		}
		require.Equal(t, wantStatus, got.Status)
	}
	_, err := spend(s, p.ID, agent.ID, hash, at(time.Minute))
	require.ErrorIs(t, err, agentotp.ErrConflict, "no use after the last one")
	got, err := s.Permission(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, 0, got.UsesRemaining)
}

// testConcurrentSpend spends a 1-use and a 5-use token from 200 goroutines
// split over a and b (which may be the same store), each spend in its own
// transaction.
func testConcurrentSpend(t *testing.T, a, b agentotp.Store) {
	agent := createAgent(t, a, "racer")
	for _, uses := range []int{1, 5} {
		t.Run(fmt.Sprintf("%d uses", uses), func(t *testing.T) {
			p, hash := approved(agent.ID, uses, at(time.Hour))
			createPermission(t, a, p)
			var ok, conflict, other atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range 200 {
				s := a
				if i%2 == 1 {
					s = b
				}
				wg.Go(func() {
					<-start
					_, err := spend(s, p.ID, agent.ID, hash, at(time.Second))
					switch {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, agentotp.ErrConflict):
						conflict.Add(1)
					default:
						t.Errorf("spend: %v", err)
						other.Add(1)
					}
				})
			}
			close(start)
			wg.Wait()
			require.Equal(t, int64(uses), ok.Load())
			require.Equal(t, int64(200-uses), conflict.Load())
			for _, s := range []agentotp.Store{a, b} {
				got, err := s.Permission(context.Background(), p.ID)
				require.NoError(t, err)
				require.Equal(t, 0, got.UsesRemaining)
				require.Equal(t, agentotp.StatusUsed, got.Status)
			}
		})
	}
}

func testConcurrentAudit(t *testing.T, a, b agentotp.Store) {
	const writers, perWriter = 8, 25
	var wg sync.WaitGroup
	for w := range writers {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for i := range perWriter {
				err := s.Update(context.Background(), func(tx agentotp.Tx) error {
					return tx.AppendAudit(context.Background(), event(w*perWriter+i, agentotp.EventUse))
				})
				if err != nil {
					t.Errorf("append: %v", err)
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(writers*perWriter), verifyChain(t, a))
	require.Equal(t, int64(writers*perWriter), verifyChain(t, b))
}

func testIdempotencyKey(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	a, b := createAgent(t, s, "idem-a"), createAgent(t, s, "idem-b")
	mk := func(agent agentotp.AgentID, key string) *agentotp.Permission {
		p, _ := approved(agent, 1, at(time.Hour))
		p.IdempotencyKey = key
		return p
	}
	first := mk(a.ID, "key-1")
	createPermission(t, s, first)

	err := s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreatePermission(ctx, mk(a.ID, "key-1")) })
	require.ErrorIs(t, err, agentotp.ErrConflict, "same key, same agent")
	createPermission(t, s, mk(b.ID, "key-1")) // same key, other agent
	createPermission(t, s, mk(a.ID, "key-2"))
	createPermission(t, s, mk(a.ID, "")) // no key: never a conflict
	createPermission(t, s, mk(a.ID, ""))

	update(t, s, func(tx agentotp.Tx) error {
		got, err := tx.PermissionByIdempotencyKey(ctx, a.ID, "key-1")
		require.NoError(t, err)
		require.Equal(t, first, got)
		_, err = tx.PermissionByIdempotencyKey(ctx, a.ID, "")
		require.ErrorIs(t, err, agentotp.ErrNotFound, "an empty key finds nothing")
		_, err = tx.PermissionByIdempotencyKey(ctx, a.ID, "KEY-1")
		require.ErrorIs(t, err, agentotp.ErrNotFound)
		return nil
	})
}

func testDeleteKeepsHistory(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "doomed")
	user := createUser(t, s, "leaver")
	pol := &agentotp.Policy{ID: agentotp.NewPolicyID(), Name: "old rule", AgentID: agent.ID, Effect: agentotp.EffectAutoApprove}
	p, hash := approved(agent.ID, 2, at(time.Hour))
	update(t, s, func(tx agentotp.Tx) error {
		if err := tx.CreatePolicy(ctx, pol); err != nil {
			return err
		}
		if err := tx.CreatePermission(ctx, p); err != nil {
			return err
		}
		if err := tx.AddApproval(ctx, agentotp.Approval{PermissionID: p.ID, UserID: user.ID, Approved: true, CreatedAt: base}); err != nil {
			return err
		}
		e := event(1, agentotp.EventApprove)
		e.AgentID, e.PermissionID, e.ActorType, e.ActorID = agent.ID, p.ID, "user", string(user.ID)
		return tx.AppendAudit(ctx, e)
	})

	update(t, s, func(tx agentotp.Tx) error {
		for _, err := range []error{tx.DeleteAgent(ctx, agent.ID), tx.DeleteUser(ctx, user.ID), tx.DeletePolicy(ctx, pol.ID)} {
			if err != nil {
				return err
			}
		}
		return tx.AppendAudit(ctx, event(2, agentotp.EventAgentDelete))
	})

	_, err := s.Agent(ctx, agent.ID)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
	_, err = s.User(ctx, user.ID)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
	_, err = s.Policy(ctx, pol.ID)
	require.ErrorIs(t, err, agentotp.ErrNotFound)

	got, err := s.Permission(ctx, p.ID)
	require.NoError(t, err)
	require.Contains(t, []agentotp.AgentID{"", agent.ID}, got.AgentID)
	want := *p
	want.AgentID = got.AgentID
	require.Equal(t, &want, got, "the permission survives its agent")

	votes, err := s.Approvals(ctx, p.ID)
	require.NoError(t, err)
	require.Len(t, votes, 1, "the vote survives its user")
	require.Contains(t, []agentotp.UserID{"", user.ID}, votes[0].UserID)

	_, err = spend(s, p.ID, agent.ID, hash, at(time.Second))
	require.ErrorIs(t, err, agentotp.ErrConflict, "a deleted agent's token is dead")

	events, err := s.AuditEvents(ctx, agentotp.AuditFilter{AgentID: agent.ID})
	require.NoError(t, err)
	require.Len(t, events, 1, "audit events keep the agent id")
	require.Equal(t, int64(2), verifyChain(t, s))
}

func testRollback(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	boom := errors.New("boom")
	keeper := createAgent(t, s, "keeper")
	appendEvents(t, s, event(0, agentotp.EventAgentCreate))

	var (
		agent *agentotp.Agent
		perm  *agentotp.Permission
	)
	writeAll := func(tx agentotp.Tx) error {
		agent = &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "ghost", KeyHash: "ghost"}
		if err := tx.CreateAgent(ctx, agent); err != nil {
			return err
		}
		perm, _ = approved(agent.ID, 1, at(time.Hour))
		if err := tx.CreatePermission(ctx, perm); err != nil {
			return err
		}
		k := *keeper
		k.Name = "renamed"
		if err := tx.UpdateAgent(ctx, &k); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, event(1, agentotp.EventRequest))
	}
	cases := map[string]func(tx agentotp.Tx) error{
		"fn error after audit": func(tx agentotp.Tx) error {
			if err := writeAll(tx); err != nil {
				return err
			}
			return boom
		},
		"store error after audit": func(tx agentotp.Tx) error {
			if err := writeAll(tx); err != nil {
				return err
			}
			return tx.CreateAgent(ctx, &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "ghost", KeyHash: "dup"})
		},
		"spend after audit": func(tx agentotp.Tx) error {
			if err := writeAll(tx); err != nil {
				return err
			}
			if _, err := tx.SpendToken(ctx, perm.ID, agent.ID, perm.TokenHash, base); err != nil {
				return err
			}
			return boom
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			require.Error(t, s.Update(ctx, fn))
			checkNothingLeft(t, s, keeper, agent, perm)
		})
	}
	t.Run("panic", func(t *testing.T) {
		require.Panics(t, func() {
			_ = s.Update(ctx, func(tx agentotp.Tx) error {
				if err := writeAll(tx); err != nil {
					return err
				}
				panic("boom")
			})
		})
		checkNothingLeft(t, s, keeper, agent, perm)
	})
	// The error from fn comes back unchanged.
	err := s.Update(ctx, func(agentotp.Tx) error { return boom })
	require.ErrorIs(t, err, boom)
	// And the store still works: the next event follows the first.
	e := event(2, agentotp.EventUse)
	appendEvents(t, s, e)
	require.Equal(t, int64(2), e.Seq)
	require.Equal(t, int64(2), verifyChain(t, s))
}

func checkNothingLeft(t *testing.T, s agentotp.Store, keeper, agent *agentotp.Agent, perm *agentotp.Permission) {
	t.Helper()
	ctx := context.Background()
	_, err := s.Agent(ctx, agent.ID)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
	_, err = s.Permission(ctx, perm.ID)
	require.ErrorIs(t, err, agentotp.ErrNotFound)
	got, err := s.Agent(ctx, keeper.ID)
	require.NoError(t, err)
	require.Equal(t, keeper, got)
	events, err := s.AuditEvents(ctx, agentotp.AuditFilter{})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, int64(1), verifyChain(t, s))
}

func testAuditChain(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	seq, hash, err := s.AuditHead(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(0), seq, "an empty chain's head is the genesis")
	require.Equal(t, agentotp.GenesisHash, hash)
	const batches, per = 12, 100
	for b := range batches {
		events := make([]*agentotp.AuditEvent, per)
		for i := range events {
			events[i] = event(b*per+i, agentotp.EventTypes[(b*per+i)%len(agentotp.EventTypes)])
			events[i].Details["text"] = injection + emoji
		}
		appendEvents(t, s, events...)
	}
	require.Equal(t, int64(batches*per), verifyChain(t, s))

	// ScanAudit stops at fn's error and returns it.
	stop := errors.New("stop")
	n := 0
	err = s.ScanAudit(ctx, func(e *agentotp.AuditEvent) error {
		n++
		require.Equal(t, int64(n), e.Seq)
		if n == 10 {
			return stop
		}
		return nil
	})
	require.ErrorIs(t, err, stop)
	require.Equal(t, 10, n)

	// Limits: 50 by default, at most 1000.
	for limit, want := range map[int]int{0: 50, -1: 50, 7: 7, 1000: 1000, 5000: 1000} {
		got, err := s.AuditEvents(ctx, agentotp.AuditFilter{Limit: limit})
		require.NoError(t, err)
		require.Len(t, got, want, "limit %d", limit)
		require.Equal(t, int64(batches*per), got[0].Seq, "newest first")
	}
}

func testAuditFilters(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agents := []agentotp.AgentID{agentotp.NewAgentID(), agentotp.NewAgentID()}
	perms := []agentotp.PermissionID{agentotp.NewPermissionID(), agentotp.NewPermissionID(), agentotp.NewPermissionID()}
	types := []agentotp.EventType{agentotp.EventRequest, agentotp.EventUse, agentotp.EventRevoke}
	var all []*agentotp.AuditEvent
	for i := range 30 {
		e := event(i, types[i%3])
		e.AgentID, e.PermissionID = agents[i%2], perms[i%3]
		all = append(all, e)
	}
	appendEvents(t, s, all...)
	seqs := func(events []*agentotp.AuditEvent) []int64 {
		out := []int64{}
		for _, e := range events {
			out = append(out, e.Seq)
		}
		return out
	}
	span := func(from, to int64) []int64 { // inclusive, either direction
		out := []int64{}
		for i := from; ; {
			out = append(out, i)
			if i == to {
				return out
			}
			if from < to {
				i++
			} else {
				i--
			}
		}
	}
	cases := []struct {
		name string
		f    agentotp.AuditFilter
		want []int64
	}{
		{"default newest first", agentotp.AuditFilter{}, span(30, 1)},
		{"ascending", agentotp.AuditFilter{Ascending: true}, span(1, 30)},
		{"limit", agentotp.AuditFilter{Limit: 5}, span(30, 26)},
		{"before cursor", agentotp.AuditFilter{BeforeSeq: 26, Limit: 5}, span(25, 21)},
		{"after cursor ascending", agentotp.AuditFilter{AfterSeq: 10, Limit: 5, Ascending: true}, span(11, 15)},
		{"after cursor descending", agentotp.AuditFilter{AfterSeq: 27}, span(30, 28)},
		{"between cursors", agentotp.AuditFilter{AfterSeq: 3, BeforeSeq: 7, Ascending: true}, span(4, 6)},
		{"agent", agentotp.AuditFilter{AgentID: agents[1], Limit: 3}, []int64{30, 28, 26}},
		{"permission", agentotp.AuditFilter{PermissionID: perms[0], Ascending: true, Limit: 3}, []int64{1, 4, 7}},
		{"type", agentotp.AuditFilter{Type: agentotp.EventRevoke, Limit: 2}, []int64{30, 27}},
		// Event i (seq i+1) happened at base + i minutes; bounds are inclusive.
		{"time range", agentotp.AuditFilter{Start: at(4 * time.Minute), End: at(9 * time.Minute), Ascending: true}, span(5, 10)},
		{"start only", agentotp.AuditFilter{Start: at(27 * time.Minute)}, span(30, 28)},
		{"end only", agentotp.AuditFilter{End: at(time.Minute)}, span(2, 1)},
		{"combined", agentotp.AuditFilter{AgentID: agents[0], Type: agentotp.EventRequest, Start: at(5 * time.Minute)}, []int64{25, 19, 13, 7}},
		{"no match", agentotp.AuditFilter{AgentID: agentotp.NewAgentID()}, []int64{}},
		{"unknown type", agentotp.AuditFilter{Type: "x" + injection}, []int64{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.AuditEvents(ctx, tc.f)
			require.NoError(t, err)
			require.Equal(t, tc.want, seqs(got))
		})
	}
	t.Run("cursor walk", func(t *testing.T) {
		var walked []int64
		f := agentotp.AuditFilter{Limit: 7}
		for {
			page, err := s.AuditEvents(ctx, f)
			require.NoError(t, err)
			if len(page) == 0 {
				break
			}
			walked = append(walked, seqs(page)...)
			f.BeforeSeq = page[len(page)-1].Seq
		}
		require.Equal(t, span(30, 1), walked)
	})
}

func testAuditStats(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	types := []agentotp.EventType{agentotp.EventUse, agentotp.EventUse, agentotp.EventDeny, agentotp.EventUse, agentotp.EventExpire}
	var events []*agentotp.AuditEvent
	for i, typ := range types {
		events = append(events, event(i, typ))
	}
	appendEvents(t, s, events...)
	cases := []struct {
		since time.Time
		want  map[agentotp.EventType]int64
	}{
		{time.Time{}, map[agentotp.EventType]int64{agentotp.EventUse: 3, agentotp.EventDeny: 1, agentotp.EventExpire: 1}},
		{at(2 * time.Minute), map[agentotp.EventType]int64{agentotp.EventUse: 1, agentotp.EventDeny: 1, agentotp.EventExpire: 1}},
		{at(time.Hour), map[agentotp.EventType]int64{}},
	}
	for _, tc := range cases {
		st, err := s.AuditStats(ctx, tc.since)
		require.NoError(t, err)
		require.Equal(t, tc.want, st.ByType)
		var total int64
		for _, n := range tc.want {
			total += n
		}
		require.Equal(t, total, st.Total)
		require.True(t, tc.since.Equal(st.Since))
	}
}

func testPermissionsList(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	a, b := createAgent(t, s, "list-a"), createAgent(t, s, "list-b")
	var aIDs []agentotp.PermissionID // newest first
	for i := range 25 {
		p, _ := approved(a.ID, 1, at(time.Hour))
		p.CreatedAt = at(time.Duration(i) * time.Second)
		if i%5 == 0 {
			p.Status = agentotp.StatusPending
		}
		createPermission(t, s, p)
		aIDs = append([]agentotp.PermissionID{p.ID}, aIDs...)
	}
	for range 5 {
		p, _ := approved(b.ID, 1, at(time.Hour))
		p.CreatedAt = at(time.Hour)
		createPermission(t, s, p)
	}
	ids := func(ps []*agentotp.Permission) []agentotp.PermissionID {
		out := []agentotp.PermissionID{}
		for _, p := range ps {
			out = append(out, p.ID)
		}
		return out
	}
	cases := []struct {
		name      string
		f         agentotp.PermissionFilter
		total, n  int
		wantFirst []agentotp.PermissionID
	}{
		{"all default page", agentotp.PermissionFilter{}, 30, 20, nil},
		{"agent page 1", agentotp.PermissionFilter{AgentID: a.ID, Page: agentotp.Page{Page: 1, Limit: 10}}, 25, 10, aIDs[:10]},
		{"agent page 3", agentotp.PermissionFilter{AgentID: a.ID, Page: agentotp.Page{Page: 3, Limit: 10}}, 25, 5, aIDs[20:]},
		{"past the end", agentotp.PermissionFilter{AgentID: a.ID, Page: agentotp.Page{Page: 9, Limit: 10}}, 25, 0, []agentotp.PermissionID{}},
		{"other agent", agentotp.PermissionFilter{AgentID: b.ID}, 5, 5, nil},
		{"status", agentotp.PermissionFilter{Status: agentotp.StatusPending}, 5, 5, nil},
		{"agent and status", agentotp.PermissionFilter{AgentID: b.ID, Status: agentotp.StatusPending}, 0, 0, nil},
		{"limit capped", agentotp.PermissionFilter{Page: agentotp.Page{Limit: 1000}}, 30, 30, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			list, total, err := s.Permissions(ctx, tc.f)
			require.NoError(t, err)
			require.Equal(t, tc.total, total)
			require.Len(t, list, tc.n)
			if tc.wantFirst != nil {
				require.Equal(t, tc.wantFirst, ids(list))
			}
			for i := 1; i < len(list); i++ {
				require.False(t, list[i].CreatedAt.After(list[i-1].CreatedAt), "newest first")
			}
		})
	}
}

func testDuePermissions(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "due")
	mk := func(st agentotp.Status, approvalExp, tokenExp time.Duration) agentotp.PermissionID {
		p, _ := approved(agent.ID, 1, at(tokenExp))
		p.Status, p.ApprovalExpiresAt = st, at(approvalExp)
		if st == agentotp.StatusPending {
			p.TokenHash, p.TokenExpiresAt = "", time.Time{}
		}
		createPermission(t, s, p)
		return p.ID
	}
	pending1 := mk(agentotp.StatusPending, time.Minute, 0)
	approved2 := mk(agentotp.StatusApproved, 0, 2*time.Minute)
	pending3 := mk(agentotp.StatusPending, 3*time.Minute, 0)
	approved4 := mk(agentotp.StatusApproved, -time.Hour, 4*time.Minute) // its approval window is long past
	for _, st := range []agentotp.Status{agentotp.StatusDenied, agentotp.StatusUsed, agentotp.StatusRevoked, agentotp.StatusExpired} {
		mk(st, -time.Hour, -time.Hour) // terminal: never due
	}
	cases := []struct {
		name  string
		now   time.Time
		limit int
		want  []agentotp.PermissionID
	}{
		{"nothing yet", at(59 * time.Second), 10, nil},
		{"inclusive boundary", at(time.Minute), 10, []agentotp.PermissionID{pending1}},
		{"oldest deadline first", at(150 * time.Second), 10, []agentotp.PermissionID{pending1, approved2}},
		{"all", at(time.Hour), 10, []agentotp.PermissionID{pending1, approved2, pending3, approved4}},
		{"limit", at(time.Hour), 3, []agentotp.PermissionID{pending1, approved2, pending3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			list, err := s.DuePermissions(ctx, tc.now, tc.limit)
			require.NoError(t, err)
			var got []agentotp.PermissionID
			for _, p := range list {
				got = append(got, p.ID)
				require.True(t, p.Due(tc.now), "store and domain agree on Due")
			}
			require.Equal(t, tc.want, got)
		})
	}
	// Once moved to a terminal state a permission is no longer due.
	update(t, s, func(tx agentotp.Tx) error {
		p, err := tx.Permission(ctx, pending1)
		if err != nil {
			return err
		}
		p.Status = agentotp.StatusExpired
		return tx.UpdatePermission(ctx, p, agentotp.StatusPending)
	})
	list, err := s.DuePermissions(ctx, at(time.Hour), 10)
	require.NoError(t, err)
	require.Len(t, list, 3)
}

func testCountPermissions(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	a, b := createAgent(t, s, "count-a"), createAgent(t, s, "count-b")
	mk := func(agent agentotp.AgentID, action string, created time.Duration, st agentotp.Status) {
		p, _ := approved(agent, 1, at(time.Hour))
		p.Action, p.CreatedAt, p.Status = action, at(created), st
		createPermission(t, s, p)
	}
	mk(a.ID, "db.query", 0, agentotp.StatusPending)
	mk(a.ID, "db.write", time.Minute, agentotp.StatusApproved)
	mk(a.ID, "email.send", 2*time.Minute, agentotp.StatusPending)
	mk(a.ID, "db?x", 3*time.Minute, agentotp.StatusDenied)
	mk(a.ID, "dbax", 3*time.Minute, agentotp.StatusDenied)
	mk(a.ID, "db[1]", 4*time.Minute, agentotp.StatusUsed)
	mk(a.ID, "db1", 4*time.Minute, agentotp.StatusUsed)
	mk(a.ID, "db1", 4*time.Minute, agentotp.StatusUsed) // an unescaped "db[1]" would count both
	mk(a.ID, "DB.QUERY", 5*time.Minute, agentotp.StatusPending)
	mk(a.ID, injection, 5*time.Minute, agentotp.StatusPending)
	mk(b.ID, "db.query", 0, agentotp.StatusPending)

	cases := []struct {
		name     string
		agent    agentotp.AgentID
		pattern  string
		since    time.Time
		statuses []agentotp.Status
		want     int
	}{
		{"everything", a.ID, "*", time.Time{}, nil, 10},
		{"prefix", a.ID, "db.*", time.Time{}, nil, 2},
		{"exact", a.ID, "db.query", time.Time{}, nil, 1},
		{"case sensitive", a.ID, "DB.*", time.Time{}, nil, 1},
		{"suffix", a.ID, "*.send", time.Time{}, nil, 1},
		{"question mark is literal", a.ID, "db?x", time.Time{}, nil, 1},
		{"brackets are literal", a.ID, "db[1]", time.Time{}, nil, 1},
		{"bracket prefix", a.ID, "db[*", time.Time{}, nil, 1},
		{"sql metacharacters", a.ID, injection, time.Time{}, nil, 1},
		{"since is inclusive", a.ID, "*", at(4 * time.Minute), nil, 5},
		{"one status", a.ID, "*", time.Time{}, []agentotp.Status{agentotp.StatusPending}, 4},
		{"two statuses", a.ID, "db*", time.Time{}, []agentotp.Status{agentotp.StatusDenied, agentotp.StatusUsed}, 5},
		{"all filters", a.ID, "db*", at(4 * time.Minute), []agentotp.Status{agentotp.StatusUsed}, 3},
		{"other agent", b.ID, "*", time.Time{}, nil, 1},
		{"unknown agent", agentotp.NewAgentID(), "*", time.Time{}, nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, err := s.CountPermissions(ctx, tc.agent, tc.pattern, tc.since, tc.statuses)
			require.NoError(t, err)
			require.Equal(t, tc.want, n)
		})
	}

	// "used" counts every grant a use was spent from, also one revoked or
	// expired after it: ending a grant must not give its uses back to a
	// budget.
	c := createAgent(t, s, "count-c")
	grant := func(uses, left int, st agentotp.Status, token bool) {
		p, _ := approved(c.ID, uses, at(time.Hour))
		p.UsesRemaining, p.Status = left, st
		if !token {
			p.TokenHash, p.TokenIssuedAt = "", time.Time{}
		}
		createPermission(t, s, p)
	}
	grant(3, 1, agentotp.StatusRevoked, true)  // two uses, then revoked: counts
	grant(2, 1, agentotp.StatusExpired, true)  // a use, then expired: counts
	grant(2, 2, agentotp.StatusRevoked, true)  // revoked unused: does not
	grant(1, 0, agentotp.StatusExpired, false) // pending until it expired: does not
	grant(1, 0, agentotp.StatusUsed, true)     // used up: counts
	for _, tc := range []struct {
		statuses []agentotp.Status
		want     int
	}{
		{[]agentotp.Status{agentotp.StatusUsed}, 3},
		{[]agentotp.Status{agentotp.StatusApproved, agentotp.StatusUsed}, 3},
		{[]agentotp.Status{agentotp.StatusRevoked}, 2},
		{[]agentotp.Status{agentotp.StatusExpired}, 2},
		{nil, 5},
	} {
		n, err := s.CountPermissions(ctx, c.ID, "*", time.Time{}, tc.statuses)
		require.NoError(t, err)
		require.Equal(t, tc.want, n, "%v", tc.statuses)
	}
}

// testConcurrentUpdatesIsolated runs many Updates at once, some failing
// (after writing and appending audit) and some panicking: a store that
// batches them must roll back exactly the failing ones, report each
// caller's own outcome, and keep the audit chain whole.
func testConcurrentUpdatesIsolated(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	const n = 60
	boom := errors.New("boom")
	errs := make([]error, n)
	panics := make([]bool, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { panics[i] = recover() != nil }()
			<-start
			errs[i] = s.Update(ctx, func(tx agentotp.Tx) error {
				a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: fmt.Sprintf("iso-%d", i), Active: true,
					KeyHash: agentotp.HashSecret(fmt.Sprintf("iso-key-%d", i)), CreatedAt: base, UpdatedAt: base}
				if err := tx.CreateAgent(ctx, a); err != nil {
					return err
				}
				if err := tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: base, Type: agentotp.EventAgentCreate,
					ActorType: "system", AgentID: a.ID, Details: map[string]any{"i": i}}); err != nil {
					return err
				}
				switch i % 3 {
				case 1:
					return boom
				case 2:
					panic("boom")
				}
				return nil
			})
		}()
	}
	close(start)
	wg.Wait()
	list, total, err := s.Agents(ctx, agentotp.Page{Page: 1, Limit: 100})
	require.NoError(t, err)
	names := map[string]bool{}
	for _, a := range list {
		names[a.Name] = true
	}
	for i := range n {
		name := fmt.Sprintf("iso-%d", i)
		switch i % 3 {
		case 0:
			require.NoError(t, errs[i], name)
			require.False(t, panics[i], name)
			require.True(t, names[name], "%s committed", name)
		case 1:
			require.ErrorIs(t, errs[i], boom, name)
			require.False(t, names[name], "%s rolled back", name)
		case 2:
			require.True(t, panics[i], "%s re-panics in its caller", name)
			require.False(t, names[name], "%s rolled back", name)
		}
	}
	require.Equal(t, n/3, total)
	require.Equal(t, int64(n/3), verifyChain(t, s))
	seq, hash, err := s.AuditHead(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(n/3), seq, "the head follows committed appends only")
	last, err := s.AuditEvents(ctx, agentotp.AuditFilter{Limit: 1})
	require.NoError(t, err)
	require.Equal(t, last[0].Hash, hash)
}

// testCallerLeavingMidUpdate: callers whose context is cancelled while their
// fn runs (a client hanging up) neither lose their own started work nor
// break the other callers' writes that may share their transaction.
func testCallerLeavingMidUpdate(t *testing.T, s agentotp.Store) {
	const n = 40
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			<-start
			errs[i] = s.Update(ctx, func(tx agentotp.Tx) error {
				for j := range 2 {
					a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: fmt.Sprintf("leave-%d-%d", i, j), Active: true,
						KeyHash: agentotp.HashSecret(fmt.Sprintf("leave-key-%d-%d", i, j)), CreatedAt: base, UpdatedAt: base}
					if err := tx.CreateAgent(ctx, a); err != nil {
						return err
					}
					if i%2 == 1 {
						cancel() // the caller goes away mid-transaction
					}
				}
				return nil
			})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "caller %d", i)
	}
	_, total, err := s.Agents(context.Background(), agentotp.Page{Page: 1, Limit: 1})
	require.NoError(t, err)
	require.Equal(t, 2*n, total)
}

// usage reads an agent's storage usage through a transaction.
func usage(t *testing.T, s agentotp.Store, agent agentotp.AgentID) agentotp.StorageUsage {
	t.Helper()
	var u agentotp.StorageUsage
	update(t, s, func(tx agentotp.Tx) error {
		var err error
		u, err = tx.StorageUsage(context.Background(), agent)
		return err
	})
	return u
}

// prune runs PrunePermissions in its own transaction.
func prune(t *testing.T, s agentotp.Store, before time.Time, limit int) int {
	t.Helper()
	var n int
	update(t, s, func(tx agentotp.Tx) error {
		var err error
		n, err = tx.PrunePermissions(context.Background(), before, limit)
		return err
	})
	return n
}

// final returns a permission of agent in status st, created at created and
// last changed at changed.
func final(agent agentotp.AgentID, st agentotp.Status, created, changed time.Duration) *agentotp.Permission {
	p, _ := approved(agent, 1, at(created+time.Minute))
	p.Status, p.CreatedAt, p.UpdatedAt = st, at(created), at(changed)
	if st == agentotp.StatusPending {
		p.TokenHash, p.TokenIssuedAt = "", time.Time{}
	}
	return p
}

func testStorageUsage(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	a, b := createAgent(t, s, "quota-a"), createAgent(t, s, "quota-b")
	require.Zero(t, usage(t, s, a.ID))
	require.Zero(t, usage(t, s, agentotp.NewAgentID()), "an unknown agent stores nothing")
	for i := range 3 {
		createPermission(t, s, final(a.ID, agentotp.StatusDenied, time.Duration(i)*time.Second, time.Duration(i)*time.Second))
	}
	createPermission(t, s, final(b.ID, agentotp.StatusUsed, 0, 0))
	u := usage(t, s, a.ID)
	require.Equal(t, 3, u.Permissions)
	require.Positive(t, u.Bytes)
	require.Equal(t, 1, usage(t, s, b.ID).Permissions)

	// Bytes follow what a permission holds.
	big := map[string]any{"blob": strings.Repeat("é", 5000)} // 10,000 bytes of UTF-8
	p := final(a.ID, agentotp.StatusPending, time.Minute, time.Minute)
	p.Scope, p.Context = big, big
	createPermission(t, s, p)
	grown := usage(t, s, a.ID)
	require.Equal(t, 4, grown.Permissions, "every status counts")
	require.GreaterOrEqual(t, grown.Bytes-u.Bytes, int64(20000), "scope and context count in bytes as stored")

	// Inside one transaction the usage sees its own writes; a rolled back
	// write is not counted.
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx agentotp.Tx) error {
		if err := tx.CreatePermission(ctx, final(a.ID, agentotp.StatusDenied, 0, 0)); err != nil {
			return err
		}
		u, err := tx.StorageUsage(ctx, a.ID)
		require.NoError(t, err)
		require.Equal(t, 5, u.Permissions)
		return boom
	})
	require.ErrorIs(t, err, boom)
	require.Equal(t, grown, usage(t, s, a.ID))

	// A decision that grants a larger scope takes more room; a status
	// change alone takes none.
	p.Status, p.GrantedScope, p.DecisionReason = agentotp.StatusApproved, big, "fine"
	update(t, s, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, p, agentotp.StatusPending) })
	decided := usage(t, s, a.ID)
	require.GreaterOrEqual(t, decided.Bytes-grown.Bytes, int64(10000))
	p.Status = agentotp.StatusRevoked
	update(t, s, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, p, agentotp.StatusApproved) })
	require.Equal(t, decided, usage(t, s, a.ID))

	// Pruning gives the room back, exactly.
	require.Equal(t, 4, prune(t, s, at(30*time.Second), 100), "a's three denied, b's used one")
	require.Zero(t, usage(t, s, b.ID))
	left := usage(t, s, a.ID)
	require.Equal(t, 1, left.Permissions)
	require.Less(t, left.Bytes, decided.Bytes)
	require.Equal(t, 1, prune(t, s, at(time.Hour), 100), "a's revoked one")
	require.Zero(t, usage(t, s, a.ID))

	// A deleted agent's permissions stay, counted against nobody.
	createPermission(t, s, final(a.ID, agentotp.StatusPending, 0, 0))
	update(t, s, func(tx agentotp.Tx) error { return tx.DeleteAgent(ctx, a.ID) })
	require.Zero(t, usage(t, s, a.ID))
}

func testPrunePermissions(t *testing.T, s agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, s, "pruned")
	user := createUser(t, s, "voter")
	cutoff := at(24 * time.Hour)
	type row struct {
		p      *agentotp.Permission
		pruned bool
	}
	var rows []row
	add := func(st agentotp.Status, created, changed time.Duration, pruned bool) *agentotp.Permission {
		p := final(agent.ID, st, created, changed)
		createPermission(t, s, p)
		rows = append(rows, row{p, pruned})
		return p
	}
	denied := add(agentotp.StatusDenied, 0, time.Hour, true)
	add(agentotp.StatusExpired, 0, time.Hour, true)
	add(agentotp.StatusUsed, 0, time.Hour, true)
	add(agentotp.StatusRevoked, 0, time.Hour, true)
	add(agentotp.StatusPending, 0, 0, false)                     // never pruned, however old
	add(agentotp.StatusApproved, 0, 0, false)                    // live grants too
	add(agentotp.StatusDenied, 0, 25*time.Hour, false)           // old but changed after the cutoff
	add(agentotp.StatusUsed, 24*time.Hour, 24*time.Hour, false)  // exactly at the cutoff: kept
	add(agentotp.StatusUsed, 30*time.Hour, 30*time.Hour, false)  // recent
	add(agentotp.StatusExpired, time.Hour, 24*time.Hour-1, true) // just before the cutoff
	update(t, s, func(tx agentotp.Tx) error {
		if err := tx.AddApproval(ctx, agentotp.Approval{PermissionID: denied.ID, UserID: user.ID, Reason: "no", CreatedAt: base}); err != nil {
			return err
		}
		e := event(1, agentotp.EventDeny)
		e.AgentID, e.PermissionID = agent.ID, denied.ID
		return tx.AppendAudit(ctx, e)
	})

	require.Equal(t, 5, prune(t, s, cutoff, 100))
	require.Zero(t, prune(t, s, cutoff, 100), "nothing is left to prune")
	for _, r := range rows {
		_, err := s.Permission(ctx, r.p.ID)
		if r.pruned {
			require.ErrorIs(t, err, agentotp.ErrNotFound, "%s changed at %v", r.p.Status, r.p.UpdatedAt)
		} else {
			require.NoError(t, err, "%s changed at %v", r.p.Status, r.p.UpdatedAt)
		}
	}
	votes, err := s.Approvals(ctx, denied.ID)
	require.NoError(t, err)
	require.Empty(t, votes, "a pruned permission's votes go with it")
	events, err := s.AuditEvents(ctx, agentotp.AuditFilter{PermissionID: denied.ID})
	require.NoError(t, err)
	require.Len(t, events, 1, "audit events stay")
	require.Equal(t, int64(1), verifyChain(t, s))
	_, total, err := s.Permissions(ctx, agentotp.PermissionFilter{AgentID: agent.ID})
	require.NoError(t, err)
	require.Equal(t, 5, total)
	require.Zero(t, prune(t, s, cutoff, 0), "a zero limit deletes nothing")
}

func testPruneInBatches(t *testing.T, s agentotp.Store) {
	agent := createAgent(t, s, "batches")
	update(t, s, func(tx agentotp.Tx) error {
		for i := range 7 {
			if err := tx.CreatePermission(context.Background(), final(agent.ID, agentotp.StatusUsed, time.Duration(i), time.Duration(i))); err != nil {
				return err
			}
		}
		return nil
	})
	var got []int
	for n := -1; n != 0; {
		n = prune(t, s, at(time.Hour), 3)
		got = append(got, n)
	}
	require.Equal(t, []int{3, 3, 1, 0}, got)
	require.Zero(t, usage(t, s, agent.ID))
}

// testConcurrentQuota checks a quota counted with StorageUsage inside
// Update: 100 concurrent creators over two stores on one database, each
// creating only while the agent has fewer than 20, leave exactly 20.
func testConcurrentQuota(t *testing.T, a, b agentotp.Store) {
	ctx := context.Background()
	agent := createAgent(t, a, "hoarder")
	const quota = 20
	full := errors.New("quota reached")
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 100 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			<-start
			err := s.Update(ctx, func(tx agentotp.Tx) error {
				u, err := tx.StorageUsage(ctx, agent.ID)
				if err != nil {
					return err
				}
				if u.Permissions >= quota {
					return full
				}
				return tx.CreatePermission(ctx, final(agent.ID, agentotp.StatusPending, 0, 0))
			})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, full):
				refused.Add(1)
			default:
				t.Errorf("create: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	require.Equal(t, int64(quota), ok.Load())
	require.Equal(t, int64(100-quota), refused.Load())
	for _, s := range []agentotp.Store{a, b} {
		_, total, err := s.Permissions(ctx, agentotp.PermissionFilter{AgentID: agent.ID})
		require.NoError(t, err)
		require.Equal(t, quota, total)
		require.Equal(t, quota, usage(t, s, agent.ID).Permissions)
	}
}

// KeyedOpener returns a fresh, empty store that keys its audit chain with
// key, and arranges its Close.
type KeyedOpener func(t *testing.T, key *agentotp.AuditKey) agentotp.Store

// RunKeyedAudit checks a store that keys its audit chain: it must implement
// agentotp.AuditSnapshotter, give every event a MAC and the recorded head
// one, record the issued token on token_issue, and refuse to record a
// token issue or a use that the permission's latest events contradict.
func RunKeyedAudit(t *testing.T, open KeyedOpener) {
	key, err := agentotp.NewAuditKey([]byte(strings.Repeat("contract audit key ", 2)))
	require.NoError(t, err)
	tests := []struct {
		name string
		fn   func(t *testing.T, s agentotp.Store, key *agentotp.AuditKey)
	}{
		{"EventsAndHeadCarryMACs", testKeyedChain},
		{"TokenIssueRecordsToken", testTokenRef},
		{"UseHeldToTrail", testUseHeldToTrail},
		{"IssueHeldToTrail", testIssueHeldToTrail},
		{"GrantHeldToTrail", testGrantHeldToTrail},
		{"SnapshotIsConsistent", testAuditSnapshot},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t, key), key) })
	}
}

func snapshotter(t *testing.T, s agentotp.Store) agentotp.AuditSnapshotter {
	t.Helper()
	ks, ok := s.(agentotp.AuditSnapshotter)
	require.True(t, ok, "a keyed store implements agentotp.AuditSnapshotter")
	return ks
}

func testKeyedChain(t *testing.T, s agentotp.Store, key *agentotp.AuditKey) {
	ctx := context.Background()
	require.Equal(t, key.ID(), snapshotter(t, s).AuditKey().ID())
	events := []*agentotp.AuditEvent{event(1, agentotp.EventAgentCreate), event(2, agentotp.EventPolicyReload)}
	appendEvents(t, s, events...)
	for _, e := range events {
		require.True(t, key.VerifyEvent(e), "AppendAudit sets the MAC")
	}
	v := agentotp.NewKeyedChainVerifier(key)
	require.NoError(t, s.ScanAudit(ctx, v.Next))
	require.Equal(t, int64(1), v.KeyedFrom)
	var head agentotp.AuditHeadRecord
	require.NoError(t, snapshotter(t, s).AuditSnapshot(ctx, func(snap agentotp.AuditSnapshot) error {
		var err error
		head, err = snap.Head(ctx)
		return err
	}))
	require.Equal(t, events[1].Seq, head.Seq)
	require.Equal(t, events[1].Hash, head.Hash)
	require.True(t, key.VerifyHead(head.Seq, head.Hash, head.MAC))
	require.Equal(t, key.ID(), head.KeyID)
}

// trailed creates an approved permission with the events a service records
// for it: request, approve and token_issue.
func trailed(t *testing.T, s agentotp.Store, uses int) (*agentotp.Permission, *agentotp.AuditEvent) {
	t.Helper()
	agent := createAgent(t, s, "trail-"+string(agentotp.NewAgentID()))
	p, _ := approved(agent.ID, uses, at(time.Hour))
	issue := permEvent(3, agentotp.EventTokenIssue, p, map[string]any{"uses": uses})
	update(t, s, func(tx agentotp.Tx) error {
		if err := tx.CreatePermission(context.Background(), p); err != nil {
			return err
		}
		for _, e := range []*agentotp.AuditEvent{
			permEvent(1, agentotp.EventRequest, p, map[string]any{"uses": uses}),
			permEvent(2, agentotp.EventApprove, p, nil), issue,
		} {
			if err := tx.AppendAudit(context.Background(), e); err != nil {
				return err
			}
		}
		return nil
	})
	return p, issue
}

func permEvent(i int, typ agentotp.EventType, p *agentotp.Permission, details map[string]any) *agentotp.AuditEvent {
	e := event(i, typ)
	e.AgentID, e.PermissionID = p.AgentID, p.ID
	if details != nil {
		e.Details = details
	}
	return e
}

// spendAndRecord spends one use and records it, as the service does.
func spendAndRecord(s agentotp.Store, p *agentotp.Permission) error {
	ctx := context.Background()
	return s.Update(ctx, func(tx agentotp.Tx) error {
		left, err := tx.SpendToken(ctx, p.ID, p.AgentID, p.TokenHash, base)
		if err != nil {
			return err
		}
		return tx.AppendAudit(ctx, permEvent(4, agentotp.EventUse, p, map[string]any{"usesRemaining": left}))
	})
}

func testTokenRef(t *testing.T, s agentotp.Store, key *agentotp.AuditKey) {
	p, issue := trailed(t, s, 1)
	require.NotEmpty(t, issue.TokenRef)
	require.True(t, key.VerifyTokenRef(p.TokenHash, issue.TokenRef))
	events, err := s.AuditEvents(context.Background(), agentotp.AuditFilter{PermissionID: p.ID, Type: agentotp.EventTokenIssue})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, issue.TokenRef, events[0].TokenRef, "stored and read back")
	require.Equal(t, issue.MAC, events[0].MAC)
}

func testUseHeldToTrail(t *testing.T, s agentotp.Store, _ *agentotp.AuditKey) {
	ctx := context.Background()
	p, _ := trailed(t, s, 2)
	require.NoError(t, spendAndRecord(s, p))
	require.NoError(t, spendAndRecord(s, p), "uses that follow the trail are recorded")

	// A used-up permission written back to life, as a row edit would.
	cur, err := s.Permission(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusUsed, cur.Status)
	cur.Status, cur.UsesRemaining = agentotp.StatusApproved, 1
	update(t, s, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, cur, agentotp.StatusUsed) })
	err = spendAndRecord(s, p)
	require.ErrorIs(t, err, agentotp.ErrConflict)
	require.ErrorContains(t, err, "its audit events say used")
	got, err := s.Permission(ctx, p.ID)
	require.NoError(t, err)
	require.Equal(t, 1, got.UsesRemaining, "the spend was rolled back with the refused record")

	// Another token in place of the issued one.
	q, _ := trailed(t, s, 1)
	cur, err = s.Permission(ctx, q.ID)
	require.NoError(t, err)
	cur.TokenHash = agentotp.HashSecret(string(agentotp.NewToken()))
	update(t, s, func(tx agentotp.Tx) error { return tx.UpdatePermission(ctx, cur, agentotp.StatusApproved) })
	err = spendAndRecord(s, cur)
	require.ErrorContains(t, err, "its token is not the one its audit events issued")

	// A permission no event records.
	agent := createAgent(t, s, "untrailed")
	r, _ := approved(agent.ID, 1, at(time.Hour))
	createPermission(t, s, r)
	require.ErrorContains(t, spendAndRecord(s, r), "its audit events issued no token")
}

func testIssueHeldToTrail(t *testing.T, s agentotp.Store, _ *agentotp.AuditKey) {
	ctx := context.Background()
	agent := createAgent(t, s, "issuer")
	p, _ := approved(agent.ID, 1, at(time.Hour))
	p.TokenHash, p.TokenIssuedAt = "", time.Time{}
	update(t, s, func(tx agentotp.Tx) error {
		if err := tx.CreatePermission(ctx, p); err != nil {
			return err
		}
		// Requested and denied; the row says approved.
		if err := tx.AppendAudit(ctx, permEvent(1, agentotp.EventRequest, p, map[string]any{"uses": 1})); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, permEvent(2, agentotp.EventDeny, p, nil))
	})
	err := s.Update(ctx, func(tx agentotp.Tx) error {
		if err := tx.IssueToken(ctx, p.ID, agentotp.HashSecret(string(agentotp.NewToken())), base); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, permEvent(3, agentotp.EventTokenIssue, p, map[string]any{"uses": 1}))
	})
	require.ErrorIs(t, err, agentotp.ErrConflict)
	require.ErrorContains(t, err, "its audit events say denied")
}

// A policy's approval issues its token in the same event ("token" in the
// approve's details): it is held to the trail like a token_issue, records
// the token, and the uses that follow are held to it.
func testGrantHeldToTrail(t *testing.T, s agentotp.Store, key *agentotp.AuditKey) {
	ctx := context.Background()
	agent := createAgent(t, s, "granted")
	p, _ := approved(agent.ID, 2, at(time.Hour))
	grant := permEvent(2, agentotp.EventApprove, p, map[string]any{"decidedBy": "policy", "token": map[string]any{"uses": 2}})
	update(t, s, func(tx agentotp.Tx) error {
		if err := tx.CreatePermission(ctx, p); err != nil {
			return err
		}
		if err := tx.AppendAudit(ctx, permEvent(1, agentotp.EventRequest, p, map[string]any{"uses": 2})); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, grant)
	})
	require.True(t, grant.IssuesToken())
	require.True(t, key.VerifyTokenRef(p.TokenHash, grant.TokenRef), "the approval records the token it issued")
	require.NoError(t, spendAndRecord(s, p))
	require.NoError(t, spendAndRecord(s, p))
	err := spendAndRecord(s, p)
	require.ErrorIs(t, err, agentotp.ErrConflict, "two uses were granted")

	// A second grant on a permission its events already approved.
	q, _ := trailed(t, s, 1)
	err = s.Update(ctx, func(tx agentotp.Tx) error {
		return tx.AppendAudit(ctx, permEvent(4, agentotp.EventApprove, q, map[string]any{"token": map[string]any{"uses": 1}}))
	})
	require.ErrorIs(t, err, agentotp.ErrConflict)
	require.ErrorContains(t, err, "its audit events say approved")

	// A plain approval (a person's) issues nothing and is not held.
	require.False(t, permEvent(5, agentotp.EventApprove, q, map[string]any{"decidedBy": "user"}).IssuesToken())
}

func testAuditSnapshot(t *testing.T, s agentotp.Store, _ *agentotp.AuditKey) {
	ctx := context.Background()
	p, issue := trailed(t, s, 1)
	var (
		head   agentotp.AuditHeadRecord
		events []*agentotp.AuditEvent
		perms  []*agentotp.Permission
	)
	err := snapshotter(t, s).AuditSnapshot(ctx, func(snap agentotp.AuditSnapshot) error {
		var err error
		if head, err = snap.Head(ctx); err != nil {
			return err
		}
		// Committed meanwhile: not in this snapshot.
		appendEvents(t, s, event(9, agentotp.EventPolicyReload))
		if err := snap.ScanAudit(ctx, func(e *agentotp.AuditEvent) error { events = append(events, e); return nil }); err != nil {
			return err
		}
		return snap.ScanPermissions(ctx, func(p *agentotp.Permission) error { perms = append(perms, p); return nil })
	})
	require.NoError(t, err)
	require.Equal(t, issue.Seq, head.Seq)
	require.Len(t, events, int(issue.Seq), "the snapshot ends at its head")
	require.Equal(t, issue.TokenRef, events[len(events)-1].TokenRef)
	require.Len(t, perms, 1)
	require.Equal(t, p.ID, perms[0].ID)
}
