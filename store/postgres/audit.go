package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/jackc/pgx/v5"
)

const auditColumns = `seq, id, time, type, actor_type, actor_id, agent_id, permission_id, request_id,
	details_json, prev_hash, hash, mac, token_ref`

const selectAudit = `SELECT ` + auditColumns + ` FROM audit_events`

// lastAuditSQL reads the newest event's link and the recorded head in one
// statement: a batch checks one against the other before it appends.
const lastAuditSQL = `SELECT coalesce(e.seq, 0), coalesce(e.hash, ''), coalesce(e.mac, ''),
	coalesce(h.seq, 0), coalesce(h.hash, ''), coalesce(h.mac, ''), coalesce(h.key_id, '')
	FROM (SELECT 1) AS one
	LEFT JOIN (SELECT seq, hash, mac FROM audit_events ORDER BY seq DESC LIMIT 1) AS e ON true
	LEFT JOIN audit_head AS h ON h.id = 1`

const insertAuditSQL = `INSERT INTO audit_events (` + auditColumns + `)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`

// trailLaterals join, to the permission p, its latest state-moving event
// (s) and the latest event that issued it a token (i: a token_issue, or a
// policy's approval carrying its token); each walks the permission's own
// events backwards on audit_events_permission.
var trailLaterals = `LEFT JOIN LATERAL (SELECT type, details_json, token_ref FROM audit_events
		WHERE permission_id = p.id AND type IN ('` + strings.Join(eventTypeNames(agentotp.TrailEventTypes), "', '") + `')
		ORDER BY seq DESC LIMIT 1) AS s ON true
	LEFT JOIN LATERAL (SELECT type, details_json, token_ref FROM audit_events
		WHERE permission_id = p.id AND (type = '` + string(agentotp.EventTokenIssue) + `'
			OR type = '` + string(agentotp.EventApprove) + `' AND jsonb_typeof(details_json::jsonb -> 'token') = 'object')
		ORDER BY seq DESC LIMIT 1) AS i ON true`

// trailColumns are what the trail check reads (see trailRow.dest).
const trailColumns = `p.status, p.uses_remaining, coalesce(p.token_hash, ''),
	coalesce(s.type, ''), s.details_json, coalesce(s.token_ref, ''),
	coalesce(i.type, ''), i.details_json, coalesce(i.token_ref, '')`

// trailSQL reads, for the trail check at token issue and use, a
// permission's stored state and its latest events, in one statement.
var trailSQL = `SELECT ` + trailColumns + ` FROM permissions AS p ` + trailLaterals + ` WHERE p.id = $1`

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
// writer lock, so sequence numbers have no gaps or forks however many
// instances append.
//
// With an audit key it also sets e.MAC (and e.TokenRef on token_issue),
// and it refuses to append, failing the whole change, when
//
//   - the recorded head does not verify with the key, or disagrees with
//     the newest event (events deleted, the head moved, a wrong key), or the
//     chain is keyed and the store was opened without a key;
//   - e issues a token for, or records a use of, a permission whose stored
//     row disagrees with the latest events recorded for it: a use of a
//     permission whose events say it is used up, revoked or expired, a use
//     count or token that is not the one the events issued, a token for a
//     permission whose events do not say approved.
func (t *tx) AppendAudit(_ context.Context, e *agentotp.AuditEvent) error {
	if !representable(e.Time) {
		return agentotp.ValidationError("time", "must be between the years 1678 and 2262")
	}
	h := &t.w.head
	if !h.known {
		// The link is read at BEGIN, under the writer lock: send that if
		// it is still queued.
		if !t.w.linkRead {
			if err := t.flush(); err != nil {
				return storeErr("read audit head", err)
			}
			if t.failed != nil {
				return t.aborted()
			}
		}
		l := t.w.link
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
	drawn := e.ID == ""
	if drawn {
		e.ID = agentotp.NewEventID()
	}
	e.Seq, e.PrevHash, e.TokenRef, e.MAC = lastSeq+1, lastHash, "", ""
	if err := e.SealDetails(); err != nil || !json.Valid(e.DetailsJSON) {
		return agentotp.ValidationError("details", "cannot be encoded")
	}
	if e.PermissionID != "" && (e.Type == agentotp.EventUse || e.IssuesToken()) {
		if err := t.checkTrail(e); err != nil {
			return err
		}
	}
	var err error
	if e.Hash, err = e.ComputeHash(lastHash); err != nil {
		return fmt.Errorf("hash audit event: %w", err)
	}
	if key := t.s.auditKey; key != nil {
		e.MAC = key.EventMAC(e)
	}
	// Nothing reads the insert's result: it travels with the next
	// statement. An event whose id the store drew and whose every value
	// PostgreSQL takes for certain may travel with the next job's, or with
	// the COMMIT; any other is sent before the job counts as done.
	err = t.later("append audit event", failure{conflict: "audit event id already used"},
		drawn && certain(e), insertAuditSQL,
		e.Seq, string(e.ID), nanos(e.Time), string(e.Type),
		e.ActorType, e.ActorID, string(e.AgentID), string(e.PermissionID), e.RequestID,
		string(e.DetailsJSON), e.PrevHash, e.Hash, nullString(e.MAC), nullString(e.TokenRef))
	if err != nil {
		return err
	}
	h.seq, h.hash, h.moved = e.Seq, e.Hash, true
	t.follow(e)
	return nil
}

// follow keeps the trail read for the next check (tx.trail) what trailSQL
// would read once e is inserted. e becomes its permission's latest
// state-moving event (s), and a token_issue its latest issuing one (i).
// An approve may issue a token or not depending on how PostgreSQL parses
// its details: the trail is read again.
func (t *tx) follow(e *agentotp.AuditEvent) {
	r := t.trail
	if r == nil || e.PermissionID != r.id || !slices.Contains(agentotp.TrailEventTypes, e.Type) {
		return // the events trailSQL reads are unchanged
	}
	if e.Type == agentotp.EventApprove {
		t.trail = nil
		return
	}
	details := string(e.DetailsJSON)
	r.lastType, r.lastDetails, r.lastRef = e.Type, &details, e.TokenRef
	if e.Type == agentotp.EventTokenIssue {
		r.issType, r.issDetails, r.issRef = e.Type, &details, e.TokenRef
	}
}

// certain reports whether an audit insert of e cannot fail on its values:
// texts PostgreSQL stores and indexes, details its json parser takes.
// (Only a reused id or sequence number could still fail it; the store drew
// the id, and the writer lock orders the sequence.)
func certain(e *agentotp.AuditEvent) bool {
	for _, v := range []string{string(e.ID), string(e.Type), e.ActorType, e.ActorID, string(e.AgentID),
		string(e.PermissionID), e.RequestID, e.PrevHash, e.Hash, e.MAC, e.TokenRef} {
		if !storable(v, 512) {
			return false
		}
	}
	return storable(string(e.DetailsJSON), 1<<20) && shallowJSON(e.DetailsJSON)
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

// adoptChain keys a chain written without a key: when it has events and
// none carries a MAC, it appends an audit_keyed event, the first with one.
func (s *Store) adoptChain(ctx context.Context) error {
	return s.Update(ctx, func(atx agentotp.Tx) error {
		t := atx.(*tx)
		if !t.w.linkRead {
			if err := t.flush(); err != nil {
				return storeErr("read audit head", err)
			}
			if t.failed != nil {
				return t.aborted()
			}
		}
		if l := t.w.link; l.seq == 0 || l.mac != "" || l.head.MAC != "" {
			return nil // empty, or keyed already
		}
		s.adopting = true
		defer func() { s.adopting = false }()
		return t.AppendAudit(ctx, agentotp.NewAuditKeyedEvent(s.auditKey, time.Now(), t.w.link.seq))
	})
}

// writeHeadSQL records the batch's newest link, with its MAC and key id
// when the store has a key.
const writeHeadSQL = `INSERT INTO audit_head (id, seq, hash, mac, key_id) VALUES (1, $1, $2, $3, $4)
	ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, key_id = excluded.key_id`

// checkTrail holds a token issue or use about to be recorded by e to the
// latest events already recorded for its permission (see AppendAudit), and
// sets e.TokenRef on a keyed token issue. It is one indexed read; the
// events it reads are taken as stored (checking their hashes and MACs, and
// the whole history, is verification's job).
func (t *tx) checkTrail(e *agentotp.AuditEvent) error {
	r := t.trail
	t.trail = nil
	if r == nil || r.id != e.PermissionID {
		r = &trailRow{}
		err := t.scan(trailSQL, []any{string(e.PermissionID)}, r.dest()...)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // no row to hold to the trail
		}
		if err != nil {
			return storeErr("read permission trail", err)
		}
	}
	var trail agentotp.PermissionTrail
	if r.issType != "" && r.lastType != agentotp.EventTokenIssue {
		trail.Apply(&agentotp.AuditEvent{Type: r.issType, TokenRef: r.issRef, DetailsJSON: []byte(deref(r.issDetails))})
	}
	if r.lastType != "" {
		trail.Apply(&agentotp.AuditEvent{Type: r.lastType, TokenRef: r.lastRef, DetailsJSON: []byte(deref(r.lastDetails))})
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
		if why == "" && key != nil && r.tokenHash != "" {
			e.TokenRef = key.TokenRef(r.tokenHash)
		}
	case agentotp.EventUse:
		why = trail.RefuseUse(r.remaining, r.tokenHash, key)
	}
	if why != "" {
		return agentotp.Errorf(agentotp.CodeConflict, "permission %s refused: its stored state disagrees with its audit trail (%s)", e.PermissionID, why)
	}
	return nil
}

// trailRow is a permission's row and latest events as the trail check
// reads them (trailColumns).
type trailRow struct {
	id                      agentotp.PermissionID
	status                  agentotp.Status
	remaining               int
	tokenHash               string
	lastType, issType       agentotp.EventType
	lastDetails, issDetails *string
	lastRef, issRef         string
}

func (r *trailRow) dest() []any {
	return []any{&r.status, &r.remaining, &r.tokenHash,
		&r.lastType, &r.lastDetails, &r.lastRef, &r.issType, &r.issDetails, &r.issRef}
}

const readHeadSQL = `SELECT seq, hash, coalesce(mac, ''), coalesce(key_id, '') FROM audit_head WHERE id = 1`

// AuditHead returns the newest link as recorded by the last commit.
func (s *Store) AuditHead(ctx context.Context) (int64, string, error) {
	h, err := readHead(ctx, s.pool)
	return h.Seq, h.Hash, err
}

func readHead(ctx context.Context, q querier) (agentotp.AuditHeadRecord, error) {
	var h agentotp.AuditHeadRecord
	err := q.QueryRow(ctx, readHeadSQL).Scan(&h.Seq, &h.Hash, &h.MAC, &h.KeyID)
	if errors.Is(err, pgx.ErrNoRows) {
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
	rtx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return storeErr("begin audit snapshot", err)
	}
	defer func() { _ = rtx.Rollback(context.WithoutCancel(ctx)) }()
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
	rows, err := a.q.Query(ctx, selectPermission)
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
		at            *int64
		details       string
		mac, tokenRef *string
	)
	if err := sc.Scan(&e.Seq, &e.ID, &at, &e.Type, &e.ActorType, &e.ActorID, &e.AgentID, &e.PermissionID,
		&e.RequestID, &details, &e.PrevHash, &e.Hash, &mac, &tokenRef); err != nil {
		return nil, err
	}
	e.Time, e.MAC, e.TokenRef, e.DetailsJSON = fromNanos(at), deref(mac), deref(tokenRef), []byte(details)
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
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, cond+" $"+strconv.Itoa(len(args)))
	}
	if f.AgentID != "" {
		add("agent_id =", string(f.AgentID))
	}
	if f.PermissionID != "" {
		add("permission_id =", string(f.PermissionID))
	}
	if f.Type != "" {
		add("type =", string(f.Type))
	}
	if !f.Start.IsZero() {
		add("time >=", f.Start.UnixNano())
	}
	if !f.End.IsZero() {
		add("time <=", f.End.UnixNano())
	}
	if f.AfterSeq > 0 {
		add("seq >", f.AfterSeq)
	}
	if f.BeforeSeq > 0 {
		add("seq <", f.BeforeSeq)
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
	args = append(args, limit)
	rows, err := s.pool.Query(ctx, q+" LIMIT $"+strconv.Itoa(len(args)), args...)
	if err != nil {
		return nil, storeErr("list audit events", err)
	}
	out, err := collect(rows, scanAudit)
	return out, storeErr("list audit events", err)
}

// ScanAudit streams every event in ascending sequence order, one row at a
// time, from one consistent snapshot (one query). fn's error stops the
// scan and is returned as is.
func (s *Store) ScanAudit(ctx context.Context, fn func(*agentotp.AuditEvent) error) error {
	return scanAllAudit(ctx, s.pool, fn)
}

func scanAllAudit(ctx context.Context, q querier, fn func(*agentotp.AuditEvent) error) error {
	rows, err := q.Query(ctx, selectAudit+" ORDER BY seq")
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
		q, args = q+" WHERE time >= $1", append(args, since.UnixNano())
	}
	rows, err := s.pool.Query(ctx, q+" GROUP BY type", args...)
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
