package agentotp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Checkpoint pins the audit chain at one event: its seq and chain hash,
// signed with the audit key. Kept outside the data directory, it proves
// later that history up to that event is unchanged: the hash covers every
// event before it, and a checkpoint cannot be made without the key.
type Checkpoint struct {
	Seq  int64
	Hash string
	At   time.Time // when it was taken, to the second
	// KeyID names the key that signed it; Sig is the signature.
	KeyID string
	Sig   string
}

const checkpointTag = "agentotp-checkpoint v1"

func (c Checkpoint) body() string {
	return fmt.Sprintf("%s seq=%d hash=%s at=%s key=%s", checkpointTag, c.Seq, c.Hash,
		c.At.UTC().Format(time.RFC3339), c.KeyID)
}

// String returns the one-line form printed by `agentotp audit checkpoint`
// and logged by serve:
//
//	agentotp-checkpoint v1 seq=1234 hash=<hex> at=<RFC 3339> key=<key id> sig=<hex>
func (c Checkpoint) String() string { return c.body() + " sig=" + c.Sig }

var checkpointRE = regexp.MustCompile(`agentotp-checkpoint v1 seq=(0|[1-9][0-9]{0,18}) hash=([0-9a-f]{64}) ` +
	`at=(\S+) key=([0-9a-f]{16}) sig=([0-9a-f]{64})`)

// ParseCheckpoint finds the last checkpoint line in s: the line itself, a
// file of them (one appended per run), or log output that quotes it. It
// checks the form only; AuditKey.CheckCheckpoint checks the signature.
func ParseCheckpoint(s string) (Checkpoint, error) {
	if !strings.Contains(s, checkpointTag) {
		return Checkpoint{}, ValidationError("checkpoint", "holds no "+checkpointTag+" line")
	}
	all := checkpointRE.FindAllStringSubmatch(s, -1)
	if len(all) == 0 {
		return Checkpoint{}, ValidationError("checkpoint", "is malformed: expected "+checkpointTag+" seq=N hash=HEX at=TIME key=ID sig=HEX")
	}
	m := all[len(all)-1]
	seq, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return Checkpoint{}, ValidationError("checkpoint", "seq is out of range")
	}
	at, err := time.Parse(time.RFC3339, m[3])
	if err != nil {
		return Checkpoint{}, ValidationError("checkpoint", "at is not an RFC 3339 time")
	}
	c := Checkpoint{Seq: seq, Hash: m[2], At: at, KeyID: m[4], Sig: m[5]}
	if c.String() != m[0] {
		return Checkpoint{}, ValidationError("checkpoint", "is not in canonical form (at must be UTC, to the second)")
	}
	return c, nil
}

// AuditHeadRecord is the chain head as recorded at the last commit.
type AuditHeadRecord struct {
	Seq  int64
	Hash string
	// MAC is AuditKey.HeadMAC(Seq, Hash); "" when written without a key.
	MAC string
	// KeyID names the key of the last keyed commit; "" when none.
	KeyID string
}

// AuditSnapshot reads the audit trail and the permissions from one
// consistent snapshot of the store.
type AuditSnapshot interface {
	Head(ctx context.Context) (AuditHeadRecord, error)
	// ScanAudit calls fn for every event in ascending sequence order.
	ScanAudit(ctx context.Context, fn func(*AuditEvent) error) error
	// ScanPermissions calls fn for every stored permission.
	ScanPermissions(ctx context.Context, fn func(*Permission) error) error
}

// AuditSnapshotter is implemented by a Store that keys its audit chain
// (AuditKey returns nil when it was opened without a key) and can hand
// verification one snapshot of everything it checks.
type AuditSnapshotter interface {
	AuditKey() *AuditKey
	AuditSnapshot(ctx context.Context, fn func(AuditSnapshot) error) error
}

// PermissionMismatch is a permission whose stored state disagrees with the
// state its audit events imply.
type PermissionMismatch struct {
	PermissionID PermissionID
	Problems     []string
}

func (m PermissionMismatch) String() string {
	return fmt.Sprintf("permission %s: %s", m.PermissionID, strings.Join(m.Problems, "; "))
}

// PermissionTrail is what a permission's audit events, applied in order,
// say about it. A suffix of the events gives the same answer as all of
// them as long as it starts at the latest token_issue (or holds none).
type PermissionTrail struct {
	Events int
	// Status is the status the events imply; "" until one implies one.
	Status Status
	// RequestedUses is the uses the request asked for (0: unknown); a
	// policy may only lower it.
	RequestedUses int
	// UsesKnown says Uses and UsesRemaining are known: a token was issued.
	UsesKnown     bool
	Uses          int
	UsesRemaining int
	TokenIssued   bool
	// TokenRef is the latest token_issue's TokenRef ("" when unkeyed).
	TokenRef string
}

// Apply folds one event of the permission into the trail.
func (t *PermissionTrail) Apply(e *AuditEvent) {
	t.Events++
	switch e.Type {
	case EventRequest:
		t.Status = StatusPending
		if n, ok := detailInt(e, "uses"); ok {
			t.RequestedUses = n
		}
	case EventApprove:
		t.Status = StatusApproved
		if n, ok := grantedUses(e); ok {
			t.TokenIssued, t.TokenRef = true, e.TokenRef
			t.UsesKnown, t.Uses, t.UsesRemaining = true, n, n
		}
	case EventDeny:
		t.Status = StatusDenied
	case EventRevoke:
		t.Status = StatusRevoked
	case EventExpire:
		t.Status = StatusExpired
	case EventTokenIssue:
		t.Status, t.TokenIssued, t.TokenRef = StatusApproved, true, e.TokenRef
		if n, ok := detailInt(e, "uses"); ok {
			t.UsesKnown, t.Uses, t.UsesRemaining = true, n, n
		}
	case EventUse:
		if n, ok := detailInt(e, "usesRemaining"); ok {
			t.UsesKnown, t.UsesRemaining = true, n
			t.Status = StatusApproved
			if n == 0 {
				t.Status = StatusUsed
			}
		}
	}
}

// IssuesToken reports whether e hands out a token: a token_issue, or a
// policy's approval that issued its token in the same event.
func (e *AuditEvent) IssuesToken() bool {
	if e.Type == EventTokenIssue {
		return true
	}
	_, ok := grantedUses(e)
	return ok
}

// grantedUses reads the uses of the token an approve event issued: the
// "token" object a policy's approval carries.
func grantedUses(e *AuditEvent) (int, bool) {
	if e.Type != EventApprove {
		return 0, false
	}
	d := e.Details
	if d == nil && len(e.DetailsJSON) > 0 {
		_ = json.Unmarshal(e.DetailsJSON, &d)
	}
	tok, ok := d["token"].(map[string]any)
	if !ok {
		return 0, false
	}
	return detailInt(&AuditEvent{Details: tok}, "uses")
}

// TrailEventTypes are the event types that move a permission's state, the
// ones Apply reads.
var TrailEventTypes = []EventType{EventRequest, EventApprove, EventDeny, EventRevoke, EventExpire, EventTokenIssue, EventUse}

// detailInt reads a whole number from the event's details.
func detailInt(e *AuditEvent, key string) (int, bool) {
	d := e.Details
	if d == nil && len(e.DetailsJSON) > 0 {
		_ = json.Unmarshal(e.DetailsJSON, &d)
	}
	switch v := d[key].(type) {
	case int:
		return v, true
	case int64:
		return int(v), true
	case float64:
		if v == float64(int(v)) {
			return int(v), true
		}
	case json.Number:
		n, err := v.Int64()
		return int(n), err == nil
	}
	return 0, false
}

// Compare lists how the stored permission p disagrees with the trail, in
// the words of a report ("stored status approved, events say used"). key
// checks the token against the one issued; nil skips that.
func (t *PermissionTrail) Compare(p *Permission, key *AuditKey) []string {
	var out []string
	if t.Events == 0 {
		return []string{"stored, but no audit event records it"}
	}
	if t.Status != "" && p.Status != t.Status {
		out = append(out, fmt.Sprintf("stored status %s, events say %s", p.Status, t.Status))
	}
	switch {
	case t.UsesKnown && p.UsesRemaining != t.UsesRemaining:
		out = append(out, fmt.Sprintf("stored uses remaining %d, events say %d", p.UsesRemaining, t.UsesRemaining))
	case !t.UsesKnown && t.RequestedUses > 0 && p.UsesRemaining > t.RequestedUses:
		out = append(out, fmt.Sprintf("stored uses remaining %d, more than the %d requested", p.UsesRemaining, t.RequestedUses))
	}
	switch {
	case t.UsesKnown && p.Uses != t.Uses:
		out = append(out, fmt.Sprintf("stored uses %d, events say %d", p.Uses, t.Uses))
	case !t.UsesKnown && t.RequestedUses > 0 && p.Uses > t.RequestedUses:
		out = append(out, fmt.Sprintf("stored uses %d, more than the %d requested", p.Uses, t.RequestedUses))
	}
	switch {
	case p.TokenHash != "" && !t.TokenIssued:
		out = append(out, "stored token hash present, events issued no token")
	case p.TokenHash == "" && t.TokenIssued:
		out = append(out, "stored token hash missing, events issued a token")
	case p.TokenHash != "" && t.TokenRef != "" && key != nil && !key.VerifyTokenRef(p.TokenHash, t.TokenRef):
		out = append(out, "stored token hash is not the one the events issued")
	}
	return out
}

// RefuseIssue says why a token must not be issued for a permission with
// this trail, or "".
func (t *PermissionTrail) RefuseIssue() string {
	switch {
	case t.Events == 0:
		return "no audit event records its request"
	case t.Status != "" && t.Status != StatusApproved:
		return fmt.Sprintf("its audit events say %s", t.Status)
	}
	return ""
}

// RefuseGrant says why an approval that issues its token at once must not
// be recorded for a permission with this trail, or "": it follows the
// request alone.
func (t *PermissionTrail) RefuseGrant() string {
	switch {
	case t.Events == 0:
		return "no audit event records its request"
	case t.Status != StatusPending:
		return fmt.Sprintf("its audit events say %s", t.Status)
	}
	return ""
}

// RefuseUse says why a use must not be recorded for a permission with this
// trail, or "": remainingAfter is the stored uses remaining after the
// spend, tokenHash the stored token hash.
func (t *PermissionTrail) RefuseUse(remainingAfter int, tokenHash string, key *AuditKey) string {
	switch {
	case !t.TokenIssued:
		return "its audit events issued no token"
	case t.Status != StatusApproved:
		return fmt.Sprintf("its audit events say %s", t.Status)
	case t.UsesKnown && remainingAfter != t.UsesRemaining-1:
		return fmt.Sprintf("its audit events leave %d uses, the stored row %d", t.UsesRemaining, remainingAfter+1)
	case t.TokenRef != "" && key != nil && !key.VerifyTokenRef(tokenHash, t.TokenRef):
		return "its token is not the one its audit events issued"
	}
	return ""
}

// AuditVerifyOptions tunes VerifyAuditWith.
type AuditVerifyOptions struct {
	// Checkpoint is text holding a checkpoint line (see ParseCheckpoint);
	// "" = none.
	Checkpoint string
	// MaxMismatches bounds AuditReport.Mismatches; 0 = 100.
	MaxMismatches int
}

// DefaultMaxMismatches bounds the mismatches a report lists.
const DefaultMaxMismatches = 100

// VerifyAuditWith verifies the audit trail and the permissions against it:
//
//   - the hash chain, every MAC (with the store's audit key) and the
//     recorded head and its MAC, so edited, inserted, deleted, recomputed
//     and truncated events are found, and the first bad seq is named;
//   - with a checkpoint, that the event it names is still there with the
//     same hash (truncation or rewriting that moved the head consistently);
//   - every stored permission against the status, uses and token its
//     events imply; each one that disagrees is listed (a permission whose
//     row is gone, pruned, is fine).
func (s *Service) VerifyAuditWith(ctx context.Context, p Principal, opts AuditVerifyOptions) (AuditReport, error) {
	if err := requireAdmin(p); err != nil {
		return AuditReport{}, err
	}
	maxList := opts.MaxMismatches
	if maxList <= 0 {
		maxList = DefaultMaxMismatches
	}
	var cp *Checkpoint
	if opts.Checkpoint != "" {
		c, err := ParseCheckpoint(opts.Checkpoint)
		if err != nil {
			return AuditReport{}, err
		}
		cp = &c
	}
	keyed, strict := s.store.(AuditSnapshotter)
	var key *AuditKey
	if strict {
		key = keyed.AuditKey()
	}
	rep := AuditReport{Checkpoint: cp}
	if key != nil {
		rep.KeyID = key.ID()
	}
	if cp != nil {
		if key == nil {
			rep.Reason = "a checkpoint can only be checked with the audit key, and this store has none"
			return rep, nil
		}
		if err := key.CheckCheckpoint(*cp); err != nil {
			rep.Reason = "checkpoint refused: " + err.Error()
			return rep, nil
		}
	}
	run := func(snap AuditSnapshot) error {
		return verifySnapshot(ctx, snap, key, cp, strict, maxList, &rep)
	}
	var err error
	if strict {
		err = keyed.AuditSnapshot(ctx, run)
	} else {
		err = run(storeSnapshot{s.store})
	}
	if err != nil {
		return AuditReport{}, err
	}
	if rep.OK && key != nil && rep.LastSeq > 0 {
		head := key.SignCheckpoint(Checkpoint{Seq: rep.LastSeq, Hash: rep.LastHash, At: s.clock().UTC().Truncate(time.Second)})
		rep.Head = &head
	}
	return rep, nil
}

func verifySnapshot(ctx context.Context, snap AuditSnapshot, key *AuditKey, cp *Checkpoint, strict bool, maxList int, rep *AuditReport) error {
	head, err := snap.Head(ctx)
	if err != nil {
		return err
	}
	v := NewKeyedChainVerifier(key)
	var (
		broken  *ChainError
		lastMAC string
		cpSeen  = cp == nil || cp.Seq == 0
	)
	trails := map[PermissionID]*PermissionTrail{}
	err = snap.ScanAudit(ctx, func(e *AuditEvent) error {
		if broken == nil {
			err := v.Next(e)
			var ce *ChainError
			switch {
			case errors.As(err, &ce):
				broken = ce
			case err != nil:
				return err
			case e.Seq == head.Seq && !EqualHash(e.Hash, head.Hash):
				broken = &ChainError{Seq: e.Seq, Reason: "does not match the recorded chain head"}
			case cp != nil && e.Seq == cp.Seq && !EqualHash(e.Hash, cp.Hash):
				broken = &ChainError{Seq: e.Seq, Reason: fmt.Sprintf("differs from the checkpoint taken %s: history up to it was rewritten", cp.At.UTC().Format(time.RFC3339))}
			}
			if broken == nil {
				rep.LastSeq, rep.LastHash, lastMAC = e.Seq, e.Hash, e.MAC
				cpSeen = cpSeen || e.Seq == cp.Seq
			}
		}
		if e.PermissionID != "" {
			t := trails[e.PermissionID]
			if t == nil {
				t = &PermissionTrail{}
				trails[e.PermissionID] = t
			}
			t.Apply(e)
		}
		return nil
	})
	if err != nil {
		return err
	}
	rep.Checked, rep.KeyedFrom, rep.Unkeyed = v.Checked, v.KeyedFrom, v.Unkeyed
	if broken == nil {
		broken = checkEnd(rep.LastSeq, lastMAC, head, key, cp, cpSeen, strict, v.KeyedFrom)
	}
	if broken != nil {
		rep.BadSeq, rep.Reason = broken.Seq, broken.Reason
		if key != nil && head.KeyID != "" && head.KeyID != key.ID() {
			rep.Reason = fmt.Sprintf("wrong audit key: the chain was written with key %s, this key is %s (%s)", head.KeyID, key.ID(), broken.Reason)
		}
	}

	err = snap.ScanPermissions(ctx, func(p *Permission) error {
		rep.Permissions++
		t := trails[p.ID]
		if t == nil {
			t = &PermissionTrail{}
		}
		if problems := t.Compare(p, key); len(problems) > 0 {
			rep.MismatchCount++
			if len(rep.Mismatches) < maxList {
				rep.Mismatches = append(rep.Mismatches, PermissionMismatch{PermissionID: p.ID, Problems: problems})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if rep.MismatchCount > 0 && rep.Reason == "" {
		rep.Reason = rep.Mismatches[0].String()
		if rep.MismatchCount > 1 {
			rep.Reason += fmt.Sprintf(" (and %d more permissions)", rep.MismatchCount-1)
		}
	}
	if broken == nil && key == nil && v.KeyedFrom > 0 && rep.Reason == "" {
		rep.Reason = fmt.Sprintf("the chain is keyed from seq %d but no audit key was given: its MACs were not checked", v.KeyedFrom)
	}
	rep.OK = rep.Reason == ""
	return nil
}

// checkEnd checks where the chain ends against the recorded head, its MAC
// and the checkpoint.
func checkEnd(lastSeq int64, lastMAC string, head AuditHeadRecord, key *AuditKey, cp *Checkpoint, cpSeen, strict bool, keyedFrom int64) *ChainError {
	switch {
	case lastSeq < head.Seq:
		return &ChainError{Seq: lastSeq + 1, Reason: fmt.Sprintf("missing: the chain ends at seq %d but its recorded head is seq %d", lastSeq, head.Seq)}
	case strict && lastSeq > head.Seq && head.Seq == 0:
		return &ChainError{Seq: 1, Reason: "the recorded chain head is missing"}
	case strict && lastSeq > head.Seq:
		return &ChainError{Seq: head.Seq + 1, Reason: fmt.Sprintf("the recorded head is seq %d: later events were added without it", head.Seq)}
	case !cpSeen:
		return &ChainError{Seq: lastSeq + 1, Reason: fmt.Sprintf("missing: the checkpoint taken %s names seq %d but the chain ends at seq %d (truncated)", cp.At.UTC().Format(time.RFC3339), cp.Seq, lastSeq)}
	}
	if key == nil || lastSeq == 0 {
		return nil // no key to check with, or nothing to check
	}
	switch {
	case head.MAC == "" && keyedFrom == 0:
		// A chain written before the key existed is adopted with an
		// audit_keyed event; one with no MAC at all can as well be a
		// keyed chain whose MACs were all removed.
		return &ChainError{Seq: head.Seq, Reason: "no event and not the recorded head carries a MAC although an audit key was given: " +
			"the chain was never keyed (written before the key existed and not adopted), or its MACs were removed"}
	case head.MAC == "":
		return &ChainError{Seq: head.Seq, Reason: "the recorded head carries no MAC although the chain is keyed"}
	case !key.VerifyHead(head.Seq, head.Hash, head.MAC):
		return &ChainError{Seq: head.Seq, Reason: "the recorded head's MAC does not verify: the head was moved (newer events deleted?) or written with a different audit key"}
	case lastMAC == "" && lastSeq > 0:
		return &ChainError{Seq: lastSeq, Reason: "the newest event carries no MAC although the head is keyed (MAC removed)"}
	}
	return nil
}

// AuditCheckpoint returns a signed checkpoint of the chain's recorded head,
// after checking the head's MAC. It needs a store with an audit key.
func (s *Service) AuditCheckpoint(ctx context.Context, p Principal) (Checkpoint, error) {
	if err := requireAdmin(p); err != nil {
		return Checkpoint{}, err
	}
	keyed, ok := s.store.(AuditSnapshotter)
	if !ok || keyed.AuditKey() == nil {
		return Checkpoint{}, Errorf(CodeUnavailable, "this store has no audit key: checkpoints need one")
	}
	key := keyed.AuditKey()
	var head AuditHeadRecord
	err := keyed.AuditSnapshot(ctx, func(snap AuditSnapshot) error {
		var err error
		head, err = snap.Head(ctx)
		return err
	})
	if err != nil {
		return Checkpoint{}, err
	}
	switch {
	case head.KeyID != "" && head.KeyID != key.ID():
		return Checkpoint{}, Errorf(CodeInternal, "wrong audit key: the chain was written with key %s, this key is %s", head.KeyID, key.ID())
	case head.MAC != "" && !key.VerifyHead(head.Seq, head.Hash, head.MAC):
		return Checkpoint{}, Errorf(CodeInternal, "the recorded audit head (seq %d) does not verify with the audit key: run agentotp audit verify", head.Seq)
	}
	return key.SignCheckpoint(Checkpoint{Seq: head.Seq, Hash: head.Hash, At: s.clock().UTC().Truncate(time.Second)}), nil
}

// storeSnapshot reads through the plain Store interface, for stores that
// cannot hand out one snapshot: it has no key and events committed during
// the scan may show.
type storeSnapshot struct{ st Store }

func (s storeSnapshot) Head(ctx context.Context) (AuditHeadRecord, error) {
	seq, hash, err := s.st.AuditHead(ctx)
	return AuditHeadRecord{Seq: seq, Hash: hash}, err
}

func (s storeSnapshot) ScanAudit(ctx context.Context, fn func(*AuditEvent) error) error {
	return s.st.ScanAudit(ctx, fn)
}

func (s storeSnapshot) ScanPermissions(ctx context.Context, fn func(*Permission) error) error {
	for page := 1; ; page++ {
		perms, total, err := s.st.Permissions(ctx, PermissionFilter{Page: Page{Page: page, Limit: 100}})
		if err != nil {
			return err
		}
		for _, p := range perms {
			if err := fn(p); err != nil {
				return err
			}
		}
		if len(perms) == 0 || page*100 >= total {
			return nil
		}
	}
}
