// Package agentotp is the domain of the agentotp service: one-time, scoped,
// human-or-policy-approved permissions for AI agents.
//
// The package owns the nouns (Permission, Token, Decision, Agent, User,
// AuditEvent, Error) and Service, the one place where the lifecycle
// request → decide → notify → approve → issue → deliver → verify → use →
// revoke → expire → audit happens. It imports only the standard library;
// adapters (store/sqlite, policy, httpapi, …) plug into the interfaces it
// declares.
package agentotp

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
	"time"
)

// Typed identifiers. They are opaque strings with a kind prefix so that an id
// pasted in the wrong place is obvious in logs and rejected by lookups.
type (
	PermissionID string
	AgentID      string
	UserID       string
	PolicyID     string
	EventID      string
)

// Id prefixes, part of the wire format.
const (
	PermissionIDPrefix = "perm_"
	AgentIDPrefix      = "agt_"
	UserIDPrefix       = "usr_"
	PolicyIDPrefix     = "pol_"
	EventIDPrefix      = "evt_"
)

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newID returns prefix + 26 lower-case characters in the ULID layout: 48
// bits of Unix milliseconds, then 80 random bits. Ids sort by creation time,
// so the store's indexes grow at one end instead of being rewritten at
// random places (several times faster inserts), and 80 random bits keep them
// unguessable: an id alone never grants anything anyway.
func newID(prefix string) string {
	var b [16]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	if _, err := rand.Read(b[6:]); err != nil {
		panic("agentotp: crypto/rand failed: " + err.Error())
	}
	return prefix + idEncoding.EncodeToString(b[:])
}

// NewPermissionID returns a fresh random permission id.
func NewPermissionID() PermissionID { return PermissionID(newID(PermissionIDPrefix)) }

// NewAgentID returns a fresh random agent id.
func NewAgentID() AgentID { return AgentID(newID(AgentIDPrefix)) }

// NewUserID returns a fresh random user id.
func NewUserID() UserID { return UserID(newID(UserIDPrefix)) }

// NewPolicyID returns a fresh random policy id.
func NewPolicyID() PolicyID { return PolicyID(newID(PolicyIDPrefix)) }

// NewEventID returns a fresh random audit event id.
func NewEventID() EventID { return EventID(newID(EventIDPrefix)) }

// validID reports whether s looks like an id of the given kind. It is a cheap
// syntactic filter applied at the edge; lookups still decide existence.
func validID(s, prefix string) bool {
	if !strings.HasPrefix(s, prefix) || len(s) != len(prefix)+26 {
		return false
	}
	for _, c := range s[len(prefix):] {
		if !strings.ContainsRune("0123456789abcdefghjkmnpqrstvwxyz", c) {
			return false
		}
	}
	return true
}

// Valid reports whether id is syntactically a permission id.
func (id PermissionID) Valid() bool { return validID(string(id), PermissionIDPrefix) }

// Valid reports whether id is syntactically an agent id.
func (id AgentID) Valid() bool { return validID(string(id), AgentIDPrefix) }

// Valid reports whether id is syntactically a user id.
func (id UserID) Valid() bool { return validID(string(id), UserIDPrefix) }

// Valid reports whether id is syntactically a policy id.
func (id PolicyID) Valid() bool { return validID(string(id), PolicyIDPrefix) }

// Clock returns the current time. Services take one so tests move time
// instead of sleeping.
type Clock func() time.Time

// SystemClock is the real clock.
func SystemClock() time.Time { return time.Now() }
