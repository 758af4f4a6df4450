// Package postgres is the agentotp.Store that several server instances
// share, on PostgreSQL through pgx.
//
// Writes are serialized across instances. Every write transaction first
// takes one advisory lock (the writer lock) and holds it until it commits,
// running READ COMMITTED so that each statement sees every commit made
// before the lock was granted. Nearly every write appends to the audit
// chain, and a link can only be computed from the committed one before it,
// so writes that audit would queue through each other's commit anyway; the
// lock makes that explicit and buys the SQLite store's guarantees whole:
// budgets and pending caps counted in the transaction cannot be overrun,
// votes toward a quorum see each other, the chain never forks, and no two
// writers wait on each other's row locks (no deadlocks). SERIALIZABLE would
// give the same correctness only by aborting and re-running callers' fns.
// Single use does not rest on the lock alone: spends, token issues and
// compare-and-set updates are conditional UPDATEs that re-check the row.
//
// Group commit buys back the throughput that serializing costs: within one
// instance, the Updates waiting at the same moment run in one transaction,
// each in its own savepoint (a failing one rolls back alone), and share its
// commit and WAL flush. PostgreSQL's own commit_delay cannot help here,
// since the writer lock is held through the flush.
//
// Reads use the connection pool, see committed state and never wait for
// the writer. Wake-ups between instances travel by LISTEN/NOTIFY
// (WatchPermissions), and singleton jobs run under a session advisory lock
// (Lead); both use a dedicated connection each, so the database must be
// reached directly or through a pooler in session mode, not transaction mode.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	_ agentotp.Store            = (*Store)(nil)
	_ agentotp.AuditSnapshotter = (*Store)(nil)
	_ agentotp.ChangeFeed       = (*Store)(nil)
	_ agentotp.Leaser           = (*Store)(nil)
)

// Options tunes a Store. The zero value is the safe default.
type Options struct {
	// AuditKey keys the audit chain: every event appended gets a MAC and
	// the recorded head is signed (see AppendAudit). Without a key the
	// chain is hash-only, and appending to a chain that is already keyed
	// fails; with one, appending to a chain that has events but no MAC
	// fails unless it is adopted (AdoptUnkeyedChain).
	// Every instance sharing the database needs the same key.
	AuditKey *agentotp.AuditKey
	// AdoptUnkeyedChain lets a store with an AuditKey take on a chain that
	// has events but no MAC at all, marking from where it is keyed with an
	// audit_keyed event. Without it such a chain refuses writes: it is
	// either one written before the key existed, or a keyed one whose MACs
	// were removed, and only someone who has verified it can tell.
	AdoptUnkeyedChain bool
	// LockTimeout bounds how long a write waits for the writer lock (held by
	// another instance's transaction) before failing with
	// SERVICE_UNAVAILABLE. Default 10s.
	LockTimeout time.Duration
	// MaxConns caps the pool of connections for reads and writes. Default
	// pgx's: the larger of 4 and the number of CPUs. WatchPermissions and
	// Lead each hold one more connection of their own.
	MaxConns int
	// Logger receives what the store does on its own, such as reconnecting
	// its listener. Default: discard.
	Logger *slog.Logger
}

// Store is an agentotp.Store in a PostgreSQL database.
type Store struct {
	pool        *pgxpool.Pool
	connConfig  *pgx.ConnConfig // for the dedicated listener and lease connections
	auditKey    *agentotp.AuditKey
	adopting    bool // checkLink passes the unkeyed chain adoptChain is keying; writer only
	lockTimeout time.Duration
	log         *slog.Logger
	schema      string
	beginSQL    [3]string // BEGIN, the transaction's settings, the writer lock

	commits, updates atomic.Int64

	writes *agentotp.WriteQueue // this instance's writer: group commit
}

// Open connects to the database named by dsn (a postgres:// URL or a
// key=value string, as libpq takes them) and brings its schema up to date.
// Errors never repeat the DSN, which may hold a password.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx redacts passwords only on a best-effort basis: say nothing
		// of the string itself.
		return nil, errors.New("postgres: cannot parse the connection string (not shown: it may hold a password)")
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = int32(min(opts.MaxConns, 1<<20))
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "agentotp"
	}
	lockTimeout := opts.LockTimeout
	if lockTimeout <= 0 {
		lockTimeout = 10 * time.Second
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, storeErr("open connection pool", err)
	}
	s := &Store{pool: pool, connConfig: cfg.ConnConfig.Copy(), auditKey: opts.AuditKey, lockTimeout: lockTimeout, log: logger}
	if err := s.pool.QueryRow(ctx, "SELECT current_schema()").Scan(&s.schema); err != nil {
		pool.Close()
		return nil, storeErr("connect", err)
	}
	// The statements hold only numbers formatted here.
	s.beginSQL = [3]string{"BEGIN ISOLATION LEVEL READ COMMITTED",
		fmt.Sprintf("SELECT set_config('lock_timeout', '%d', true), set_config('idle_in_transaction_session_timeout', '%d', true)",
			lockTimeout.Milliseconds(), idleInTransaction.Milliseconds()),
		fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", s.lockKey("writer"))}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	s.writes = agentotp.NewWriteQueue(maxBatch, s.runBatch)
	if s.auditKey != nil && opts.AdoptUnkeyedChain {
		if err := s.adoptChain(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// idleInTransaction ends, on the server, a write transaction whose
// instance stopped talking mid-way (hung, or cut off by the network) so
// that its writer lock passes on.
const idleInTransaction = time.Minute

// lockKey names an advisory lock of this schema: agentotp deployments in
// two schemas of one database do not share writer locks or leases.
func (s *Store) lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("agentotp\x00" + s.schema + "\x00" + name))
	return int64(h.Sum64())
}

// Close stops the writer and closes the pool. Acknowledged writes are
// already durable; an Update still queued fails with SERVICE_UNAVAILABLE,
// and WatchPermissions and Lead return.
func (s *Store) Close() error {
	if s.writes != nil {
		s.writes.Close()
	}
	s.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	return storeErr("ping", s.pool.Ping(ctx))
}

// Stats is what the store's writer has done since Open.
type Stats struct {
	// Commits counts committed write transactions.
	Commits int64
	// Updates counts the Update calls those commits made durable (group
	// commit puts several in one).
	Updates int64
}

// Stats returns the writer's counters.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Updates: s.updates.Load()}
}

// Update runs fn in a write transaction and commits it; an error from fn,
// or a panic, rolls fn's changes back. fn must not call Update; it may call
// the Store's read methods, which see the last committed state only.
//
// Updates from concurrent callers of this Store are group-committed (see
// the package documentation). Update returns only after the commit, so an
// acknowledged change is durable as far as the server's
// synchronous_commit setting makes it.
func (s *Store) Update(ctx context.Context, fn func(agentotp.Tx) error) error {
	return s.writes.Update(ctx, fn)
}

// maxBatch bounds how many Updates share one transaction. Each runs in a
// savepoint, a subtransaction; past 64 of those PostgreSQL's snapshots
// slow down for every session.
const maxBatch = 32

// batchTimeout bounds a whole batch, so that a server that stops answering
// (without closing the connection) fails the callers instead of hanging
// them. A batch waits at most LockTimeout for the lock.
const batchTimeout = time.Minute

// runBatch runs the jobs in one transaction. The statements run without the
// callers' contexts: the transaction is shared, and pgx answers a cancelled
// statement by closing the connection, which would roll back everyone's
// work. A job whose caller left before it started is skipped instead.
func (s *Store) runBatch(b *agentotp.WriteBatch) []agentotp.WriteResult {
	// The whole batch is taken first: its statements travel together, and
	// a transaction is not held open (with the writer lock) while waiting.
	batch := b.All()
	results := make([]agentotp.WriteResult, len(batch))
	ctx, cancel := context.WithTimeout(context.Background(), s.lockTimeout+batchTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		err = storeErr("begin transaction", err)
		for i := range results {
			results[i].Err = err
		}
		return results
	}
	w := &wtx{s: s, conn: conn.Conn(), ctx: ctx, nested: len(batch) > 1, results: results,
		heads: make([]auditHead, len(batch))}
	defer func() {
		// A transaction left open by a failure ends here, so that the
		// connection goes back to the pool clean and the lock is freed.
		if conn.Conn().PgConn().TxStatus() != 'I' {
			rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _ = conn.Exec(rctx, "ROLLBACK")
			rcancel()
		}
		conn.Release()
	}()
	// BEGIN, the writer lock and the read of the chain's head travel with
	// the first statement.
	w.pending = append(w.pending, queued{sql: s.beginSQL[0], op: "begin transaction", job: -1},
		queued{sql: s.beginSQL[1], op: "begin transaction", job: -1},
		queued{sql: s.beginSQL[2], op: "take the writer lock", job: -1},
		queued{sql: lastAuditSQL, op: "read audit head", job: -1, read: w.readLink})
	for i, j := range batch {
		if err := j.Ctx.Err(); err != nil {
			results[i].Err = err
			continue
		}
		w.heads[i] = w.head
		t := &tx{w: w, s: s, i: i, start: len(w.pending)}
		w.cur = t
		if w.nested {
			// Sent with the job's first statement. Savepoints are never
			// released: each job's nests in the one before, and COMMIT
			// ends them all.
			w.pending = append(w.pending, queued{sql: "SAVEPOINT job", op: "savepoint", job: i, savepoint: true})
			t.spQueued = true
		}
		results[i] = j.Run(t)
		if results[i].OK() {
			if t.spQueued && len(w.pending) == t.start+1 {
				w.pending = w.pending[:t.start] // nothing was written: no savepoint needed
			}
			// A queued statement that may fail on its own must succeed
			// for the job to count.
			if t.mustFlush {
				if err := t.flush(); err != nil {
					results[i].Err = err
				}
			}
		}
		if results[i].OK() && t.failed != nil {
			// fn went on after a statement failed: the database refuses
			// everything after that until the savepoint is rolled back.
			results[i].Err = storeErr("update", t.failed)
		}
		w.cur = nil
		if w.broken != nil {
			s.abort(results, w.broken)
			return results
		}
		if results[i].OK() {
			continue
		}
		if !w.nested {
			return results // the deferred ROLLBACK ends what was sent
		}
		if t.lost {
			continue // an earlier job's failure rolled this one back too
		}
		w.head = w.heads[i] // the job's appends are rolled back with it
		w.pending = w.pending[:t.start]
		if !t.spQueued {
			w.rollbackJob()
			if w.broken != nil {
				s.abort(results, w.broken)
				return results
			}
		}
	}
	s.commit(w)
	return results
}

// commit sends the queued statements, the audit head and COMMIT in one
// round trip. If a job's queued statement fails there, that job and those
// after it are rolled back and the others commit.
func (s *Store) commit(w *wtx) {
	for {
		ok := 0
		for _, r := range w.results {
			if r.OK() {
				ok++
			}
		}
		if ok == 0 {
			return // nothing to commit; the deferred ROLLBACK ends what was sent
		}
		// Even Updates that wrote nothing take the writer lock and commit:
		// they are ordered after every write before them.
		if w.head.moved {
			var mac, keyID any
			if key := s.auditKey; key != nil {
				mac, keyID = key.HeadMAC(w.head.seq, w.head.hash), key.ID()
			}
			w.pending = append(w.pending, queued{sql: writeHeadSQL, args: []any{w.head.seq, w.head.hash, mac, keyID},
				op: "write audit head", job: -1})
		}
		w.pending = append(w.pending, queued{sql: "COMMIT", op: "commit", job: -1, read: func(br pgx.BatchResults) error {
			tag, err := br.Exec()
			if err == nil && tag.String() != "COMMIT" {
				err = errors.New("the transaction was rolled back")
			}
			return err
		}})
		br, err := w.send(nil)
		if err == nil {
			err = br.Close()
		}
		if w.broken != nil {
			s.abort(w.results, w.broken)
			return
		}
		if err == nil {
			s.commits.Add(1)
			s.updates.Add(int64(ok))
			return
		}
		// A job's queued statement failed: lose rolled it back with the
		// jobs after it; commit the others.
	}
}

// readLink reads lastAuditSQL's answer in a batch.
func (w *wtx) readLink(br pgx.BatchResults) error {
	l := &w.link
	err := br.QueryRow().Scan(&l.seq, &l.hash, &l.mac, &l.head.Seq, &l.head.Hash, &l.head.MAC, &l.head.KeyID)
	w.linkRead = err == nil
	return err
}

// abort fails every job that had not failed on its own: the transaction
// holding their changes is gone (runBatch rolls it back).
func (s *Store) abort(results []agentotp.WriteResult, err error) {
	for i := range results {
		if results[i].OK() {
			results[i].Err = err
		}
	}
}

// snapshot runs fn in a read-only REPEATABLE READ transaction, so that
// several queries (a count and a page) see the same committed state.
func (s *Store) snapshot(ctx context.Context, fn func(q querier) error) error {
	rtx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer func() { _ = rtx.Rollback(context.WithoutCancel(ctx)) }()
	return fn(rtx)
}
