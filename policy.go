package agentotp

import "time"

// Policy is an API-managed rule as stored. The policy engine compiles it;
// the domain only keeps it.
type Policy struct {
	ID            PolicyID
	Name          string
	Description   string
	Priority      int
	AgentID       AgentID // "" = all agents
	Conditions    map[string]any
	When          string
	Effect        Effect
	ScopeTemplate map[string]any
	Approvers     []string
	Quorum        int
	TokenTTL      time.Duration
	TokenUses     int
	UseWhen       string
	Active        bool
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// PolicyFilter selects policies for listing.
type PolicyFilter struct {
	ActiveOnly bool
	Page       Page
}
