package agentotp

import (
	"context"
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
	run      func([]*WriteJob) []WriteResult
	jobs     chan *WriteJob
	quit     chan struct{} // closed by Close
	done     chan struct{} // closed when the writer goroutine has exited
	closing  sync.Once
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
// maxBatch jobs and returns their results, in order; it is only ever
// called from that goroutine, one batch at a time.
func NewWriteQueue(maxBatch int, run func([]*WriteJob) []WriteResult) *WriteQueue {
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

func (q *WriteQueue) loop() {
	defer close(q.done)
	batch := make([]*WriteJob, 0, q.maxBatch)
	for {
		var first *WriteJob
		select {
		case first = <-q.jobs:
		case <-q.quit:
			return
		}
		batch = append(batch[:0], first)
		closing := false
		if d := CommitDelay(first.Ctx); d > 0 {
			batch, closing = q.hold(batch, d)
		}
	gather:
		for len(batch) < q.maxBatch {
			select {
			case j := <-q.jobs:
				batch = append(batch, j)
			default:
				break gather
			}
		}
		for i, r := range q.run(batch) {
			batch[i].done <- r
		}
		if closing {
			return
		}
	}
}

// hold keeps a batch of background updates open for up to d, until an
// update someone waits on arrives to share its commit, the batch is full,
// or the queue closes (reported by closing: the held batch still commits
// first).
func (q *WriteQueue) hold(batch []*WriteJob, d time.Duration) (_ []*WriteJob, closing bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for len(batch) < q.maxBatch {
		select {
		case j := <-q.jobs:
			batch = append(batch, j)
			if CommitDelay(j.Ctx) == 0 {
				return batch, false
			}
		case <-t.C:
			return batch, false
		case <-q.quit:
			return batch, true
		}
	}
	return batch, false
}
