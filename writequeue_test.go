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

// recorder runs batches by calling each job's Fn (with a nil Tx) as soon as
// it takes it, and remembers their sizes.
type recorder struct {
	mu      sync.Mutex
	batches []int
}

func (r *recorder) run(b *agentotp.WriteBatch) []agentotp.WriteResult {
	var out []agentotp.WriteResult
	for j := b.Next(); j != nil; j = b.Next() {
		out = append(out, j.Run(nil))
	}
	r.mu.Lock()
	r.batches = append(r.batches, len(out))
	r.mu.Unlock()
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

	t.Run("a held background update runs before the update that ends the hold arrives", func(t *testing.T) {
		r := &recorder{}
		q := agentotp.NewWriteQueue(8, r.run)
		defer q.Close()
		ran := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- q.Update(background, func(agentotp.Tx) error { close(ran); return nil })
		}()
		select {
		case <-ran:
		case <-time.After(10 * time.Second):
			t.Fatal("the background update did not run while its batch was held")
		}
		select {
		case err := <-done:
			t.Fatalf("the background update returned before its batch committed: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		require.NoError(t, q.Update(ctx, ok))
		require.NoError(t, <-done)
		require.Equal(t, []int{2}, r.sizes())
	})

	t.Run("a batch does not grow while it runs", func(t *testing.T) {
		var sizes []int
		var sealedEarly bool
		late := make(chan error, 1)
		var q *agentotp.WriteQueue
		run := func(b *agentotp.WriteBatch) []agentotp.WriteResult {
			var out []agentotp.WriteResult
			for j := b.Next(); j != nil; j = b.Next() {
				out = append(out, j.Run(nil))
				if len(sizes) == 0 && len(out) == 1 {
					sealedEarly = b.Alone()
					go func() { late <- q.Update(ctx, ok) }()
					time.Sleep(50 * time.Millisecond) // queued while this batch runs
				}
			}
			sizes = append(sizes, len(out))
			return out
		}
		q = agentotp.NewWriteQueue(8, run)
		defer q.Close()
		require.NoError(t, q.Update(ctx, ok))
		require.NoError(t, <-late)
		require.True(t, sealedEarly, "an update someone waits on, queued alone, runs alone")
		require.Equal(t, []int{1, 1}, sizes)
	})

	t.Run("a held batch is never alone", func(t *testing.T) {
		alone := make(chan bool, 1)
		run := func(b *agentotp.WriteBatch) []agentotp.WriteResult {
			var out []agentotp.WriteResult
			for j := b.Next(); j != nil; j = b.Next() {
				if len(out) == 0 {
					alone <- b.Alone()
				}
				out = append(out, j.Run(nil))
			}
			return out
		}
		q := agentotp.NewWriteQueue(8, run)
		defer q.Close()
		require.NoError(t, q.Update(agentotp.WithCommitDelay(ctx, 10*time.Millisecond), ok))
		require.False(t, <-alone)
	})

	t.Run("jobs a store leaves untaken run in the next batch", func(t *testing.T) {
		var sizes []int
		release := make(chan struct{})
		run := func(b *agentotp.WriteBatch) []agentotp.WriteResult {
			if len(sizes) == 0 {
				<-release // let the others queue up behind the first
			}
			j := b.Next() // one job a batch: the queue must not lose the others
			sizes = append(sizes, 1)
			return []agentotp.WriteResult{j.Run(nil)}
		}
		q := agentotp.NewWriteQueue(8, run)
		defer q.Close()
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Go(func() { errs <- q.Update(ctx, ok) })
		}
		time.Sleep(50 * time.Millisecond)
		close(release)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Len(t, sizes, 20)
	})

	t.Run("a job the store never took fails, and the queue goes on", func(t *testing.T) {
		calls := 0
		run := func(b *agentotp.WriteBatch) []agentotp.WriteResult {
			calls++
			if calls == 1 {
				return nil // never took its first job
			}
			return []agentotp.WriteResult{b.Next().Run(nil)}
		}
		q := agentotp.NewWriteQueue(8, run)
		defer q.Close()
		var e *agentotp.Error
		require.ErrorAs(t, q.Update(ctx, ok), &e)
		require.Equal(t, agentotp.CodeInternal, e.Code)
		require.NoError(t, q.Update(ctx, ok))
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
