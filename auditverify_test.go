package agentotp_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

// trailEnv is a service on a real SQLite file, opened with an audit key,
// and a raw connection to the same file for tampering with it.
type trailEnv struct {
	t      *testing.T
	ctx    context.Context
	path   string
	key    *agentotp.AuditKey
	store  *sqlite.Store
	svc    *agentotp.Service
	admin  agentotp.Principal
	agent  agentotp.Principal
	effect atomic.Int32
}

func newTrailEnv(t *testing.T, key *agentotp.AuditKey) *trailEnv {
	t.Helper()
	e := &trailEnv{t: t, ctx: context.Background(), path: filepath.Join(t.TempDir(), "agentotp.db")}
	e.effect.Store(int32(agentotp.EffectAutoApprove))
	e.open(key)
	adminKey := agentotp.NewUserKey()
	_, err := e.svc.EnsureAdmin(e.ctx, adminKey)
	require.NoError(t, err)
	e.admin, err = e.svc.Authenticate(e.ctx, adminKey.Reveal())
	require.NoError(t, err)
	_, agentKey, err := e.svc.CreateAgent(e.ctx, e.admin, agentotp.AgentInput{Name: "bot"})
	require.NoError(t, err)
	e.agent, err = e.svc.Authenticate(e.ctx, agentKey.Reveal())
	require.NoError(t, err)
	return e
}

// open (re)opens the store on the file with key, as another process would.
func (e *trailEnv) open(key *agentotp.AuditKey) {
	e.t.Helper()
	if e.store != nil {
		require.NoError(e.t, e.store.Close())
	}
	st, err := sqlite.Open(e.ctx, e.path, sqlite.Options{Synchronous: "NORMAL", AuditKey: key})
	require.NoError(e.t, err)
	e.t.Cleanup(func() { st.Close() })
	e.key, e.store = key, st
	e.svc = agentotp.NewService(st, agentotp.Options{Evaluator: agentotp.EvaluatorFunc(
		func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.Effect(e.effect.Load()), Rule: "test"}, nil
		})})
}

// grant returns an auto-approved permission with uses uses and its token.
func (e *trailEnv) grant(uses int) (*agentotp.Permission, string) {
	e.t.Helper()
	perm, tok, err := e.svc.RequestPermission(e.ctx, e.agent, agentotp.PermissionRequest{Action: "db.query", Uses: uses})
	require.NoError(e.t, err)
	require.Equal(e.t, agentotp.StatusApproved, perm.Status)
	return perm, tok.Reveal()
}

// approved returns a permission approved by a human and its token, as the
// agent receives it.
func (e *trailEnv) approved(uses int) (*agentotp.Permission, string) {
	e.t.Helper()
	e.effect.Store(int32(agentotp.EffectRequireApproval))
	defer e.effect.Store(int32(agentotp.EffectAutoApprove))
	perm, _, err := e.svc.RequestPermission(e.ctx, e.agent, agentotp.PermissionRequest{Action: "deploy", Uses: uses})
	require.NoError(e.t, err)
	_, err = e.svc.Decide(e.ctx, e.admin, perm.ID, agentotp.DecideInput{Approved: true})
	require.NoError(e.t, err)
	perm, tok, err := e.svc.GetPermission(e.ctx, e.agent, perm.ID, 0)
	require.NoError(e.t, err)
	require.NotEmpty(e.t, tok.Reveal())
	return perm, tok.Reveal()
}

func (e *trailEnv) use(id agentotp.PermissionID, token string) (agentotp.UseResult, error) {
	return e.svc.Use(e.ctx, e.agent, id, token, nil)
}

func (e *trailEnv) verify(checkpoint string) agentotp.AuditReport {
	e.t.Helper()
	rep, err := e.svc.VerifyAuditWith(e.ctx, e.admin, agentotp.AuditVerifyOptions{Checkpoint: checkpoint})
	require.NoError(e.t, err)
	return rep
}

// tamper runs statements on the file directly, as someone who can write
// it would, after dropping the triggers that refuse edits of the trail.
func (e *trailEnv) tamper(stmts ...string) {
	e.t.Helper()
	db, err := sql.Open("sqlite", e.path)
	require.NoError(e.t, err)
	defer db.Close()
	for _, q := range append([]string{"DROP TRIGGER IF EXISTS audit_events_no_update", "DROP TRIGGER IF EXISTS audit_events_no_delete"}, stmts...) {
		_, err := db.Exec(q)
		require.NoError(e.t, err, q)
	}
}

func (e *trailEnv) events() []*agentotp.AuditEvent {
	e.t.Helper()
	var out []*agentotp.AuditEvent
	require.NoError(e.t, e.store.ScanAudit(e.ctx, func(ev *agentotp.AuditEvent) error { out = append(out, ev); return nil }))
	return out
}

// rehash rewrites event seq's details and recomputes the hash of it and
// every later event, and moves the head: all that can be done without the
// key. With key it also recomputes the MACs, as someone holding the key
// could.
func (e *trailEnv) rehash(seq int64, details string, key *agentotp.AuditKey) {
	e.t.Helper()
	events := e.events()
	var stmts []string
	prev := agentotp.GenesisHash
	for _, ev := range events {
		if ev.Seq == seq {
			ev.DetailsJSON = []byte(details)
		}
		if ev.Seq >= seq {
			ev.PrevHash = prev
			var err error
			ev.Hash, err = ev.ComputeHash(prev)
			require.NoError(e.t, err)
			mac := ev.MAC
			if key != nil {
				mac = key.EventMAC(ev)
			}
			stmts = append(stmts, fmt.Sprintf(`UPDATE audit_events SET details_json = '%s', prev_hash = '%s', hash = '%s', mac = '%s' WHERE seq = %d`,
				strings.ReplaceAll(string(ev.DetailsJSON), "'", "''"), ev.PrevHash, ev.Hash, mac, ev.Seq))
		}
		prev = ev.Hash
	}
	last := events[len(events)-1]
	head := fmt.Sprintf(`UPDATE audit_head SET seq = %d, hash = '%s'`, last.Seq, last.Hash)
	if key != nil {
		head += fmt.Sprintf(`, mac = '%s'`, key.HeadMAC(last.Seq, last.Hash))
	}
	e.tamper(append(stmts, head)...)
}

// truncate deletes the events after seq and moves the head back to seq;
// with key it also signs the moved head, as someone holding the key could.
func (e *trailEnv) truncate(seq int64, key *agentotp.AuditKey) {
	e.t.Helper()
	var hash string
	for _, ev := range e.events() {
		if ev.Seq == seq {
			hash = ev.Hash
		}
	}
	head := fmt.Sprintf(`UPDATE audit_head SET seq = %d, hash = '%s'`, seq, hash)
	if key != nil {
		head += fmt.Sprintf(`, mac = '%s'`, key.HeadMAC(seq, hash))
	}
	e.tamper(fmt.Sprintf(`DELETE FROM audit_events WHERE seq > %d`, seq), head)
}

func (e *trailEnv) lastSeq() int64 {
	e.t.Helper()
	seq, _, err := e.store.AuditHead(e.ctx)
	require.NoError(e.t, err)
	return seq
}

func requireBroken(t *testing.T, rep agentotp.AuditReport, seq int64, reason string) {
	t.Helper()
	require.False(t, rep.OK, "%+v", rep)
	require.Equal(t, seq, rep.BadSeq, rep.Reason)
	require.Contains(t, rep.Reason, reason)
	require.Nil(t, rep.Head, "no checkpoint of a broken chain")
}

func requireMismatch(t *testing.T, rep agentotp.AuditReport, id agentotp.PermissionID, problems ...string) {
	t.Helper()
	require.False(t, rep.OK)
	for _, m := range rep.Mismatches {
		if m.PermissionID == id {
			for _, p := range problems {
				require.Contains(t, m.Problems, p, m.String())
			}
			return
		}
	}
	require.Failf(t, "permission not reported", "%s not in %v", id, rep.Mismatches)
}

// TestAuditTamperingDetected: the three ways of rewriting history from the
// database file that passed before — truncating and moving the head back,
// recomputing the chain after an edit, editing a permission row — are each
// found by verification, and the last is refused at use.
func TestAuditTamperingDetected(t *testing.T) {
	key := testKey(t, 9)

	t.Run("untouched data verifies", func(t *testing.T) {
		e := newTrailEnv(t, key)
		p, tok := e.grant(2)
		_, err := e.use(p.ID, tok)
		require.NoError(t, err)
		h, htok := e.approved(1)
		_, err = e.use(h.ID, htok)
		require.NoError(t, err)
		_, err = e.svc.Revoke(e.ctx, e.agent, p.ID, "done")
		require.NoError(t, err)
		rep := e.verify("")
		require.True(t, rep.OK, "%+v", rep)
		require.Equal(t, key.ID(), rep.KeyID)
		require.Equal(t, int64(1), rep.KeyedFrom, "a fresh database is keyed from seq 1")
		require.Zero(t, rep.Unkeyed)
		require.Equal(t, int64(2), rep.Permissions)
		require.Empty(t, rep.Mismatches)
		require.NotNil(t, rep.Head)
		require.Equal(t, rep.LastSeq, rep.Head.Seq)
		require.NoError(t, key.CheckCheckpoint(*rep.Head))
		for _, ev := range e.events() {
			require.NotEmpty(t, ev.MAC, "seq %d", ev.Seq)
			if ev.Type == agentotp.EventTokenIssue {
				require.NotEmpty(t, ev.TokenRef)
			}
		}
	})

	t.Run("truncate and move the head", func(t *testing.T) {
		e := newTrailEnv(t, key)
		p, tok := e.grant(1)
		keep := e.lastSeq()
		_, err := e.use(p.ID, tok)
		require.NoError(t, err)
		e.truncate(keep, nil)

		rep := e.verify("")
		requireBroken(t, rep, keep, "the recorded head's MAC does not verify")
		requireMismatch(t, rep, p.ID, "stored status used, events say approved", "stored uses remaining 0, events say 1")
		// The writer refuses to build on it.
		_, _, err = e.svc.RequestPermission(e.ctx, e.agent, agentotp.PermissionRequest{Action: "x"})
		require.ErrorContains(t, err, "the recorded head (seq")
	})

	t.Run("recompute the chain after an edit", func(t *testing.T) {
		e := newTrailEnv(t, key)
		e.grant(1)
		e.grant(1)
		events := e.events()
		target := events[len(events)-4].Seq
		e.rehash(target, `{"rewritten":true}`, nil)
		requireBroken(t, e.verify(""), target, "MAC does not match: the event was rewritten")

		// Stripping the MACs as well does not help.
		e.tamper(fmt.Sprintf(`UPDATE audit_events SET mac = NULL WHERE seq >= %d`, target))
		requireBroken(t, e.verify(""), target, "MAC removed")
	})

	t.Run("edit a permission row", func(t *testing.T) {
		e := newTrailEnv(t, key)
		p, tok := e.grant(1)
		res, err := e.use(p.ID, tok)
		require.NoError(t, err)
		require.True(t, res.Success)
		e.tamper(fmt.Sprintf(`UPDATE permissions SET status = 'approved', uses_remaining = 1 WHERE id = '%s'`, p.ID))

		rep := e.verify("")
		require.Zero(t, rep.BadSeq, "the chain itself is intact")
		requireMismatch(t, rep, p.ID, "stored status approved, events say used", "stored uses remaining 1, events say 0")
		require.Equal(t, 1, rep.MismatchCount)
		require.Contains(t, rep.Reason, "permission "+string(p.ID)+": stored status approved, events say used")

		// The used token does not work again.
		_, err = e.use(p.ID, tok)
		require.ErrorIs(t, err, agentotp.ErrConflict)
		require.ErrorContains(t, err, "disagrees with its audit trail (its audit events say used)")
		got, err := e.store.Permission(e.ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, 1, got.UsesRemaining, "the refused spend was rolled back")
	})

	t.Run("swap in another token", func(t *testing.T) {
		e := newTrailEnv(t, key)
		p, _ := e.grant(1)
		mine := agentotp.NewToken()
		e.tamper(fmt.Sprintf(`UPDATE permissions SET token_hash = '%s' WHERE id = '%s'`, mine.Hash(), p.ID))
		requireMismatch(t, e.verify(""), p.ID, "stored token hash is not the one the events issued")
		_, err := e.use(p.ID, mine.Reveal())
		require.ErrorContains(t, err, "its token is not the one its audit events issued")
	})

	t.Run("insert a permission row", func(t *testing.T) {
		e := newTrailEnv(t, key)
		p, _ := e.grant(1)
		forged, tok := agentotp.NewPermissionID(), agentotp.NewToken()
		e.tamper(copyPermissionSQL(t, e, p.ID, forged, tok.Hash()))
		requireMismatch(t, e.verify(""), forged, "stored, but no audit event records it")
		_, err := e.use(forged, tok.Reveal())
		require.ErrorContains(t, err, "its audit events issued no token")
	})

	t.Run("a pruned row is no mismatch", func(t *testing.T) {
		e := newTrailEnv(t, key)
		p, tok := e.grant(1)
		_, err := e.use(p.ID, tok)
		require.NoError(t, err)
		e.tamper(fmt.Sprintf(`DELETE FROM permissions WHERE id = '%s'`, p.ID))
		rep := e.verify("")
		require.True(t, rep.OK, "%+v", rep)
		require.Zero(t, rep.Permissions)
	})
}

// copyPermissionSQL inserts a copy of permission from under a new id with
// another token hash, approved with five uses.
func copyPermissionSQL(t *testing.T, e *trailEnv, from, to agentotp.PermissionID, tokenHash string) string {
	t.Helper()
	db, err := sql.Open("sqlite", e.path)
	require.NoError(t, err)
	defer db.Close()
	rows, err := db.Query(`SELECT name FROM pragma_table_info('permissions')`)
	require.NoError(t, err)
	var cols, vals []string
	for rows.Next() {
		var c string
		require.NoError(t, rows.Scan(&c))
		v := c
		switch c {
		case "id":
			v = "'" + string(to) + "'"
		case "token_hash":
			v = "'" + tokenHash + "'"
		case "status":
			v = "'approved'"
		case "uses", "uses_remaining":
			v = "5"
		case "idempotency_key":
			v = "''"
		}
		cols, vals = append(cols, c), append(vals, v)
	}
	require.NoError(t, rows.Err())
	return fmt.Sprintf(`INSERT INTO permissions (%s) SELECT %s FROM permissions WHERE id = '%s'`,
		strings.Join(cols, ", "), strings.Join(vals, ", "), from)
}

// TestAuditCheckpoint: a checkpoint kept elsewhere catches what the key
// alone cannot, once someone holds the key too: truncation with a re-signed
// head and a rewrite with recomputed MACs. Forged checkpoints are refused.
func TestAuditCheckpoint(t *testing.T) {
	key := testKey(t, 5)
	e := newTrailEnv(t, key)
	e.grant(1)
	cp, err := e.svc.AuditCheckpoint(e.ctx, e.admin)
	require.NoError(t, err)
	require.Equal(t, e.lastSeq(), cp.Seq)
	require.NoError(t, key.CheckCheckpoint(cp))

	rep := e.verify(cp.String())
	require.True(t, rep.OK, "%+v", rep)
	require.Equal(t, cp.Seq, rep.Checkpoint.Seq)

	// Agents created after the checkpoint; the events naming them are
	// then deleted and the head re-signed with the key.
	for i := range 2 {
		_, _, err := e.svc.CreateAgent(e.ctx, e.admin, agentotp.AgentInput{Name: fmt.Sprint("late-", i)})
		require.NoError(t, err)
	}
	cp2, err := e.svc.AuditCheckpoint(e.ctx, e.admin)
	require.NoError(t, err)
	e.truncate(cp.Seq, key)
	require.True(t, e.verify("").OK, "with the key, truncation is invisible without a checkpoint")
	requireBroken(t, e.verify(cp2.String()), cp.Seq+1, "truncated")
	require.True(t, e.verify(cp.String()).OK, "history up to the older checkpoint is intact")

	// A rewrite before the checkpoint, MACs recomputed with the key.
	e.rehash(2, `{"rewritten":true}`, key)
	require.True(t, e.verify("").OK, "with the key, a full rewrite is invisible without a checkpoint")
	requireBroken(t, e.verify(cp.String()), cp.Seq, "differs from the checkpoint")

	// Forged or foreign checkpoints are refused.
	forged := strings.Replace(cp.String(), fmt.Sprintf("seq=%d", cp.Seq), "seq=1", 1)
	rep = e.verify(forged)
	require.False(t, rep.OK)
	require.Contains(t, rep.Reason, "checkpoint refused: checkpoint signature does not verify")
	foreign := testKey(t, 6).SignCheckpoint(agentotp.Checkpoint{Seq: cp.Seq, Hash: cp.Hash, At: cp.At})
	rep = e.verify(foreign.String())
	require.False(t, rep.OK)
	require.Contains(t, rep.Reason, "it names key "+foreign.KeyID)
	_, err = e.svc.VerifyAuditWith(e.ctx, e.admin, agentotp.AuditVerifyOptions{Checkpoint: "nonsense"})
	require.ErrorIs(t, err, agentotp.ErrValidation)
	_, err = e.svc.AuditCheckpoint(e.ctx, e.agent)
	require.ErrorIs(t, err, agentotp.ErrForbidden)
}

// TestAuditKeyMismatch: a store opened with another key, or none, refuses
// to append to a keyed chain, and verification names the wrong key.
func TestAuditKeyMismatch(t *testing.T) {
	key := testKey(t, 1)
	e := newTrailEnv(t, key)
	e.grant(1)

	other := testKey(t, 2)
	e.open(other)
	rep := e.verify("")
	requireBroken(t, rep, 1, "wrong audit key: the chain was written with key "+key.ID()+", this key is "+other.ID())
	_, _, err := e.svc.RequestPermission(e.ctx, e.agent, agentotp.PermissionRequest{Action: "x"})
	require.ErrorContains(t, err, "wrong audit key")
	_, err = e.svc.AuditCheckpoint(e.ctx, e.admin)
	require.ErrorContains(t, err, "wrong audit key")

	e.open(nil)
	_, _, err = e.svc.RequestPermission(e.ctx, e.agent, agentotp.PermissionRequest{Action: "x"})
	require.ErrorContains(t, err, "opened without the audit key")
	rep = e.verify("")
	require.False(t, rep.OK)
	require.Contains(t, rep.Reason, "no audit key was given")

	e.open(key)
	require.True(t, e.verify("").OK, "the right key again")
}

// TestAuditKeyDowngrade: a database writer without the key cannot pass a
// keyed chain off as one written before the key existed by removing every
// MAC (the hashes do not cover them) and then rewriting it freely: with
// the key, verify refuses a chain with no MAC at all, and so does the
// store's next write. Only an explicit adoption keys an unkeyed chain.
func TestAuditKeyDowngrade(t *testing.T) {
	key := testKey(t, 5)
	e := newTrailEnv(t, key)
	perm, tok := e.grant(1)
	_, err := e.use(perm.ID, tok)
	require.NoError(t, err)
	last := e.lastSeq()
	require.True(t, e.verify("").OK)

	// Every MAC removed, the use deleted and the head moved back to the
	// approval, the permission restored: all without the key.
	require.NoError(t, e.store.Close())
	e.store = nil
	e.tamper(`UPDATE audit_head SET mac = NULL, key_id = NULL`,
		`UPDATE audit_events SET mac = NULL, token_ref = NULL`,
		fmt.Sprintf(`DELETE FROM audit_events WHERE seq = %d`, last),
		fmt.Sprintf(`UPDATE audit_head SET seq = %d, hash = (SELECT hash FROM audit_events WHERE seq = %d)`, last-1, last-1),
		fmt.Sprintf(`UPDATE permissions SET status = 'approved', uses_remaining = 1 WHERE id = '%s'`, perm.ID))
	e.open(key)
	rep := e.verify("")
	requireBroken(t, rep, last-1, "no event and not the recorded head carries a MAC")
	_, err = e.use(perm.ID, tok)
	require.ErrorContains(t, err, "no MAC at all although this store has an audit key", "the spent token stays spent")

	// An operator who has checked the chain adopts it explicitly.
	require.NoError(t, e.store.Close())
	st, err := sqlite.Open(e.ctx, e.path, sqlite.Options{Synchronous: "NORMAL", AuditKey: key, AdoptUnkeyedChain: true})
	require.NoError(t, err)
	require.NoError(t, st.Close())
	e.store = nil
	e.open(key)
	rep = e.verify("")
	require.True(t, rep.OK, "%+v", rep)
	require.Equal(t, last, rep.KeyedFrom, "keyed from the audit_keyed event")
}

// TestAuditMigration: a database from before keyed audit keeps verifying:
// its events by hash, reported as unkeyed; events from then on are keyed,
// and tokens issued before keep working.
func TestAuditMigration(t *testing.T) {
	e := newTrailEnv(t, nil)
	old, oldTok := e.grant(2)
	used, usedTok := e.grant(1)
	_, err := e.use(used.ID, usedTok)
	require.NoError(t, err)
	before := e.lastSeq()
	require.NoError(t, e.store.Close())
	e.store = nil
	// Back to the schema before migration 4.
	e.tamper(
		`ALTER TABLE audit_events DROP COLUMN mac`, `ALTER TABLE audit_events DROP COLUMN token_ref`,
		`ALTER TABLE audit_head DROP COLUMN mac`, `ALTER TABLE audit_head DROP COLUMN key_id`,
		`DELETE FROM schema_migrations WHERE version = 4`,
	)

	// With a key, a chain with no MAC at all could as well be a keyed one
	// whose MACs were removed (even the schema version is the database's
	// to say): verify refuses it until someone adopts it.
	key := testKey(t, 4)
	e.open(key)
	requireBroken(t, e.verify(""), before, "no event and not the recorded head carries a MAC")
	require.NoError(t, e.store.Close())
	e.store = nil
	st, err := sqlite.Open(e.ctx, e.path, sqlite.Options{Synchronous: "NORMAL", AuditKey: key, AdoptUnkeyedChain: true})
	require.NoError(t, err)
	require.NoError(t, st.Close())
	e.open(key)
	rep := e.verify("")
	require.True(t, rep.OK, "%+v", rep)
	require.Equal(t, before+1, rep.KeyedFrom, "keyed from the audit_keyed event")
	require.Equal(t, before, rep.Unkeyed)
	cp, err := e.svc.AuditCheckpoint(e.ctx, e.admin)
	require.NoError(t, err)

	res, err := e.use(old.ID, oldTok)
	require.NoError(t, err, "a token issued before keeps working")
	require.True(t, res.Success)
	fresh, tok := e.grant(1)
	_, err = e.use(fresh.ID, tok)
	require.NoError(t, err)

	rep = e.verify(cp.String())
	require.True(t, rep.OK, "%+v", rep)
	require.Equal(t, before+1, rep.KeyedFrom)
	require.Equal(t, before, rep.Unkeyed)
	require.Equal(t, int64(3), rep.Permissions)

	// The unkeyed part is still checked by hash, and keyed events cannot
	// be passed off as unkeyed.
	e.tamper(fmt.Sprintf(`UPDATE audit_events SET mac = NULL WHERE seq = %d`, before+2))
	requireBroken(t, e.verify(""), before+2, "MAC removed")
	e.tamper(`UPDATE audit_events SET details_json = '{}' WHERE seq = 2`)
	requireBroken(t, e.verify(""), 2, "edited")

	// A used-up pre-key permission edited back to life is still caught.
	e.tamper(fmt.Sprintf(`UPDATE permissions SET status = 'approved', uses_remaining = 1 WHERE id = '%s'`, used.ID))
	_, err = e.use(used.ID, usedTok)
	require.ErrorContains(t, err, "its audit events say used")
}
