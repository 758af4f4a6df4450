package agentotp_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

// BenchmarkRequestAndUse measures one auto-approved request plus one use
// through Service on the SQLite store: two durable transactions per cycle.
func BenchmarkRequestAndUse(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("sync="+sync, func(b *testing.B) {
			ctx := context.Background()
			st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: sync})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			svc := agentotp.NewService(st, agentotp.Options{Evaluator: agentotp.EvaluatorFunc(
				func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
					return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "bench"}, nil
				})})
			adminKey := agentotp.NewUserKey()
			if _, err := svc.EnsureAdmin(ctx, adminKey); err != nil {
				b.Fatal(err)
			}
			admin, _ := svc.Authenticate(ctx, adminKey.Reveal())
			_, key, err := svc.CreateAgent(ctx, admin, agentotp.AgentInput{Name: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			agent, _ := svc.Authenticate(ctx, key.Reveal())
			req := agentotp.PermissionRequest{Action: "bench.cycle", Scope: map[string]any{"max_items": 1.0}}
			// Many agents at once, as in production: the store batches
			// their commits (16 goroutines per core).
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					perm, tok, err := svc.RequestPermission(ctx, agent, req)
					if err != nil || tok == "" {
						b.Errorf("request: %v", err)
						return
					}
					res, err := svc.Use(ctx, agent, perm.ID, tok.Reveal(), map[string]any{"items": 1.0})
					if err != nil || !res.Success {
						b.Errorf("use: %v %+v", err, res)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
		})
	}
}

// BenchmarkAuthenticate measures key lookup: SHA-256 plus one indexed read.
func BenchmarkAuthenticate(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "agentotp.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	svc := agentotp.NewService(st, agentotp.Options{})
	adminKey := agentotp.NewUserKey()
	if _, err := svc.EnsureAdmin(ctx, adminKey); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := svc.Authenticate(ctx, adminKey.Reveal()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
