package agentotp_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// recorder runs batches by calling each job's Fn (with a nil Tx) and
// remembers their sizes.
type recorder struct {
	mu      sync.Mutex
	batches []int
}

func (r *recorder) run(batch []*agentotp.WriteJob) []agentotp.WriteResult {
	r.mu.Lock()
	r.batches = append(r.batches, len(batch))
	r.mu.Unlock()
	out := make([]agentotp.WriteResult, len(batch))
	for i, j := range batch {
		out[i] = j.Run(nil)
	}
	return out
}

func (r *recorder) sizes() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.batches...)
}

func TestWriteQueue(t *testing.T) {
	ctx := context.Background()
	background := agentotp.WithCommitDelay(ctx, time.Minute)
	ok := func(agentotp.Tx) error { return nil }

	t.Run("a background update waits for the next one and shares its batch", func(t *testing.T) {
		r := &recorder{}
		q := agentotp.NewWriteQueue(8, r.run)
		defer q.Close()
		done := make(chan error, 1)
		go func() { done <- q.Update(background, ok) }()
		time.Sleep(50 * time.Millisecond)
		require.Empty(t, r.sizes(), "held, not run alone")
		require.NoError(t, q.Update(ctx, ok))
		require.NoError(t, <-done)
		require.Equal(t, []int{2}, r.sizes())
	})

	t.Run("a background update alone runs after its delay", func(t *testing.T) {
		r := &recorder{}
		q := agentotp.NewWriteQueue(8, r.run)
		defer q.Close()
		start := time.Now()
		require.NoError(t, q.Update(agentotp.WithCommitDelay(ctx, 30*time.Millisecond), ok))
		require.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)
		require.Equal(t, []int{1}, r.sizes())
	})

	t.Run("close runs a held batch, then refuses updates", func(t *testing.T) {
		r := &recorder{}
		q := agentotp.NewWriteQueue(8, r.run)
		done := make(chan error, 1)
		go func() { done <- q.Update(background, ok) }()
		time.Sleep(50 * time.Millisecond) // queued and held
		q.Close()
		require.NoError(t, <-done)
		err := q.Update(ctx, ok)
		var e *agentotp.Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, agentotp.CodeUnavailable, e.Code)
		require.Equal(t, []int{1}, r.sizes(), "the held update ran before the queue closed")
	})

	t.Run("fn's error and panic reach the caller", func(t *testing.T) {
		r := &recorder{}
		q := agentotp.NewWriteQueue(8, r.run)
		defer q.Close()
		boom := errors.New("boom")
		require.ErrorIs(t, q.Update(ctx, func(agentotp.Tx) error { return boom }), boom)
		require.PanicsWithValue(t, "bad fn", func() {
			_ = q.Update(ctx, func(agentotp.Tx) error { panic("bad fn") })
		})
		require.NoError(t, q.Update(ctx, ok), "the writer survives a panicking fn")
	})

	t.Run("a cancelled context is not queued", func(t *testing.T) {
		r := &recorder{}
		q := agentotp.NewWriteQueue(8, r.run)
		defer q.Close()
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		require.ErrorIs(t, q.Update(cancelled, ok), context.Canceled)
		require.Empty(t, r.sizes())
	})
}
