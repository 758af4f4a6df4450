package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

const auditColumns = `seq, id, time, type, actor_type, actor_id, agent_id, permission_id, request_id,
	details_json, prev_hash, hash`

const selectAudit = `SELECT ` + auditColumns + ` FROM audit_events`

const lastAuditSQL = `SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`

const insertAuditSQL = `INSERT INTO audit_events (` + auditColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// Audit listing bounds.
const (
	DefaultAuditLimit = 50
	MaxAuditLimit     = 1000
)

// AppendAudit links e to the newest event and stores it. It runs under the
// transaction's write lock, so sequence numbers have no gaps or forks even
// with several processes appending.
func (t *tx) AppendAudit(ctx context.Context, e *agentotp.AuditEvent) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	if !representable(e.Time) {
		return agentotp.ValidationError("time", "must be between the years 1678 and 2262")
	}
	h := t.head
	if !h.known {
		err := t.stmt(ctx, t.s.lastAudit).QueryRowContext(ctx).Scan(&h.seq, &h.hash)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			h.seq, h.hash = 0, agentotp.GenesisHash
		case err != nil:
			return storeErr("read audit head", err)
		}
		h.known = true
	}
	lastSeq, lastHash := h.seq, h.hash
	var err error
	if e.ID == "" {
		e.ID = agentotp.NewEventID()
	}
	e.Seq, e.PrevHash = lastSeq+1, lastHash
	if err := e.SealDetails(); err != nil {
		return agentotp.ValidationError("details", "cannot be encoded")
	}
	if e.Hash, err = e.ComputeHash(lastHash); err != nil {
		return fmt.Errorf("hash audit event: %w", err)
	}
	_, err = t.stmt(ctx, t.s.insertAudit).ExecContext(ctx, e.Seq, string(e.ID), nanos(e.Time), string(e.Type),
		e.ActorType, e.ActorID, string(e.AgentID), string(e.PermissionID), e.RequestID,
		string(e.DetailsJSON), e.PrevHash, e.Hash)
	if err != nil {
		return storeErr("append audit event", err, failure{conflict: "audit event id already used"})
	}
	h.seq, h.hash, h.moved = e.Seq, e.Hash, true
	return nil
}

const writeHeadSQL = `INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)
	ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash`

// AuditHead returns the newest link as recorded by the last commit.
func (s *Store) AuditHead(ctx context.Context) (int64, string, error) {
	var (
		seq  int64
		hash string
	)
	err := s.reader.QueryRowContext(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, agentotp.GenesisHash, nil
	}
	return seq, hash, storeErr("read audit head", err)
}

func scanAudit(sc scanner) (*agentotp.AuditEvent, error) {
	var (
		e  agentotp.AuditEvent
		at sql.NullInt64
	)
	if err := sc.Scan(&e.Seq, &e.ID, &at, &e.Type, &e.ActorType, &e.ActorID, &e.AgentID, &e.PermissionID,
		&e.RequestID, &e.DetailsJSON, &e.PrevHash, &e.Hash); err != nil {
		return nil, err
	}
	e.Time = fromNanos(at)
	// A row whose details no longer decode still reaches the caller, so
	// that verification reports it instead of the scan failing.
	_ = json.Unmarshal(e.DetailsJSON, &e.Details)
	return &e, nil
}

// AuditEvents lists events matching f, newest first unless f.Ascending.
func (s *Store) AuditEvents(ctx context.Context, f agentotp.AuditFilter) ([]*agentotp.AuditEvent, error) {
	var (
		where []string
		args  []any
	)
	add := func(cond string, v any) { where, args = append(where, cond), append(args, v) }
	if f.AgentID != "" {
		add("agent_id = ?", string(f.AgentID))
	}
	if f.PermissionID != "" {
		add("permission_id = ?", string(f.PermissionID))
	}
	if f.Type != "" {
		add("type = ?", string(f.Type))
	}
	if !f.Start.IsZero() {
		add("time >= ?", f.Start.UnixNano())
	}
	if !f.End.IsZero() {
		add("time <= ?", f.End.UnixNano())
	}
	if f.AfterSeq > 0 {
		add("seq > ?", f.AfterSeq)
	}
	if f.BeforeSeq > 0 {
		add("seq < ?", f.BeforeSeq)
	}
	q := selectAudit
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Ascending {
		q += " ORDER BY seq"
	} else {
		q += " ORDER BY seq DESC"
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultAuditLimit
	}
	limit = min(limit, MaxAuditLimit)
	rows, err := s.reader.QueryContext(ctx, q+" LIMIT ?", append(args, limit)...)
	if err != nil {
		return nil, storeErr("list audit events", err)
	}
	out, err := collect(rows, scanAudit)
	return out, storeErr("list audit events", err)
}

// ScanAudit streams every event in ascending sequence order, one row at a
// time, from one consistent snapshot. fn's error stops the scan and is
// returned as is.
func (s *Store) ScanAudit(ctx context.Context, fn func(*agentotp.AuditEvent) error) error {
	rows, err := s.reader.QueryContext(ctx, selectAudit+" ORDER BY seq")
	if err != nil {
		return storeErr("scan audit", err)
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			return storeErr("scan audit", err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return storeErr("scan audit", rows.Err())
}

// AuditStats counts events at or after since by type.
func (s *Store) AuditStats(ctx context.Context, since time.Time) (agentotp.AuditStats, error) {
	st := agentotp.AuditStats{Since: since, ByType: map[agentotp.EventType]int64{}}
	q, args := "SELECT type, count(*) FROM audit_events", []any{}
	if !since.IsZero() {
		q, args = q+" WHERE time >= ?", append(args, since.UnixNano())
	}
	rows, err := s.reader.QueryContext(ctx, q+" GROUP BY type", args...)
	if err != nil {
		return st, storeErr("audit stats", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			t agentotp.EventType
			n int64
		)
		if err := rows.Scan(&t, &n); err != nil {
			return st, storeErr("audit stats", err)
		}
		st.ByType[t] = n
		st.Total += n
	}
	return st, storeErr("audit stats", rows.Err())
}
