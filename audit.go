package agentotp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// EventType names an audit event. The v0.1.1 names are kept; the others are
// new.
type EventType string

const (
	EventRequest        EventType = "request"         // an agent asked; details hold the policy decision
	EventApprove        EventType = "approve"         // approved, by policy or by a human (with who); a policy's approval holds its token's issue too
	EventDeny           EventType = "deny"            // denied, by policy or by a human
	EventVote           EventType = "vote"            // one approval toward a quorum
	EventDecideRejected EventType = "decide_rejected" // a decision attempt that lost or was not allowed
	EventTokenIssue     EventType = "token_issue"     // a token was minted and handed to its agent
	EventUse            EventType = "use"
	EventUseRejected    EventType = "use_rejected"
	EventRevoke         EventType = "revoke"
	EventExpire         EventType = "expire"
	EventAgentCreate    EventType = "agent_create"
	EventAgentUpdate    EventType = "agent_update"
	EventAgentDelete    EventType = "agent_delete"
	EventUserCreate     EventType = "user_create"
	EventUserUpdate     EventType = "user_update"
	EventUserDelete     EventType = "user_delete"
	EventPolicyCreate   EventType = "policy_create"
	EventPolicyUpdate   EventType = "policy_update"
	EventPolicyDelete   EventType = "policy_delete"
	EventPolicyReload   EventType = "policy_reload"
	EventPolicyError    EventType = "policy_error"
	EventToolResult     EventType = "tool_result" // how a gated action went after its use was spent
	EventPrune          EventType = "prune"       // decided permissions past retention were deleted (their events stay)
	// EventAuditKeyed is the first keyed event after events written before
	// the audit key existed: from it on, every event carries a MAC.
	EventAuditKeyed EventType = "audit_keyed"
)

// EventTypes lists every event type, for validating filters.
var EventTypes = []EventType{
	EventRequest, EventApprove, EventDeny, EventVote, EventDecideRejected, EventTokenIssue,
	EventUse, EventUseRejected, EventRevoke, EventExpire,
	EventAgentCreate, EventAgentUpdate, EventAgentDelete,
	EventUserCreate, EventUserUpdate, EventUserDelete,
	EventPolicyCreate, EventPolicyUpdate, EventPolicyDelete, EventPolicyReload, EventPolicyError,
	EventToolResult, EventPrune, EventAuditKeyed,
	EventConsoleSignIn, EventConsoleSignOut, EventConsoleSignInRejected,
}

// Valid reports whether t is a known event type.
func (t EventType) Valid() bool {
	for _, e := range EventTypes {
		if e == t {
			return true
		}
	}
	return false
}

// AuditEvent is one link of the append-only, hash-chained audit trail. The
// store assigns Seq, PrevHash, Hash and, when it holds an AuditKey, MAC (and
// TokenRef) when it appends the event inside the transaction of the change
// it records.
type AuditEvent struct {
	Seq          int64
	ID           EventID
	Time         time.Time
	Type         EventType
	ActorType    string // "agent", "user", "system", "telegram"
	ActorID      string
	AgentID      AgentID
	PermissionID PermissionID
	RequestID    string
	// Details is the event's payload. Never put a token or key in it.
	Details map[string]any
	// DetailsJSON is Details as stored; the hash covers these exact bytes.
	DetailsJSON []byte
	PrevHash    string
	Hash        string
	// TokenRef is set on token_issue events appended with a key: the
	// AuditKey.TokenRef of the issued token's hash, so verification can
	// tell whether the permission still holds that token. "" otherwise.
	TokenRef string
	// MAC is AuditKey.EventMAC of the event; "" for events appended
	// without a key (before the key existed).
	MAC string
}

// GenesisHash is the PrevHash of the first event.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// SealDetails encodes Details into DetailsJSON once, so the bytes hashed are
// the bytes stored.
func (e *AuditEvent) SealDetails() error {
	if e.DetailsJSON != nil {
		return nil
	}
	if e.Details == nil {
		e.DetailsJSON = []byte("{}")
		return nil
	}
	b, err := json.Marshal(e.Details)
	if err != nil {
		return fmt.Errorf("encode audit details: %w", err)
	}
	e.DetailsJSON = b
	return nil
}

// ComputeHash returns SHA-256(prevHash ‖ canonical(e)) in hex. The canonical
// form is a JSON array of the fields in a fixed order, times as UTC unix
// nanoseconds, so it does not depend on any store's encoding.
func (e *AuditEvent) ComputeHash(prevHash string) (string, error) {
	if err := e.SealDetails(); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	buf.WriteString(prevHash)
	buf.WriteByte('\n')
	fields := []string{
		strconv.FormatInt(e.Seq, 10), string(e.ID), strconv.FormatInt(e.Time.UnixNano(), 10),
		string(e.Type), e.ActorType, e.ActorID, string(e.AgentID), string(e.PermissionID), e.RequestID,
	}
	head, err := json.Marshal(fields)
	if err != nil {
		return "", err
	}
	buf.Write(head)
	buf.WriteByte('\n')
	buf.Write(e.DetailsJSON)
	sum := sha256.Sum256(buf.Bytes())
	return hex.EncodeToString(sum[:]), nil
}

// ChainVerifier checks events in sequence order, one at a time, so a chain
// of any length is verified in constant memory.
type ChainVerifier struct {
	prevSeq  int64
	prevHash string
	key      *AuditKey
	Checked  int64
	// KeyedFrom is the first event that carries a MAC (0: none so far).
	// Every later event must carry one too.
	KeyedFrom int64
	// Unkeyed counts the events before KeyedFrom: written before the key
	// existed, they are checked by hash only.
	Unkeyed int64
}

// NewChainVerifier starts at the genesis. It checks the hash chain only;
// MACs are not checked.
func NewChainVerifier() *ChainVerifier { return &ChainVerifier{prevHash: GenesisHash} }

// NewKeyedChainVerifier starts at the genesis and also checks every MAC
// with key: an event whose MAC does not match, or that carries none after
// the first one that does, breaks the chain.
func NewKeyedChainVerifier(key *AuditKey) *ChainVerifier {
	return &ChainVerifier{prevHash: GenesisHash, key: key}
}

// ChainError names the first bad event.
type ChainError struct {
	Seq    int64
	Reason string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at seq %d: %s", e.Seq, e.Reason)
}

// Next checks one event. Events must be fed in ascending Seq order.
func (v *ChainVerifier) Next(e *AuditEvent) error {
	switch {
	case e.Seq != v.prevSeq+1:
		return &ChainError{Seq: v.prevSeq + 1, Reason: fmt.Sprintf("missing or reordered: next stored event is seq %d", e.Seq)}
	case e.PrevHash != v.prevHash:
		return &ChainError{Seq: e.Seq, Reason: "prevHash does not match the previous event"}
	}
	want, err := e.ComputeHash(v.prevHash)
	if err != nil {
		return &ChainError{Seq: e.Seq, Reason: err.Error()}
	}
	if !EqualHash(want, e.Hash) {
		return &ChainError{Seq: e.Seq, Reason: "content does not match its hash (edited)"}
	}
	switch {
	case e.MAC == "" && v.KeyedFrom > 0:
		return &ChainError{Seq: e.Seq, Reason: fmt.Sprintf("carries no MAC although the chain is keyed from seq %d (MAC removed)", v.KeyedFrom)}
	case e.MAC == "":
		v.Unkeyed++
	case v.key != nil && !v.key.VerifyEvent(e):
		if v.KeyedFrom == 0 {
			return &ChainError{Seq: e.Seq, Reason: fmt.Sprintf("MAC of the first keyed event does not match: wrong audit key (this key is %s), or the event was rewritten", v.key.ID())}
		}
		return &ChainError{Seq: e.Seq, Reason: "MAC does not match: the event was rewritten (its hash recomputed without the audit key)"}
	}
	if e.MAC != "" && v.KeyedFrom == 0 {
		// Keying starts at the first event, or at an audit_keyed event
		// that counts the unkeyed ones before it. Anywhere else, the
		// events before lost their MACs (their token references with
		// them), and a writer without the key could rewrite them.
		if e.Seq != 1 && !adoptsBefore(e) {
			return &ChainError{Seq: e.Seq - 1, Reason: fmt.Sprintf("carries no MAC although the chain is keyed from seq %d, where no audit_keyed event adopts the events before it (MACs removed)", e.Seq)}
		}
		v.KeyedFrom = e.Seq
	}
	v.prevSeq, v.prevHash = e.Seq, e.Hash
	v.Checked++
	return nil
}

// AuditFilter selects audit events. Zero fields do not filter.
type AuditFilter struct {
	AgentID      AgentID
	PermissionID PermissionID
	Type         EventType
	Start, End   time.Time
	// AfterSeq/BeforeSeq are cursors; Ascending flips the order (default newest first).
	AfterSeq  int64
	BeforeSeq int64
	Ascending bool
	Limit     int
}

// AuditStats counts events by type since a moment.
type AuditStats struct {
	Since  time.Time
	Total  int64
	ByType map[EventType]int64
}

// AuditReport reports an audit verification.
type AuditReport struct {
	OK       bool
	Checked  int64
	LastSeq  int64
	LastHash string
	// BadSeq is the first bad event (0 when the chain is sound or the
	// failure names no event); Reason says what is wrong.
	BadSeq int64
	Reason string

	// KeyID names the audit key the MACs were checked with; "" when they
	// were not (no key).
	KeyID string
	// KeyedFrom is the first event carrying a MAC (0: none); Unkeyed counts
	// the events before it, checked by hash only.
	KeyedFrom int64
	Unkeyed   int64
	// Checkpoint is the checkpoint verified against, nil when none.
	Checkpoint *Checkpoint
	// Head is a signed checkpoint of the verified chain's newest event, to
	// keep elsewhere; nil when verification failed or there is no key.
	Head *Checkpoint
	// Permissions counts the permissions cross-checked against the state
	// their events imply. Mismatches lists those that disagree (at most
	// AuditVerifyOptions.MaxMismatches); MismatchCount counts them all.
	Permissions   int64
	Mismatches    []PermissionMismatch
	MismatchCount int
}

// NewAuditKeyedEvent is the event a store appends when it adopts, under
// key, a chain written before any key existed (see EventAuditKeyed).
func NewAuditKeyedEvent(key *AuditKey, now time.Time, unkeyed int64) *AuditEvent {
	return &AuditEvent{ID: NewEventID(), Time: now, Type: EventAuditKeyed, ActorType: "system",
		Details: map[string]any{"keyId": key.ID(), "unkeyedEvents": unkeyed}}
}

// adoptsBefore reports whether e is an audit_keyed event adopting exactly
// the events before it.
func adoptsBefore(e *AuditEvent) bool {
	if e.Type != EventAuditKeyed {
		return false
	}
	var d struct {
		Unkeyed *int64 `json:"unkeyedEvents"`
	}
	if err := json.Unmarshal(e.DetailsJSON, &d); err != nil || d.Unkeyed == nil {
		return false
	}
	return *d.Unkeyed == e.Seq-1
}
