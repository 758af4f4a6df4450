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
	details_json, prev_hash, hash, mac, token_ref`

const selectAudit = `SELECT ` + auditColumns + ` FROM audit_events`

// lastAuditSQL reads the newest event's link and the recorded head in one
// statement: a batch checks one against the other before it appends
// (unless it starts from its predecessor's head, see startHead).
const lastAuditSQL = `SELECT coalesce(e.seq, 0), coalesce(e.hash, ''), coalesce(e.mac, ''),
	coalesce(h.seq, 0), coalesce(h.hash, ''), coalesce(h.mac, ''), coalesce(h.key_id, '')
	FROM (SELECT 1) AS one
	LEFT JOIN (SELECT seq, hash, mac FROM audit_events ORDER BY seq DESC LIMIT 1) AS e ON 1
	LEFT JOIN audit_head AS h ON h.id = 1`

const insertAuditSQL = `INSERT INTO audit_events (` + auditColumns + `) VALUES ` + auditRow

// auditRow is one row's placeholders in insertAuditSQL; AppendAudits
// inserts two or three rows in one statement.
const auditRow = `(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// trailSQL reads, for the trail check at token issue and use, a
// permission's stored state, its latest state-moving event and the latest
// event that issued it a token (a token_issue, or a policy's approval
// carrying its token), in one statement. Each subquery walks the permission's own
// events backwards by index (without INDEXED BY the planner may pick the
// type index and scan every event of those types); the numbers the trail
// needs are read from the details in SQL, so no details are decoded here.
var trailSQL = `SELECT p.status, p.uses_remaining, coalesce(p.token_hash, ''),
	coalesce(s.type, ''), s.uses, s.remaining, coalesce(s.token_ref, ''),
	coalesce(i.seq, 0), i.uses, coalesce(i.token_ref, '')
	FROM permissions AS p
	LEFT JOIN (SELECT type, token_ref, ` + detailIntSQL("uses") + ` AS uses, ` + detailIntSQL("usesRemaining") + ` AS remaining
		FROM audit_events INDEXED BY audit_events_permission
		WHERE permission_id = ?1 AND type IN ('` + strings.Join(eventTypeNames(agentotp.TrailEventTypes), "', '") + `')
		ORDER BY seq DESC LIMIT 1) AS s ON 1
	LEFT JOIN (SELECT seq, token_ref, coalesce(` + detailIntSQL("uses") + `, ` + detailIntSQL("token.uses") + `) AS uses
		FROM audit_events INDEXED BY audit_events_permission
		WHERE permission_id = ?1 AND (type = '` + string(agentotp.EventTokenIssue) + `'
			OR type = '` + string(agentotp.EventApprove) + `' AND json_type(details_json, '$.token') = 'object')
		ORDER BY seq DESC LIMIT 1) AS i ON 1
	WHERE p.id = ?1`

// detailIntSQL reads a whole number from an event's details, NULL when the
// key is missing or holds anything else.
func detailIntSQL(key string) string {
	return `iif(json_type(details_json, '$.` + key + `') = 'integer', json_extract(details_json, '$.` + key + `'), NULL)`
}

func eventTypeNames(ts []agentotp.EventType) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = string(t)
	}
	return out
}

// Audit listing bounds.
const (
	DefaultAuditLimit = 50
	MaxAuditLimit     = 1000
)

// AppendAudit links e to the newest event and stores it. It runs under the
// transaction's write lock, so sequence numbers have no gaps or forks even
// with several processes appending.
//
// With an audit key it also sets e.MAC (and e.TokenRef on token_issue),
// and it refuses to append, failing the whole change, when
//
//   - the recorded head does not verify with the key, or disagrees with
//     the newest event (events deleted, the head moved, a wrong key), or the
//     chain is keyed and the store was opened without a key. This is
//     checked by a batch's first append, unless no other connection has
//     committed since this writer's last batch (see startHead);
//   - e issues a token for, or records a use of, a permission whose stored
//     row disagrees with the latest events recorded for it: a use of a
//     permission whose events say it is used up, revoked or expired, a use
//     count or token that is not the one the events issued, a token for a
//     permission whose events do not say approved.
func (t *tx) AppendAudit(ctx context.Context, e *agentotp.AuditEvent) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	return t.appendAudit(ctx, t.s.insertAudit, e)
}

var _ agentotp.AuditAppender = (*tx)(nil)

// AppendAudits appends events as AppendAudit would one after the other, in
// one statement when it can (agentotp.AuditAppender): two or three events
// none of which has its permission's stored trail read. A trail read must
// see the events before it stored, so such a run is appended one by one.
func (t *tx) AppendAudits(ctx context.Context, events []*agentotp.AuditEvent) error {
	ctx = context.WithoutCancel(ctx) // see tx: a caller leaving must not abort the batch
	var st *sql.Stmt
	switch len(events) {
	case 2:
		st = t.s.insertAudit2
	case 3:
		st = t.s.insertAudit3
	}
	for _, e := range events {
		if t.readsTrail(e) {
			st = nil
		}
	}
	if st == nil {
		for _, e := range events {
			if err := t.appendAudit(ctx, t.s.insertAudit, e); err != nil {
				return err
			}
		}
		return nil
	}
	return t.appendAudit(ctx, st, events...)
}

// readsTrail reports whether appending e reads its permission's trail (see
// AppendAudit): a token issue or a use, of a permission this job did not
// create.
func (t *tx) readsTrail(e *agentotp.AuditEvent) bool {
	if e.PermissionID == "" || !(e.Type == agentotp.EventUse || e.IssuesToken()) {
		return false
	}
	_, fresh := t.fresh[e.PermissionID]
	return !fresh
}

// appendAudit links events to the chain in order and stores them with st,
// an insert of exactly that many rows. On an error nothing is stored and
// the batch's head is as it was.
func (t *tx) appendAudit(ctx context.Context, st *sql.Stmt, events ...*agentotp.AuditEvent) error {
	for _, e := range events {
		if !representable(e.Time) {
			return agentotp.ValidationError("time", "must be between the years 1678 and 2262")
		}
	}
	h := t.head
	if !h.known {
		var l auditLink
		err := t.stmt(t.s.lastAudit).QueryRowContext(ctx).Scan(&l.seq, &l.hash, &l.mac,
			&l.head.Seq, &l.head.Hash, &l.head.MAC, &l.head.KeyID)
		if err != nil {
			return storeErr("read audit head", err)
		}
		if err := t.s.checkLink(l); err != nil {
			return err
		}
		h.seq, h.hash = l.seq, l.hash
		if l.seq == 0 {
			h.hash = agentotp.GenesisHash
		}
		h.known = true
	}
	lastSeq, lastHash := h.seq, h.hash
	args := make([]any, 0, 14*len(events))
	for _, e := range events {
		if err := t.link(ctx, e, lastSeq, lastHash); err != nil {
			return err
		}
		lastSeq, lastHash = e.Seq, e.Hash
		args = append(args, e.Seq, string(e.ID), nanos(e.Time), string(e.Type),
			e.ActorType, e.ActorID, string(e.AgentID), string(e.PermissionID), e.RequestID,
			string(e.DetailsJSON), e.PrevHash, e.Hash, nullString(e.MAC), nullString(e.TokenRef))
	}
	if _, err := t.stmt(st).ExecContext(ctx, args...); err != nil {
		return storeErr("append audit event", err, failure{conflict: "audit event id already used"})
	}
	h.seq, h.hash, h.moved = lastSeq, lastHash, true
	return nil
}

// link makes e the event after (prevSeq, prevHash): its sequence number,
// hashes and MAC, after the trail check of a token issue or use.
func (t *tx) link(ctx context.Context, e *agentotp.AuditEvent, prevSeq int64, prevHash string) error {
	if e.ID == "" {
		e.ID = agentotp.NewEventID()
	}
	e.Seq, e.PrevHash, e.TokenRef, e.MAC = prevSeq+1, prevHash, "", ""
	if err := e.SealDetails(); err != nil {
		return agentotp.ValidationError("details", "cannot be encoded")
	}
	if t.readsTrail(e) {
		if err := t.checkTrail(ctx, e); err != nil {
			return err
		}
	} else if key := t.s.auditKey; key != nil && e.IssuesToken() {
		// A permission created by this job, under the write lock: its
		// trail is what this job wrote. Record the token all the same.
		if tokenHash := t.fresh[e.PermissionID]; tokenHash != "" {
			e.TokenRef = key.TokenRef(tokenHash)
		}
	}
	var err error
	if e.Hash, err = e.ComputeHash(prevHash); err != nil {
		return fmt.Errorf("hash audit event: %w", err)
	}
	if key := t.s.auditKey; key != nil {
		e.MAC = key.EventMAC(e)
	}
	return nil
}

// auditLink is the newest event's link and the recorded head.
type auditLink struct {
	seq       int64
	hash, mac string
	head      agentotp.AuditHeadRecord
}

// errAudit refuses a write because the audit trail does not verify.
func errAudit(format string, args ...any) error {
	return agentotp.Errorf(agentotp.CodeInternal, "audit trail check failed, writes are refused: "+format+"; run agentotp audit verify", args...)
}

// adoptChain keys a chain written without a key: when it has events and
// none carries a MAC, it appends an audit_keyed event, the first with one.
func (s *Store) adoptChain(ctx context.Context) error {
	return s.Update(ctx, func(atx agentotp.Tx) error {
		t := atx.(*tx)
		var l auditLink
		err := t.stmt(s.lastAudit).QueryRowContext(ctx).Scan(&l.seq, &l.hash, &l.mac, &l.head.Seq, &l.head.Hash, &l.head.MAC, &l.head.KeyID)
		if err != nil {
			return storeErr("read audit head", err)
		}
		if l.seq == 0 || l.mac != "" || l.head.MAC != "" {
			return nil // empty, or keyed already
		}
		s.adopting = true
		defer func() { s.adopting = false }()
		return t.AppendAudit(ctx, agentotp.NewAuditKeyedEvent(s.auditKey, time.Now(), l.seq))
	})
}

// checkLink checks the newest event against the recorded head before a
// batch appends to the chain.
func (s *Store) checkLink(l auditLink) error {
	key := s.auditKey
	keyed := l.mac != "" || l.head.MAC != ""
	switch {
	case key == nil && keyed:
		return errAudit("the audit chain is keyed but this store was opened without the audit key")
	case key == nil:
		return nil // an unkeyed chain, appended to as before
	case l.head.KeyID != "" && l.head.KeyID != key.ID():
		return agentotp.Errorf(agentotp.CodeInternal, "wrong audit key: the audit chain was written with key %s, this key is %s", l.head.KeyID, key.ID())
	case !keyed && (l.seq == 0 || s.adopting):
		return nil // empty, or being adopted (adoptChain): keyed from the next event
	case !keyed:
		return errAudit("the chain has events (newest seq %d) but no MAC at all although this store has an audit key: "+
			"it was written before the key existed, or its MACs were removed; check it, then adopt it: agentotp audit adopt (or the store option AdoptUnkeyedChain)", l.seq)
	case l.head.MAC == "":
		return errAudit("the recorded head carries no MAC although the newest event (seq %d) has one", l.seq)
	case !key.VerifyHead(l.head.Seq, l.head.Hash, l.head.MAC):
		return errAudit("the recorded head (seq %d) does not verify with the audit key", l.head.Seq)
	case l.head.Seq != l.seq || l.head.Hash != l.hash:
		return errAudit("the recorded head is seq %d but the newest event is seq %d", l.head.Seq, l.seq)
	case l.mac == "":
		return errAudit("the newest event (seq %d) carries no MAC although the head is keyed", l.seq)
	}
	return nil
}

// writeHead records the batch's newest link, with its MAC and key id when
// the store has a key.
func (s *Store) writeHead(h *auditHead) error {
	var mac, keyID any
	if key := s.auditKey; key != nil {
		mac, keyID = key.HeadMAC(h.seq, h.hash), key.ID()
	}
	s.stats.statements.Add(1)
	_, err := s.writeHeadStmt.Exec(h.seq, h.hash, mac, keyID)
	return storeErr("write audit head", err)
}

// checkTrail holds a token issue or use about to be recorded by e to the
// latest events already recorded for its permission (see AppendAudit), and
// sets e.TokenRef on a keyed token issue. It is one indexed read; the
// events it reads are taken as stored (checking their hashes and MACs, and
// the whole history, is verification's job).
func (t *tx) checkTrail(ctx context.Context, e *agentotp.AuditEvent) error {
	var (
		status                     agentotp.Status
		remaining                  int
		tokenHash                  string
		lastType                   agentotp.EventType
		lastUses, lastLeft, issUse sql.NullInt64
		lastRef, issRef            string
		issSeq                     int64
	)
	err := t.stmt(t.s.trail).QueryRowContext(ctx, string(e.PermissionID)).Scan(&status, &remaining, &tokenHash,
		&lastType, &lastUses, &lastLeft, &lastRef, &issSeq, &issUse, &issRef)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // no row to hold to the trail
	}
	if err != nil {
		return storeErr("read permission trail", err)
	}
	var trail agentotp.PermissionTrail
	if issSeq > 0 && lastType != agentotp.EventTokenIssue {
		trail.Apply(trailEvent(agentotp.EventTokenIssue, issRef, issUse, sql.NullInt64{}))
	}
	if lastType != "" {
		trail.Apply(trailEvent(lastType, lastRef, lastUses, lastLeft))
	}
	key := t.s.auditKey
	var why string
	switch e.Type {
	case agentotp.EventTokenIssue, agentotp.EventApprove: // an approve here issues its token
		if e.Type == agentotp.EventApprove {
			why = trail.RefuseGrant()
		} else {
			why = trail.RefuseIssue()
		}
		if why == "" && key != nil && tokenHash != "" {
			e.TokenRef = key.TokenRef(tokenHash)
		}
	case agentotp.EventUse:
		why = trail.RefuseUse(remaining, tokenHash, key)
	}
	if why != "" {
		return agentotp.Errorf(agentotp.CodeConflict, "permission %s refused: its stored state disagrees with its audit trail (%s)", e.PermissionID, why)
	}
	return nil
}

// trailEvent rebuilds the part of an event that PermissionTrail reads.
func trailEvent(typ agentotp.EventType, tokenRef string, uses, left sql.NullInt64) *agentotp.AuditEvent {
	d := map[string]any{}
	if uses.Valid {
		d["uses"] = int(uses.Int64)
	}
	if left.Valid {
		d["usesRemaining"] = int(left.Int64)
	}
	return &agentotp.AuditEvent{Type: typ, TokenRef: tokenRef, Details: d}
}

const writeHeadSQL = `INSERT INTO audit_head (id, seq, hash, mac, key_id) VALUES (1, ?, ?, ?, ?)
	ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, key_id = excluded.key_id`

const readHeadSQL = `SELECT seq, hash, coalesce(mac, ''), coalesce(key_id, '') FROM audit_head WHERE id = 1`

// AuditHead returns the newest link as recorded by the last commit.
func (s *Store) AuditHead(ctx context.Context) (int64, string, error) {
	h, err := readHead(ctx, s.reader)
	return h.Seq, h.Hash, err
}

func readHead(ctx context.Context, q querier) (agentotp.AuditHeadRecord, error) {
	var h agentotp.AuditHeadRecord
	err := q.QueryRowContext(ctx, readHeadSQL).Scan(&h.Seq, &h.Hash, &h.MAC, &h.KeyID)
	if errors.Is(err, sql.ErrNoRows) {
		return agentotp.AuditHeadRecord{Hash: agentotp.GenesisHash}, nil
	}
	return h, storeErr("read audit head", err)
}

// AuditKey returns the key the store keys its audit chain with; nil when
// it was opened without one.
func (s *Store) AuditKey() *agentotp.AuditKey { return s.auditKey }

// AuditSnapshot calls fn with a reader of one consistent snapshot: the
// head, every event and every permission as of one commit.
func (s *Store) AuditSnapshot(ctx context.Context, fn func(agentotp.AuditSnapshot) error) error {
	rtx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return storeErr("begin audit snapshot", err)
	}
	defer func() { _ = rtx.Rollback() }()
	return fn(auditSnapshot{rtx})
}

type auditSnapshot struct{ q querier }

func (a auditSnapshot) Head(ctx context.Context) (agentotp.AuditHeadRecord, error) {
	return readHead(ctx, a.q)
}

func (a auditSnapshot) ScanAudit(ctx context.Context, fn func(*agentotp.AuditEvent) error) error {
	return scanAllAudit(ctx, a.q, fn)
}

func (a auditSnapshot) ScanPermissions(ctx context.Context, fn func(*agentotp.Permission) error) error {
	rows, err := a.q.QueryContext(ctx, selectPermission)
	if err != nil {
		return storeErr("scan permissions", err)
	}
	defer rows.Close()
	for rows.Next() {
		p, err := scanPermission(rows)
		if err != nil {
			return storeErr("scan permissions", err)
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	return storeErr("scan permissions", rows.Err())
}

func scanAudit(sc scanner) (*agentotp.AuditEvent, error) {
	var (
		e             agentotp.AuditEvent
		at            sql.NullInt64
		mac, tokenRef sql.NullString
	)
	if err := sc.Scan(&e.Seq, &e.ID, &at, &e.Type, &e.ActorType, &e.ActorID, &e.AgentID, &e.PermissionID,
		&e.RequestID, &e.DetailsJSON, &e.PrevHash, &e.Hash, &mac, &tokenRef); err != nil {
		return nil, err
	}
	e.Time, e.MAC, e.TokenRef = fromNanos(at), mac.String, tokenRef.String
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
	return scanAllAudit(ctx, s.reader, fn)
}

func scanAllAudit(ctx context.Context, q querier, fn func(*agentotp.AuditEvent) error) error {
	rows, err := q.QueryContext(ctx, selectAudit+" ORDER BY seq")
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
