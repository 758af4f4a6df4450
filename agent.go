package agentotp

import "time"

// Agent is a program that asks for permissions with an "ak_" key.
type Agent struct {
	ID          AgentID
	Name        string
	Description string
	Metadata    map[string]any
	Active      bool
	KeyHash     string // SHA-256 of the API key
	KeyPrefix   string // first 8 characters, for humans telling keys apart
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Role is what a user may do. The zero value grants nothing.
type Role string

const (
	RoleNone     Role = ""
	RoleApprover Role = "approver"
	RoleAdmin    Role = "admin"
)

// Valid reports whether r is a role that can be assigned.
func (r Role) Valid() bool { return r == RoleApprover || r == RoleAdmin }

// CanDecide reports whether the role may approve or deny requests.
func (r Role) CanDecide() bool { return r == RoleApprover || r == RoleAdmin }

// User is a human: an approver or an admin, signing in with a "uk_" key.
type User struct {
	ID         UserID
	Name       string
	Role       Role
	TelegramID int64 // 0 = none
	Active     bool
	KeyHash    string
	KeyPrefix  string
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

// keyPrefix returns the displayable prefix of a key.
func keyPrefix(s Secret) string {
	k := s.Reveal()
	if len(k) > 8 {
		return k[:8]
	}
	return k
}

// Principal is an authenticated caller.
type Principal struct {
	Agent *Agent // set for agent keys
	User  *User  // set for user keys
	// System marks internal callers (sweeper, CLI on the data directory).
	System bool
}

// IsAgent reports whether the caller is an agent.
func (p Principal) IsAgent() bool { return p.Agent != nil }

// Role returns the user's role, RoleAdmin for the system, RoleNone for agents.
func (p Principal) Role() Role {
	switch {
	case p.System:
		return RoleAdmin
	case p.User != nil:
		return p.User.Role
	}
	return RoleNone
}

// Actor returns the audit actor: ("agent", id), ("user", id) or ("system", "").
func (p Principal) Actor() (kind, id string) {
	switch {
	case p.Agent != nil:
		return "agent", string(p.Agent.ID)
	case p.User != nil:
		return "user", string(p.User.ID)
	}
	return "system", ""
}

// SystemPrincipal is the principal of internal work.
var SystemPrincipal = Principal{System: true}
