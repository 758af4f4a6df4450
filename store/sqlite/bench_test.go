package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/stretchr/testify/require"
)

// Both benchmarks run each operation in its own committed transaction, as
// the service does, so they measure commit latency under each sync mode.
var syncModes = []string{"FULL", "NORMAL"}

func benchStore(b *testing.B, mode string) (*sqlite.Store, *agentotp.Agent) {
	s := open(b, filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{Synchronous: mode})
	a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "bench", KeyHash: "k", Active: true}
	require.NoError(b, s.Update(context.Background(), func(tx agentotp.Tx) error { return tx.CreateAgent(context.Background(), a) }))
	return s, a
}

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkSpendToken is the token-use hot path: one spend and its "use"
// audit event per transaction.
func BenchmarkSpendToken(b *testing.B) {
	for _, mode := range syncModes {
		b.Run("sync="+mode, func(b *testing.B) {
			ctx := context.Background()
			s, a := benchStore(b, mode)
			now := time.Now().UTC()
			hash := agentotp.HashSecret("bench-token")
			p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: a.ID, Action: "db.query",
				Status: agentotp.StatusApproved, CreatedAt: now, UpdatedAt: now, Uses: b.N + 1, UsesRemaining: b.N + 1,
				TokenExpiresAt: now.Add(time.Hour), TokenHash: hash, TokenIssuedAt: now}
			require.NoError(b, s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreatePermission(ctx, p) }))
			b.ResetTimer()
			for range b.N {
				err := s.Update(ctx, func(tx agentotp.Tx) error {
					left, err := tx.SpendToken(ctx, p.ID, a.ID, hash, now)
					if err != nil {
						return err
					}
					return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: now, Type: agentotp.EventUse, ActorType: "agent",
						ActorID: string(a.ID), AgentID: a.ID, PermissionID: p.ID, Details: map[string]any{"usesRemaining": left}})
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			reportOps(b)
		})
	}
}

// BenchmarkCreatePermissionWithAudit is the request path: a new permission
// and its "request" audit event per transaction.
func BenchmarkCreatePermissionWithAudit(b *testing.B) {
	for _, mode := range syncModes {
		b.Run("sync="+mode, func(b *testing.B) {
			ctx := context.Background()
			s, a := benchStore(b, mode)
			now := time.Now().UTC()
			scope := map[string]any{"table": "orders", "rows": 10.0}
			b.ResetTimer()
			for range b.N {
				p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: a.ID, Action: "db.query",
					Resource: "db://prod/orders", Scope: scope, Context: map[string]any{}, Status: agentotp.StatusPending,
					CreatedAt: now, UpdatedAt: now, ApprovalExpiresAt: now.Add(5 * time.Minute),
					Decision: agentotp.Decision{Effect: agentotp.EffectRequireApproval, Reason: "human"},
					TokenTTL: 5 * time.Minute, Uses: 1, UsesRemaining: 1}
				err := s.Update(ctx, func(tx agentotp.Tx) error {
					if err := tx.CreatePermission(ctx, p); err != nil {
						return err
					}
					return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: now, Type: agentotp.EventRequest, ActorType: "agent",
						ActorID: string(a.ID), AgentID: a.ID, PermissionID: p.ID, Details: map[string]any{"effect": "require_approval"}})
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			reportOps(b)
		})
	}
}
