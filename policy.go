package agentotp

import (
	"context"
	"errors"
	"time"
)

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

// FilePolicySource is implemented by evaluators that load rules from files;
// those rules are listed read-only next to the API-managed ones.
type FilePolicySource interface {
	FilePolicies() []*Policy
}

func (s *Service) validatePolicy(pol *Policy) error {
	if err := validName("name", pol.Name); err != nil {
		return err
	}
	if err := validDescription(pol.Description); err != nil {
		return err
	}
	if pol.AgentID != "" && !pol.AgentID.Valid() {
		return ValidationError("agentId", "is not an agent id")
	}
	if pol.Conditions == nil {
		pol.Conditions = map[string]any{}
	}
	if err := ValidateObject("conditions", pol.Conditions); err != nil {
		return err
	}
	if pol.ScopeTemplate != nil {
		if err := ValidateObject("scopeTemplate", pol.ScopeTemplate); err != nil {
			return err
		}
	}
	if pol.Quorum < 0 || pol.Quorum > 10 {
		return ValidationError("quorum", "must be between 1 and 10")
	}
	if pol.TokenUses < 0 || pol.TokenUses > MaxUses {
		return ValidationError("token.uses", "must be between 1 and 1000")
	}
	if pol.TokenTTL != 0 && (pol.TokenTTL < MinTokenTTL || pol.TokenTTL > MaxTokenTTL) {
		return ValidationError("token.ttl", "must be between 30 and 3600 seconds")
	}
	if v, ok := s.eval.(PolicyValidator); ok {
		if err := v.ValidatePolicy(pol); err != nil {
			var e *Error
			if errors.As(err, &e) {
				return e
			}
			return ValidationError("policy", err.Error())
		}
	}
	return nil
}

// reloadPolicies reloads the rules after a policy change. A failure (a
// store error, a policy file broken meanwhile) leaves the last good set in
// force; the sweep, whose cursor stays before the change, tries again
// (see followPolicies) after a pause that doubles with each failure, up to
// maxPolicyRetry: the change must not wait for the next unrelated one, and
// the audit must not fill with one policy_error a sweep.
func (s *Service) reloadPolicies(ctx context.Context) error {
	r, ok := s.eval.(PolicyReloader)
	if !ok {
		return nil
	}
	if err := r.Reload(ctx); err != nil {
		n := s.policyFailures.Add(1)
		pause := min(firstPolicyRetry<<min(n-1, 20), maxPolicyRetry)
		s.policyRetryAt.Store(s.clock().Add(pause).UnixNano())
		s.log.Error("policy reload after change failed; tried again later", "err", err, "retry_in", pause)
		return err
	}
	s.policyFailures.Store(0)
	s.policyRetryAt.Store(0)
	return nil
}

// The pause before a failed reload is tried again: firstPolicyRetry,
// doubling with each failure, at most maxPolicyRetry.
const (
	firstPolicyRetry = 250 * time.Millisecond
	maxPolicyRetry   = 5 * time.Minute
)

func policyDetails(pol *Policy) map[string]any {
	return map[string]any{"policyId": string(pol.ID), "name": pol.Name, "effect": pol.Effect.String(),
		"priority": pol.Priority, "agentId": string(pol.AgentID), "active": pol.Active}
}

// CreatePolicy stores an API-managed rule after the evaluator compiled it.
func (s *Service) CreatePolicy(ctx context.Context, p Principal, pol *Policy) (*Policy, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if err := s.validatePolicy(pol); err != nil {
		return nil, err
	}
	if pol.AgentID != "" {
		if _, err := s.store.Agent(ctx, pol.AgentID); err != nil {
			return nil, ValidationError("agentId", "agent not found")
		}
	}
	now := s.clock()
	pol.ID, pol.CreatedAt, pol.UpdatedAt = NewPolicyID(), now, now
	err := s.store.Update(ctx, func(tx Tx) error {
		if err := tx.CreatePolicy(ctx, pol); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, s.event(ctx, p, EventPolicyCreate, now, policyDetails(pol)))
	})
	if err != nil {
		return nil, err
	}
	s.reloadPolicies(ctx)
	return pol, nil
}

// UpdatePolicy replaces an API-managed rule (the id and creation time stay).
func (s *Service) UpdatePolicy(ctx context.Context, p Principal, pol *Policy) (*Policy, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	old, err := s.GetPolicy(ctx, p, pol.ID)
	if err != nil {
		return nil, err
	}
	if err := s.validatePolicy(pol); err != nil {
		return nil, err
	}
	now := s.clock()
	pol.CreatedAt, pol.UpdatedAt = old.CreatedAt, now
	err = s.store.Update(ctx, func(tx Tx) error {
		if err := tx.UpdatePolicy(ctx, pol); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, s.event(ctx, p, EventPolicyUpdate, now, policyDetails(pol)))
	})
	if err != nil {
		return nil, err
	}
	s.reloadPolicies(ctx)
	return pol, nil
}

// DeletePolicy removes an API-managed rule; decisions it made stay recorded.
func (s *Service) DeletePolicy(ctx context.Context, p Principal, id PolicyID) error {
	pol, err := s.GetPolicy(ctx, p, id)
	if err != nil {
		return err
	}
	now := s.clock()
	err = s.store.Update(ctx, func(tx Tx) error {
		if err := tx.DeletePolicy(ctx, id); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, s.event(ctx, p, EventPolicyDelete, now, policyDetails(pol)))
	})
	if err != nil {
		return err
	}
	s.reloadPolicies(ctx)
	return nil
}

// GetPolicy returns one API-managed rule.
func (s *Service) GetPolicy(ctx context.Context, p Principal, id PolicyID) (*Policy, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if !id.Valid() {
		return nil, Errorf(CodeNotFound, "policy not found")
	}
	return s.store.Policy(ctx, id)
}

// ListPolicies returns API-managed rules and, read-only, the file rules.
func (s *Service) ListPolicies(ctx context.Context, p Principal, page Page) (api []*Policy, total int, files []*Policy, err error) {
	if err := requireAdmin(p); err != nil {
		return nil, 0, nil, err
	}
	api, total, err = s.store.Policies(ctx, PolicyFilter{Page: page.Normalize()})
	if err != nil {
		return nil, 0, nil, err
	}
	if fs, ok := s.eval.(FilePolicySource); ok {
		files = fs.FilePolicies()
	}
	return api, total, files, nil
}

// RecordPolicyReload audits a policy-set reload (or its rejection).
func (s *Service) RecordPolicyReload(ctx context.Context, version string, reloadErr error) {
	typ, details := EventPolicyReload, map[string]any{"version": version}
	if reloadErr != nil {
		typ, details = EventPolicyError, map[string]any{"error": reloadErr.Error(), "activeVersion": version}
	}
	now := s.clock()
	if err := s.store.Update(ctx, func(tx Tx) error {
		return tx.AppendAudit(ctx, s.event(ctx, SystemPrincipal, typ, now, details))
	}); err != nil {
		s.log.Error("audit policy reload failed", "err", err)
	}
}
