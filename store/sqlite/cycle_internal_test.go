package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/agentotp/agentotp"
)

// BenchmarkCycleCost reports what one auto-approved request and its use
// cost the writer: commits (one WAL fsync each at synchronous=FULL),
// statements (BEGIN, savepoints and COMMIT included), WAL frames (pages
// written; the WAL is not checkpointed during the run) and bytes the
// database grows by. "two-call" is a request then a use (two updates);
// "one-call" asks and spends in one update (Service.RequestAndUse).
//
//	go test -run '^$' -bench CycleCost -benchtime 2000x ./store/sqlite
func BenchmarkCycleCost(b *testing.B) {
	for _, oneCall := range []bool{false, true} {
		for _, conc := range []int{1, 32} {
			name := fmt.Sprintf("two-call/c=%d", conc)
			if oneCall {
				name = fmt.Sprintf("one-call/c=%d", conc)
			}
			b.Run(name, func(b *testing.B) { cycleCost(b, oneCall, conc) })
		}
	}
}

func cycleCost(b *testing.B, oneCall bool, conc int) {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "cycle.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.writer.ExecContext(ctx, "PRAGMA wal_autocheckpoint = 0"); err != nil {
		b.Fatal(err)
	}
	svc := agentotp.NewService(s, agentotp.Options{Evaluator: agentotp.EvaluatorFunc(
		func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "bench"}, nil
		})})
	agents := make([]agentotp.Principal, conc)
	for i := range agents {
		a, _, err := svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: fmt.Sprintf("agent-%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		agents[i] = agentotp.Principal{Agent: a}
	}
	req := agentotp.PermissionRequest{Action: "bench.cycle", Scope: map[string]any{"max_items": 1.0}}
	details := map[string]any{"items": 1.0}
	cycle := func(p agentotp.Principal) error {
		if oneCall {
			_, _, used, err := svc.RequestAndUse(ctx, p, req, details)
			if err == nil && (used == nil || !used.Success) {
				err = fmt.Errorf("not spent: %+v", used)
			}
			return err
		}
		perm, tok, err := svc.RequestPermission(ctx, p, req)
		if err != nil {
			return err
		}
		res, err := svc.Use(ctx, p, perm.ID, tok.Reveal(), details)
		if err == nil && !res.Success {
			err = fmt.Errorf("use refused: %s", res.Reason)
		}
		return err
	}
	size := func() (db, wal int64) {
		for i, suffix := range []string{"", "-wal"} {
			fi, err := os.Stat(path + suffix)
			if err != nil {
				b.Fatal(err)
			}
			if i == 0 {
				db = fi.Size()
			} else {
				wal = fi.Size()
			}
		}
		return db, wal
	}
	var pageSize int64
	if err := s.writer.QueryRowContext(ctx, "PRAGMA page_size").Scan(&pageSize); err != nil {
		b.Fatal(err)
	}
	before := s.Stats()
	_, wal0 := size()
	b.ResetTimer()
	var wg sync.WaitGroup
	work := make(chan struct{})
	errs := make(chan error, conc)
	for i := range conc {
		wg.Go(func() {
			for range work {
				if err := cycle(agents[i]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	after := s.Stats()
	_, wal1 := size()
	// Every page the run wrote is still in the WAL; checkpointing it
	// shows what the database file itself grows by.
	db0, _ := size()
	if _, err := s.writer.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		b.Fatal(err)
	}
	db1, _ := size()
	n := float64(b.N)
	b.ReportMetric(float64(after.Commits-before.Commits)/n, "commits/cycle")
	b.ReportMetric(float64(after.Statements-before.Statements)/n, "statements/cycle")
	b.ReportMetric(float64(wal1-wal0)/float64(pageSize+24)/n, "wal-frames/cycle")
	b.ReportMetric(float64(db1-db0)/n, "db-bytes/cycle")
	b.ReportMetric(n/b.Elapsed().Seconds(), "cycles/s")
}
