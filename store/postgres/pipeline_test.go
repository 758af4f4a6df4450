package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// An audit insert whose values PostgreSQL takes for certain travels with
// the next job's first statement, or with the COMMIT. Should it fail after
// all (here a trigger refuses it), its job fails with its error, the jobs
// after it (whose events were linked to it) fail as aborted, the jobs
// before it commit, and the chain stays whole.
func TestQueuedAuditInsertFailsLate(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	s := open(t, dsn, postgres.Options{AuditKey: testKey(t)})
	db := raw(t, dsn)
	_, err := db.Exec(ctx, `CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'boom refused'; END $$;
		CREATE TRIGGER refuse_boom BEFORE INSERT ON audit_events FOR EACH ROW
		WHEN (NEW.actor_id = 'boom') EXECUTE FUNCTION refuse_boom()`)
	require.NoError(t, err)
	appendEvent := func(tx agentotp.Tx, actor string) error {
		return tx.AppendAudit(ctx, &agentotp.AuditEvent{Time: t0, Type: agentotp.EventDecideRejected,
			ActorType: "user", ActorID: actor})
	}

	// One batch: [hold] then, in order, A appends; B appends the refused
	// event; C creates an agent (B's insert travels with it) and appends;
	// D appends (its insert travels with the COMMIT).
	batch := func(t *testing.T, jobs []func(agentotp.Tx) error) []error {
		hold := make(chan struct{})
		var first sync.WaitGroup
		first.Add(1)
		go func() {
			defer first.Done()
			_ = s.Update(ctx, func(agentotp.Tx) error { <-hold; return nil })
		}()
		time.Sleep(50 * time.Millisecond)
		errs := make([]error, len(jobs))
		var wg sync.WaitGroup
		for i, fn := range jobs {
			wg.Go(func() { errs[i] = s.Update(ctx, fn) })
			time.Sleep(20 * time.Millisecond) // queue in order
		}
		close(hold)
		wg.Wait()
		first.Wait()
		return errs
	}
	agent := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: "c", KeyHash: "c"}
	errs := batch(t, []func(agentotp.Tx) error{
		func(tx agentotp.Tx) error { return appendEvent(tx, "a") },
		func(tx agentotp.Tx) error { return appendEvent(tx, "boom") },
		func(tx agentotp.Tx) error {
			if err := tx.CreateAgent(ctx, agent); err != nil {
				return err
			}
			return appendEvent(tx, "c")
		},
		func(tx agentotp.Tx) error { return appendEvent(tx, "d") },
	})
	require.NoError(t, errs[0])
	require.ErrorIs(t, errs[1], agentotp.ErrInternal)
	require.ErrorContains(t, errs[1], "boom refused")
	require.ErrorIs(t, errs[2], agentotp.ErrUnavailable, "C's events were linked to B's")
	require.NoError(t, errs[3], "D ran after B was rolled back")
	_, err = s.Agent(ctx, agent.ID)
	require.ErrorIs(t, err, agentotp.ErrNotFound, "C was rolled back")

	// The refused event last in the batch fails at COMMIT; those before
	// it commit.
	errs = batch(t, []func(agentotp.Tx) error{
		func(tx agentotp.Tx) error { return appendEvent(tx, "e") },
		func(tx agentotp.Tx) error { return appendEvent(tx, "boom") },
	})
	require.NoError(t, errs[0])
	require.ErrorContains(t, errs[1], "boom refused")

	// Alone in its transaction.
	require.ErrorContains(t, s.Update(ctx, func(tx agentotp.Tx) error { return appendEvent(tx, "boom") }), "boom refused")

	var actors []string
	require.NoError(t, s.ScanAudit(ctx, func(e *agentotp.AuditEvent) error {
		actors = append(actors, e.ActorID)
		return nil
	}))
	require.Equal(t, []string{"a", "d", "e"}, actors)
	verified(t, s)
}
