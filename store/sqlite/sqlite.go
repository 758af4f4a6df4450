// Package sqlite is the embedded agentotp.Store, on modernc.org/sqlite (pure
// Go, no cgo).
//
// One file holds everything. Writes go through a single connection that
// starts every transaction with BEGIN IMMEDIATE, so two writers — in this
// process or another one sharing the file — queue on SQLite's lock instead
// of failing with SQLITE_BUSY on a read-to-write upgrade. Reads use a
// separate pool and, in WAL mode, never wait for the writer.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/agentotp/agentotp"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

var _ agentotp.Store = (*Store)(nil)

// Options tunes a Store. The zero value is the safe default.
type Options struct {
	// Synchronous is "FULL" (default: a commit is on disk before Update
	// returns, surviving power loss) or "NORMAL" (WAL commits may be lost on
	// power loss, never corrupted; several times faster).
	Synchronous string
	// BusyTimeout bounds how long a statement waits for another process's
	// lock before failing with SERVICE_UNAVAILABLE. Default 10s.
	BusyTimeout time.Duration
	// AuditKey keys the audit chain: every event appended gets a MAC and
	// the recorded head is signed (see AppendAudit). Without a key the
	// chain is hash-only, and appending to a chain that is already keyed
	// fails; with one, appending to a chain that has events but no MAC
	// fails unless it is adopted (AdoptUnkeyedChain).
	AuditKey *agentotp.AuditKey
	// AdoptUnkeyedChain lets a store with an AuditKey take on a chain that
	// has events but no MAC at all, marking from where it is keyed with an
	// audit_keyed event. Without it such a chain refuses writes: it is
	// either one written before the key existed, or a keyed one whose MACs
	// were removed, and only someone who has verified it can tell (the
	// database itself cannot: anything in it, its schema version included,
	// a writer without the key can set).
	AdoptUnkeyedChain bool
}

// Store is an agentotp.Store in one SQLite file.
type Store struct {
	path        string
	busyTimeout time.Duration
	auditKey    *agentotp.AuditKey
	writerDB    *sql.DB       // one connection: writer, held for the store's life
	writer      *sql.Conn     // runs every write transaction (BEGIN IMMEDIATE)
	writerSem   chan struct{} // held by a batch, Ping and Vacuum: one at a time on writer
	reader      *sql.DB       // pool, query_only

	// Writer statements, prepared on the writer connection. Transactions
	// are BEGIN and COMMIT statements on it rather than sql.Tx: database/sql
	// starts a goroutine for every query in a Tx (to watch the Tx's
	// context), and on a two-core VM each start can wake a sleeping core.
	begin            *sql.Stmt
	commit           *sql.Stmt
	rollback         *sql.Stmt
	insertPermission *sql.Stmt
	spendToken       *sql.Stmt
	lastAudit        *sql.Stmt
	insertAudit      *sql.Stmt
	insertAudit2     *sql.Stmt // two rows (AppendAudits)
	insertAudit3     *sql.Stmt // three rows
	txPermission     *sql.Stmt
	txIdempotency    *sql.Stmt
	storageUsage     *sql.Stmt
	trail            *sql.Stmt
	writeHeadStmt    *sql.Stmt
	savepoint        *sql.Stmt
	release          *sql.Stmt
	rollbackTo       *sql.Stmt
	dataVersion      *sql.Stmt

	readPermission *sql.Stmt
	agentByKeyHash *sql.Stmt
	userByKeyHash  *sql.Stmt
	prepared       []*sql.Stmt // every statement above, for Close

	// adopting lets checkLink pass the unkeyed chain that adoptChain is
	// keying; only the writer touches it.
	adopting bool

	// lastHead is the chain's newest link as the last batch left it, and
	// lastVersion the data_version SQLite reported to the writer in that
	// batch (see startHead); only the writer (holding writerSem) touches
	// them.
	lastHead    auditHead
	lastVersion int64

	stats storeStats

	writes *agentotp.WriteQueue // the single writer: group commit
}

// Open opens (creating if needed) the database at path and brings its schema
// up to date.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	sync := strings.ToUpper(opts.Synchronous)
	switch sync {
	case "":
		sync = "FULL"
	case "FULL", "NORMAL":
	default:
		// The value reaches a PRAGMA verbatim: only known words pass.
		return nil, fmt.Errorf("sqlite: synchronous must be FULL or NORMAL, not %q", opts.Synchronous)
	}
	busy := opts.BusyTimeout
	if busy <= 0 {
		busy = 10 * time.Second
	}
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: create data directory: %w", err)
	}
	// SQLite would create the file 0644; it holds key and token hashes, so
	// create it 0600 first (the -wal and -shm files inherit its mode).
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: create database file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("sqlite: create database file: %w", err)
	}

	busyMS := strconv.FormatInt(busy.Milliseconds(), 10)
	base := "file:" + escapeURIPath(path) + "?_pragma=busy_timeout(" + busyMS + ")&_pragma=foreign_keys(1)"
	// journal_size_limit trims the WAL file after a checkpoint (64 MiB) so
	// that one burst does not keep a large file around.
	writer, err := sql.Open("sqlite", base+"&_pragma=journal_mode(WAL)&_pragma=synchronous("+sync+")"+
		"&_pragma=journal_size_limit(67108864)&_pragma=temp_store(2)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sqlite: open writer: %w", err)
	}
	// One writer connection: SQLite allows one writer anyway, and queueing
	// in database/sql is cheaper than spinning on the file lock.
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxLifetime(0)
	writer.SetConnMaxIdleTime(0)

	s := &Store{path: path, busyTimeout: busy, writerDB: writer, writerSem: make(chan struct{}, 1), auditKey: opts.AuditKey}
	if err := s.migrate(ctx); err != nil {
		writer.Close()
		return nil, err
	}
	if s.writer, err = writer.Conn(ctx); err != nil {
		writer.Close()
		return nil, storeErr("open writer connection", err)
	}

	// Readers open after the writer has switched the file to WAL.
	reader, err := sql.Open("sqlite", base+"&_pragma=query_only(1)")
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("sqlite: open reader: %w", err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	reader.SetMaxOpenConns(n)
	reader.SetMaxIdleConns(n)
	s.reader = reader
	s.writes = agentotp.NewWriteQueue(maxBatch, s.runBatch)
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if s.auditKey != nil && opts.AdoptUnkeyedChain {
		if err := s.adoptChain(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// escapeURIPath makes path safe inside a "file:" URI, where '?' starts the
// query and '#' a fragment.
func escapeURIPath(path string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
}

func (s *Store) prepare(ctx context.Context) error {
	stmts := []struct {
		db interface {
			PrepareContext(context.Context, string) (*sql.Stmt, error)
		}
		dst   **sql.Stmt
		query string
	}{
		{s.writer, &s.begin, "BEGIN IMMEDIATE"},
		{s.writer, &s.commit, "COMMIT"},
		{s.writer, &s.rollback, "ROLLBACK"},
		{s.writer, &s.insertPermission, insertPermissionSQL},
		{s.writer, &s.spendToken, spendTokenSQL},
		{s.writer, &s.lastAudit, lastAuditSQL},
		{s.writer, &s.insertAudit, insertAuditSQL},
		{s.writer, &s.insertAudit2, insertAuditSQL + ", " + auditRow},
		{s.writer, &s.insertAudit3, insertAuditSQL + ", " + auditRow + ", " + auditRow},
		{s.writer, &s.txPermission, selectPermission + " WHERE id = ?"},
		{s.writer, &s.txIdempotency, selectIdempotency},
		{s.writer, &s.storageUsage, storageUsageSQL},
		{s.writer, &s.trail, trailSQL},
		{s.writer, &s.writeHeadStmt, writeHeadSQL},
		{s.writer, &s.savepoint, "SAVEPOINT job"},
		{s.writer, &s.release, "RELEASE job"},
		{s.writer, &s.rollbackTo, "ROLLBACK TO job"},
		{s.writer, &s.dataVersion, "PRAGMA data_version"},
		{s.reader, &s.readPermission, selectPermission + " WHERE id = ?"},
		{s.reader, &s.agentByKeyHash, selectAgent + " WHERE key_hash = ? AND key_hash <> ''"},
		{s.reader, &s.userByKeyHash, selectUser + " WHERE key_hash = ? AND key_hash <> ''"},
	}
	for _, st := range stmts {
		err := s.retryBusy(ctx, func() error {
			p, err := st.db.PrepareContext(ctx, st.query)
			*st.dst = p
			return storeErr("prepare statement", err)
		})
		if err != nil {
			return err
		}
		s.prepared = append(s.prepared, *st.dst)
	}
	return nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Close stops the writer and closes both pools. Acknowledged writes are
// already durable; an Update still queued fails with SERVICE_UNAVAILABLE.
func (s *Store) Close() error {
	if s.writes != nil {
		s.writes.Close()
	}
	for _, st := range s.prepared {
		st.Close()
	}
	var errs []error
	if s.reader != nil {
		errs = append(errs, s.reader.Close())
	}
	if s.writer != nil {
		if err := s.writer.Close(); !errors.Is(err, sql.ErrConnDone) { // closed before
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.writerDB.Close())
	return errors.Join(errs...)
}

// Ping checks that both pools can reach the database.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.reader.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return storeErr("ping reader", err)
	}
	if err := s.lockWriter(ctx); err != nil {
		return storeErr("ping writer", err)
	}
	defer func() { <-s.writerSem }()
	if err := s.writer.PingContext(ctx); err != nil {
		return storeErr("ping writer", err)
	}
	return nil
}

// Update runs fn in one BEGIN IMMEDIATE transaction and commits it; any
// error from fn, or a panic, rolls fn's changes back. fn must not call
// Update (the single writer is busy with fn's transaction); it may call the
// Store's read methods, which see the last committed state only.
//
// Updates from concurrent callers are group-committed: the writer runs the
// calls waiting at the same moment in one transaction, each inside its own
// savepoint (unless it runs alone), so a failing call rolls back alone and
// one commit (one fsync at synchronous=FULL) makes the whole batch durable.
// Update returns only after that commit, so an acknowledged change is on
// disk. A background update (agentotp.WithCommitDelay) runs at once and
// keeps its transaction, and so the file's write lock, open for up to its
// delay, waiting for company; another process writing the same file waits
// that much longer.
func (s *Store) Update(ctx context.Context, fn func(agentotp.Tx) error) error {
	return s.writes.Update(ctx, fn)
}

// maxBatch bounds how many Updates share one transaction.
const maxBatch = 128

// runBatch runs the batch in one transaction, each job as soon as it is
// taken (so a batch held open for company does its work while it waits),
// and commits the jobs that succeeded. Each job runs in a savepoint of its
// own, so that it can fail alone, unless the batch is known to hold only
// it.
func (s *Store) runBatch(b *agentotp.WriteBatch) []agentotp.WriteResult {
	first := b.Next()
	alone := b.Alone()
	s.writerSem <- struct{}{}
	defer func() { <-s.writerSem }()
	if err := s.beginTx(); err != nil {
		return []agentotp.WriteResult{{Err: err}}
	}
	head, version, err := s.startHead()
	if err != nil {
		s.rollbackTx()
		return []agentotp.WriteResult{{Err: err}}
	}
	start := *head
	var results []agentotp.WriteResult
	ok := 0
	for j := first; j != nil; j = b.Next() {
		i := len(results)
		results = append(results, agentotp.WriteResult{})
		if err := j.Ctx.Err(); err != nil {
			results[i].Err = err
			continue
		}
		if !alone {
			s.stats.statements.Add(1)
			if _, err := s.savepoint.Exec(); err != nil {
				s.abort(results, storeErr("savepoint", err))
				return results
			}
		}
		before := *head
		results[i] = j.Run(&tx{s: s, tx: countedConn{Conn: s.writer, n: &s.stats.statements}, head: head})
		if results[i].OK() {
			ok++
			if !alone {
				// Fails if SQLite rolled the transaction back on its own
				// (an I/O error the job did not pass on): then nothing
				// of the batch may commit.
				s.stats.statements.Add(1)
				if _, err := s.release.Exec(); err != nil {
					s.abort(results, storeErr("release savepoint", err))
					return results
				}
			}
			continue
		}
		if alone {
			s.rollbackTx()
			s.keepHead(start, version)
			return results
		}
		*head = before // the job's appends are rolled back with it
		s.stats.statements.Add(1)
		if _, err := s.rollbackTo.Exec(); err != nil {
			s.abort(results, storeErr("roll back savepoint", err))
			return results
		}
		s.stats.statements.Add(1)
		if _, err := s.release.Exec(); err != nil {
			s.abort(results, storeErr("release savepoint", err))
			return results
		}
	}
	if ok == 0 {
		s.rollbackTx()
		s.keepHead(start, version)
		return results
	}
	if head.moved {
		if err := s.writeHead(head); err != nil {
			s.abort(results, err)
			return results
		}
	}
	s.stats.statements.Add(1)
	if _, err := s.commit.Exec(); err != nil {
		s.abort(results, storeErr("commit", err))
		return results
	}
	s.keepHead(*head, version)
	s.stats.commits.Add(1)
	s.stats.jobs.Add(int64(ok))
	return results
}

// storeStats counts the writer's work, for Stats.
type storeStats struct {
	commits, jobs, statements atomic.Int64
}

// Stats is what the store's writer has done since Open.
type Stats struct {
	// Commits counts committed transactions: at synchronous=FULL in WAL
	// mode, one fsync of the WAL each.
	Commits int64
	// Updates counts the Update calls those commits made durable (group
	// commit puts several in one).
	Updates int64
	// Statements counts the SQL statements run by the writer, BEGIN,
	// savepoints and COMMIT included.
	Statements int64
}

// Stats returns the writer's counters.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.stats.commits.Load(), Updates: s.stats.jobs.Load(), Statements: s.stats.statements.Load()}
}

// lockWriter waits for the writer connection between batches, or for ctx.
func (s *Store) lockWriter(ctx context.Context) error {
	select {
	case s.writerSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// beginTx starts a write transaction on the writer connection. A
// transaction left open by a failed ROLLBACK is ended first, so that one
// failure does not fail every batch after it.
func (s *Store) beginTx() error {
	s.stats.statements.Add(1)
	_, err := s.begin.Exec()
	if err != nil && strings.Contains(err.Error(), "within a transaction") {
		s.rollbackTx()
		_, err = s.begin.Exec()
	}
	return storeErr("begin transaction", err)
}

// startHead returns the audit head a batch starts from, and the writer's
// data_version. When no other connection has committed since the last
// batch that ended here (data_version unchanged), the head is the one that
// batch left: reading the newest event and the recorded head again, and
// checking their link, would only read back what this connection wrote
// (SQLite keeps its page cache for the same reason). Otherwise the first
// append of the batch reads and checks them. Until this batch ends in a
// commit or a clean rollback (keepHead), no head is remembered: one that
// fails on the way leaves the next batch to read.
func (s *Store) startHead() (*auditHead, int64, error) {
	var version int64
	s.stats.statements.Add(1)
	if err := s.dataVersion.QueryRow().Scan(&version); err != nil {
		return nil, 0, storeErr("read data version", err)
	}
	head := &auditHead{}
	if s.lastHead.known && s.lastVersion == version {
		*head = s.lastHead
	}
	s.lastHead = auditHead{}
	return head, version, nil
}

// keepHead remembers h, if known, as the head the next batch starts from:
// the head a batch committed, or the one it started from when it rolled
// back all it did.
func (s *Store) keepHead(h auditHead, version int64) {
	if h.known {
		s.lastHead, s.lastVersion = auditHead{known: true, seq: h.seq, hash: h.hash}, version
	}
}

// rollbackTx ends the write transaction, undoing it. It fails only when
// none is open (SQLite may already have rolled back after an I/O error).
func (s *Store) rollbackTx() {
	_, _ = s.rollback.Exec()
}

// abort rolls the transaction back and fails every job that had not failed
// on its own: the transaction holding their changes is gone.
func (s *Store) abort(results []agentotp.WriteResult, err error) {
	s.rollbackTx()
	for i := range results {
		if results[i].OK() {
			results[i].Err = err
		}
	}
}

// snapshot runs fn in a read transaction, so that several queries (a count
// and a page) see the same committed state.
func (s *Store) snapshot(ctx context.Context, fn func(q querier) error) error {
	rtx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer func() { _ = rtx.Rollback() }()
	return fn(rtx)
}
