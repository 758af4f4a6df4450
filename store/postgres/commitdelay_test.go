package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/postgres"
	"github.com/agentotp/agentotp/store/postgres/pgtest"
)

// A background update (agentotp.WithCommitDelay) waits for company up to
// its delay: the next update someone waits on takes it along in its own
// commit, and it still returns only once committed.
func TestCommitDelay(t *testing.T) {
	ctx := context.Background()
	create := func(s *postgres.Store, ctx context.Context, name string) (agentotp.AgentID, <-chan error) {
		a := &agentotp.Agent{ID: agentotp.NewAgentID(), Name: name, KeyHash: "h-" + name}
		done := make(chan error, 1)
		go func() { done <- s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) }) }()
		return a.ID, done
	}
	stored := func(t *testing.T, s *postgres.Store, id agentotp.AgentID) {
		t.Helper()
		_, err := s.Agent(ctx, id)
		require.NoError(t, err)
	}

	t.Run("rides along with the next update", func(t *testing.T) {
		s := open(t, pgtest.NewDatabase(t), postgres.Options{})
		held, heldDone := create(s, agentotp.WithCommitDelay(ctx, time.Hour), "held")
		select {
		case err := <-heldDone:
			t.Fatalf("a background update committed alone before its delay: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		_, err := s.Agent(ctx, held)
		require.ErrorIs(t, err, agentotp.ErrNotFound, "not committed while held")

		next, nextDone := create(s, ctx, "next")
		for _, done := range []<-chan error{nextDone, heldDone} {
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("the held update did not commit with the next one")
			}
		}
		stored(t, s, held)
		stored(t, s, next)
		require.Equal(t, postgres.Stats{Commits: 1, Updates: 2}, s.Stats())
	})

	t.Run("alone, commits after its delay", func(t *testing.T) {
		s := open(t, pgtest.NewDatabase(t), postgres.Options{})
		start := time.Now()
		id, done := create(s, agentotp.WithCommitDelay(ctx, 50*time.Millisecond), "alone")
		require.NoError(t, <-done)
		require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
		stored(t, s, id)
	})

	t.Run("close commits a held update", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		s, err := postgres.Open(ctx, dsn, postgres.Options{})
		require.NoError(t, err)
		id, done := create(s, agentotp.WithCommitDelay(ctx, time.Hour), "closing")
		time.Sleep(50 * time.Millisecond) // queued and held
		require.NoError(t, s.Close())
		require.NoError(t, <-done)
		stored(t, open(t, dsn, postgres.Options{}), id)
	})
}
