package agentotp

import (
	"context"
	"slices"
	"sync"
	"time"
)

// WriteQueue is the group commit a Store builds its Update on: callers
// queue their updates, and one writer goroutine takes the first waiting
// with whatever else is queued at that moment and hands them to the store
// as one batch, to run in one transaction under one commit. A batch that
// starts with a background update (WithCommitDelay) is held open for up to
// its delay, until an update someone waits on joins it.
type WriteQueue struct {
	maxBatch int
	run      func(*WriteBatch) []WriteResult
	jobs     chan *WriteJob
	quit     chan struct{} // closed by Close
	done     chan struct{} // closed when the writer goroutine has exited
	closing  sync.Once
}

// WriteBatch hands the store the jobs of one transaction, one at a time
// (Next), so that the store can run each as soon as it is taken. A batch
// held open for company has then done its background work by the time the
// update someone waits on arrives, which pays only for its own statements
// and the commit. Nothing is visible to readers or durable before that
// commit.
type WriteBatch struct {
	q       *WriteQueue
	jobs    []*WriteJob
	taken   int
	hold    *time.Timer // running while every job so far is a background update
	sealed  bool        // no more jobs join
	closing bool        // the queue closed while the batch was held
}

// Next returns the batch's next job, or nil when the batch is complete. A
// batch opened by an update someone waits on is the jobs queued at that
// moment. One opened by a background update first takes, while every job
// so far is a background update, the next to arrive, waiting up to the
// first's delay; then the jobs queued when the hold ends. A batch never
// grows while it runs. Jobs a store leaves untaken go first in the next
// batch.
func (b *WriteBatch) Next() *WriteJob {
	for {
		if b.taken < len(b.jobs) {
			b.taken++
			return b.jobs[b.taken-1]
		}
		if b.sealed {
			return nil
		}
		if b.hold != nil && len(b.jobs) < b.q.maxBatch {
			select {
			case j := <-b.q.jobs:
				b.jobs = append(b.jobs, j)
				if CommitDelay(j.Ctx) > 0 {
					continue // still nobody waiting: keep holding
				}
			case <-b.hold.C:
			case <-b.q.quit:
				b.closing = true
			}
			b.hold.Stop()
			b.hold = nil
		}
		b.gather()
	}
}

// Alone reports whether the batch is known to hold a single job, so that
// a store can run it without a savepoint of its own. A held batch is never
// known to be alone.
func (b *WriteBatch) Alone() bool { return b.sealed && len(b.jobs) == 1 }

// gather takes the jobs queued now, up to the batch's bound, and seals it.
func (b *WriteBatch) gather() {
	b.sealed = true
	for len(b.jobs) < b.q.maxBatch {
		select {
		case j := <-b.q.jobs:
			b.jobs = append(b.jobs, j)
		default:
			return
		}
	}
}

// All takes the whole batch before any of it runs, for a store that sends
// a batch's statements together.
func (b *WriteBatch) All() []*WriteJob {
	for b.Next() != nil {
	}
	return b.jobs
}

// WriteJob is one queued Update.
type WriteJob struct {
	Ctx  context.Context
	Fn   func(Tx) error
	done chan WriteResult
}

// WriteResult is how a job ended: Fn's error, or its panic, which Update
// raises again on the caller's goroutine.
type WriteResult struct {
	Err      error
	Panicked bool
	PanicVal any
}

// OK reports whether the job's changes may be committed.
func (r WriteResult) OK() bool { return r.Err == nil && !r.Panicked }

// Run calls j.Fn with tx, turning a panic into a result.
func (j *WriteJob) Run(tx Tx) (r WriteResult) {
	defer func() {
		if v := recover(); v != nil {
			r = WriteResult{Panicked: true, PanicVal: v}
		}
	}()
	return WriteResult{Err: j.Fn(tx)}
}

// errStoreClosed is what an Update gets once the store is closing.
var errStoreClosed = &Error{Code: CodeUnavailable, Message: "store is closed"}

// NewWriteQueue starts the writer goroutine. run runs a batch of at most
// maxBatch jobs, taking them with Next, and returns the results of the jobs
// it took, in order; it is only ever called from that goroutine, one batch
// at a time.
func NewWriteQueue(maxBatch int, run func(*WriteBatch) []WriteResult) *WriteQueue {
	q := &WriteQueue{maxBatch: maxBatch, run: run, jobs: make(chan *WriteJob),
		quit: make(chan struct{}), done: make(chan struct{})}
	go q.loop()
	return q
}

// Update queues fn and returns once its batch has ended: committed, or
// rolled back with fn's error. A panic in fn is raised again here.
func (q *WriteQueue) Update(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j := &WriteJob{Ctx: ctx, Fn: fn, done: make(chan WriteResult, 1)}
	select {
	case q.jobs <- j:
	case <-ctx.Done():
		return ctx.Err()
	case <-q.quit:
		return errStoreClosed
	}
	// Once queued, wait for the outcome even if ctx ends: the change may
	// already be committed, and the caller must learn that.
	r := <-j.done
	if r.Panicked {
		panic(r.PanicVal)
	}
	return r.Err
}

// Close stops taking updates and returns once the writer has finished:
// a batch being held commits first; an Update still queued fails with
// SERVICE_UNAVAILABLE. It may be called more than once.
func (q *WriteQueue) Close() {
	q.closing.Do(func() { close(q.quit) })
	<-q.done
}

// Closing is closed when Close begins.
func (q *WriteQueue) Closing() <-chan struct{} { return q.quit }

// errNotRun answers the jobs of a batch whose store took none of them, or
// took a job and gave no result for it.
var errNotRun = &Error{Code: CodeInternal, Message: "the store did not run the update"}

func (q *WriteQueue) loop() {
	defer close(q.done)
	var carry []*WriteJob // taken off the queue by the last batch, not run
	for {
		b := &WriteBatch{q: q, jobs: carry, sealed: len(carry) > 0}
		carry = nil
		if !b.sealed {
			select {
			case first := <-q.jobs:
				b.jobs = append(b.jobs, first)
				if d := CommitDelay(first.Ctx); d > 0 {
					b.hold = time.NewTimer(d)
				} else {
					b.gather() // someone waits: the batch is what is queued now
				}
			case <-q.quit:
				return
			}
		}
		results := q.run(b)
		if b.hold != nil {
			b.hold.Stop()
		}
		done := b.jobs[:b.taken]
		if b.taken == 0 {
			done = b.jobs // a store that takes nothing must not loop forever
		}
		for i, j := range done {
			r := WriteResult{Err: errNotRun}
			if i < len(results) {
				r = results[i]
			}
			j.done <- r
		}
		carry = slices.Clone(b.jobs[len(done):])
		if b.closing {
			for _, j := range carry {
				j.done <- WriteResult{Err: errStoreClosed}
			}
			return
		}
	}
}
