package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// The writer runs its own BEGIN, COMMIT and ROLLBACK on one connection, so
// it must never leave that connection inside a transaction: one failure
// would otherwise fail every write after it.
func TestWriterConnection(t *testing.T) {
	ctx := context.Background()
	newAgent := func(name string) *agentotp.Agent {
		return &agentotp.Agent{ID: agentotp.NewAgentID(), Name: name, KeyHash: "h-" + name}
	}
	create := func(s *Store, ctx context.Context, a *agentotp.Agent) error {
		return s.Update(ctx, func(tx agentotp.Tx) error { return tx.CreateAgent(ctx, a) })
	}
	stored := func(t *testing.T, s *Store, a *agentotp.Agent) bool {
		t.Helper()
		_, err := s.Agent(ctx, a.ID)
		if errors.Is(err, agentotp.ErrNotFound) {
			return false
		}
		require.NoError(t, err)
		return true
	}

	t.Run("a transaction left open is ended before the next batch", func(t *testing.T) {
		s, err := Open(ctx, filepath.Join(t.TempDir(), "w.db"), Options{})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		s.writerMu.Lock()
		_, err = s.writer.ExecContext(ctx, "BEGIN IMMEDIATE")
		s.writerMu.Unlock()
		require.NoError(t, err)

		a := newAgent("after")
		require.NoError(t, create(s, ctx, a))
		require.True(t, stored(t, s, a))
	})

	t.Run("a failed first job rolls back and the writer goes on", func(t *testing.T) {
		s, err := Open(ctx, filepath.Join(t.TempDir(), "w.db"), Options{})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		boom := errors.New("boom")
		bad := newAgent("bad")
		require.ErrorIs(t, s.Update(ctx, func(tx agentotp.Tx) error {
			require.NoError(t, tx.CreateAgent(ctx, bad))
			return boom
		}), boom)
		good := newAgent("good")
		require.NoError(t, create(s, ctx, good))
		require.False(t, stored(t, s, bad), "rolled back")
		require.True(t, stored(t, s, good))
	})

	t.Run("a held batch keeps its writes invisible; Vacuum and Ping wait for it", func(t *testing.T) {
		s, err := Open(ctx, filepath.Join(t.TempDir(), "w.db"), Options{})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		held := newAgent("held")
		heldDone := make(chan error, 1)
		go func() { heldDone <- create(s, agentotp.WithCommitDelay(ctx, 300*time.Millisecond), held) }()
		time.Sleep(100 * time.Millisecond) // run, and held open waiting for company
		require.False(t, stored(t, s, held), "not visible before its commit")

		start := time.Now()
		require.NoError(t, s.Ping(ctx))
		require.NoError(t, s.Vacuum(ctx))
		require.NoError(t, <-heldDone)
		require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond, "waited for the held batch")
		require.True(t, stored(t, s, held))
	})
}
