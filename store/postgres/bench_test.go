package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// durable starts a server of its own with fsync on, as in production: the
// shared test server skips the disk.
func durable(b *testing.B) *pgtest.Server {
	b.Helper()
	srv, err := pgtest.Start(pgtest.Options{Durable: true})
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(srv.Stop)
	return srv
}

// BenchmarkCommitBaseline is the server's own rate of durable one-row
// commits from one client: the yardstick for the cycle below.
func BenchmarkCommitBaseline(b *testing.B) {
	ctx := context.Background()
	srv := durable(b)
	c, err := pgx.Connect(ctx, srv.DSN("postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, `CREATE TABLE one (id bigserial PRIMARY KEY, v text)`); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Exec(ctx, `INSERT INTO one (v) VALUES ($1)`, "x"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}

// BenchmarkCycle runs the store's share of an auto-approved request and its
// use: one Update creating the permission with its request and approval
// events, one spending the token and recording the use, from 32 parallel
// callers over one or two instances on a durable server.
func BenchmarkCycle(b *testing.B) {
	for _, instances := range []int{1, 2} {
		b.Run(fmt.Sprintf("instances=%d", instances), func(b *testing.B) {
			ctx := context.Background()
			srv := durable(b)
			key, _ := agentotp.NewAuditKey([]byte("benchmark audit key, 32 bytes at least"))
			var stores []*postgres.Store
			for range instances {
				s, err := postgres.Open(ctx, srv.DSN("postgres"), postgres.Options{AuditKey: key, MaxConns: 40})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { s.Close() })
				stores = append(stores, s)
			}
			agent := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "bench", KeyHash: "bench", Active: true}
			if err := stores[0].Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, agent) }); err != nil {
				b.Fatal(err)
			}
			next := make(chan int, 1)
			next <- 0
			b.SetParallelism(16) // 32 callers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := <-next
				next <- i + 1
				s := stores[i%len(stores)]
				for pb.Next() {
					hash := agentotp.HashSecret(string(agentotp.NewToken()))
					now := time.Now().UTC()
					p := &agentotp.Permission{ID: agentotp.NewPermissionID(), AgentID: agent.ID, Action: "db.query",
						Resource: "db://orders", Status: agentotp.StatusApproved, CreatedAt: now, UpdatedAt: now,
						Decision: agentotp.Decision{Effect: agentotp.EffectAutoApprove}, Uses: 1, UsesRemaining: 1,
						TokenExpiresAt: now.Add(time.Minute), TokenHash: hash, TokenIssuedAt: now}
					err := s.Update(ctx, func(tx agentotp.Tx) error {
						if err := request(ctx, tx, p); err != nil {
							return err
						}
						return tx.AppendAudit(ctx, event(agentotp.EventApprove, p, map[string]any{"token": map[string]any{"uses": 1}}))
					})
					if err == nil {
						err = s.Update(ctx, func(tx agentotp.Tx) error {
							left, err := tx.SpendToken(ctx, p.ID, agent.ID, hash, now.Add(time.Millisecond))
							if err != nil {
								return err
							}
							return tx.AppendAudit(ctx, event(agentotp.EventUse, p, map[string]any{"usesRemaining": left}))
						})
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
			var commits int64
			for _, s := range stores {
				commits += s.Stats().Commits
			}
			b.ReportMetric(float64(2*b.N)/float64(max(commits, 1)), "updates/commit")
		})
	}
}
