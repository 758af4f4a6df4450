package agentotp

import (
	"context"
	"errors"
	"strings"
	"time"
)

func requireAdmin(p Principal) error {
	if p.Role() != RoleAdmin {
		return errAdminOnly
	}
	return nil
}

func validName(field, s string) error {
	if s == "" || len(s) > MaxNameLen || !validText(s) {
		return ValidationError(field, "must be 1-255 bytes of printable text")
	}
	return nil
}

// validPrincipalName also refuses names shaped like ids: policies name
// agents and approvers by name or id, so an agent called "agt_…" could
// otherwise inherit another agent's rules.
func validPrincipalName(s string) error {
	if err := validName("name", s); err != nil {
		return err
	}
	for _, prefix := range []string{AgentIDPrefix, UserIDPrefix, PolicyIDPrefix, PermissionIDPrefix, EventIDPrefix} {
		if strings.HasPrefix(s, prefix) {
			return ValidationError("name", "must not start with an id prefix such as "+prefix)
		}
	}
	return nil
}

func validDescription(s string) error {
	if len(s) > MaxDescriptionLen || !validText(s) {
		return ValidationError("description", "must be at most 1000 bytes of printable text")
	}
	return nil
}

// AgentInput creates an agent.
type AgentInput struct {
	Name        string
	Description string
	Metadata    map[string]any
}

// AgentPatch changes an agent; nil fields stay as they are.
type AgentPatch struct {
	Name        *string
	Description *string
	Metadata    map[string]any
	Active      *bool
}

// CreateAgent registers an agent and returns its API key, shown only now.
func (s *Service) CreateAgent(ctx context.Context, p Principal, in AgentInput) (*Agent, Secret, error) {
	if err := requireAdmin(p); err != nil {
		return nil, "", err
	}
	if err := validPrincipalName(in.Name); err != nil {
		return nil, "", err
	}
	if err := validDescription(in.Description); err != nil {
		return nil, "", err
	}
	if in.Metadata == nil {
		in.Metadata = map[string]any{}
	}
	if err := ValidateObject("metadata", in.Metadata); err != nil {
		return nil, "", err
	}
	now := s.clock()
	key := NewAgentKey()
	a := &Agent{ID: NewAgentID(), Name: in.Name, Description: in.Description, Metadata: in.Metadata, Active: true,
		KeyHash: key.Hash(), KeyPrefix: keyPrefix(key), CreatedAt: now, UpdatedAt: now}
	err := s.store.Update(ctx, func(tx Tx) error {
		if err := tx.CreateAgent(ctx, a); err != nil {
			return err
		}
		e := s.event(ctx, p, EventAgentCreate, now, map[string]any{"name": a.Name, "description": a.Description})
		e.AgentID = a.ID
		return tx.AppendAudit(ctx, e)
	})
	if err != nil {
		return nil, "", err
	}
	return a, key, nil
}

// GetAgent returns one agent.
func (s *Service) GetAgent(ctx context.Context, p Principal, id AgentID) (*Agent, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if !id.Valid() {
		return nil, Errorf(CodeNotFound, "agent not found")
	}
	return s.store.Agent(ctx, id)
}

// ListAgents returns a page of agents and the total.
func (s *Service) ListAgents(ctx context.Context, p Principal, page Page) ([]*Agent, int, error) {
	if err := requireAdmin(p); err != nil {
		return nil, 0, err
	}
	return s.store.Agents(ctx, page.Normalize())
}

// UpdateAgent applies patch; disabling an agent locks its key out at once.
func (s *Service) UpdateAgent(ctx context.Context, p Principal, id AgentID, patch AgentPatch) (*Agent, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	changes := map[string]any{}
	if patch.Name != nil {
		if err := validPrincipalName(*patch.Name); err != nil {
			return nil, err
		}
		changes["name"] = *patch.Name
	}
	if patch.Description != nil {
		if err := validDescription(*patch.Description); err != nil {
			return nil, err
		}
		changes["description"] = *patch.Description
	}
	if patch.Metadata != nil {
		if err := ValidateObject("metadata", patch.Metadata); err != nil {
			return nil, err
		}
		changes["metadata"] = patch.Metadata
	}
	if patch.Active != nil {
		changes["isActive"] = *patch.Active
	}
	return s.changeAgent(ctx, p, id, EventAgentUpdate, changes, func(a *Agent) {
		if patch.Name != nil {
			a.Name = *patch.Name
		}
		if patch.Description != nil {
			a.Description = *patch.Description
		}
		if patch.Metadata != nil {
			a.Metadata = patch.Metadata
		}
		if patch.Active != nil {
			a.Active = *patch.Active
		}
	})
}

// RotateAgentKey replaces an agent's key; the old one stops working at once
// on this Service, and within a second on others sharing the store.
func (s *Service) RotateAgentKey(ctx context.Context, p Principal, id AgentID) (*Agent, Secret, error) {
	if err := requireAdmin(p); err != nil {
		return nil, "", err
	}
	key := NewAgentKey()
	a, err := s.changeAgent(ctx, p, id, EventAgentUpdate, map[string]any{"action": "api_key_rotation"}, func(a *Agent) {
		a.KeyHash, a.KeyPrefix = key.Hash(), keyPrefix(key)
	})
	if err != nil {
		return nil, "", err
	}
	return a, key, nil
}

func (s *Service) changeAgent(ctx context.Context, p Principal, id AgentID, typ EventType, details map[string]any, apply func(*Agent)) (*Agent, error) {
	if !id.Valid() {
		return nil, Errorf(CodeNotFound, "agent not found")
	}
	now := s.clock()
	var out *Agent
	err := s.store.Update(ctx, func(tx Tx) error {
		a, err := tx.Agent(ctx, id)
		if err != nil {
			return err
		}
		apply(a)
		a.UpdatedAt = now
		if err := tx.UpdateAgent(ctx, a); err != nil {
			return err
		}
		out = a
		e := s.event(ctx, p, typ, now, details)
		e.AgentID = id
		return tx.AppendAudit(ctx, e)
	})
	s.keys.invalidate()
	return out, err
}

// DeleteAgent removes an agent; its permissions and audit stay.
func (s *Service) DeleteAgent(ctx context.Context, p Principal, id AgentID) error {
	if err := requireAdmin(p); err != nil {
		return err
	}
	a, err := s.GetAgent(ctx, p, id)
	if err != nil {
		return err
	}
	now := s.clock()
	defer s.keys.invalidate()
	return s.store.Update(ctx, func(tx Tx) error {
		if err := tx.DeleteAgent(ctx, id); err != nil {
			return err
		}
		e := s.event(ctx, p, EventAgentDelete, now, map[string]any{"name": a.Name})
		e.AgentID = id
		return tx.AppendAudit(ctx, e)
	})
}

// UserInput creates a user.
type UserInput struct {
	Name       string
	Role       Role
	TelegramID int64
}

// UserPatch changes a user; nil fields stay.
type UserPatch struct {
	Name       *string
	Role       *Role
	TelegramID *int64
	Active     *bool
}

func validUser(name *string, role *Role, tg *int64) error {
	if name != nil {
		if err := validPrincipalName(*name); err != nil {
			return err
		}
	}
	if role != nil && !role.Valid() {
		return ValidationError("role", "must be admin or approver")
	}
	if tg != nil && *tg < 0 {
		return ValidationError("telegramId", "must be a positive Telegram user id")
	}
	return nil
}

// CreateUser adds a human and returns their key, shown only now.
func (s *Service) CreateUser(ctx context.Context, p Principal, in UserInput) (*User, Secret, error) {
	if err := requireAdmin(p); err != nil {
		return nil, "", err
	}
	if err := validUser(&in.Name, &in.Role, &in.TelegramID); err != nil {
		return nil, "", err
	}
	key := NewUserKey()
	now := s.clock()
	u := &User{ID: NewUserID(), Name: in.Name, Role: in.Role, TelegramID: in.TelegramID, Active: true,
		KeyHash: key.Hash(), KeyPrefix: keyPrefix(key), CreatedAt: now, UpdatedAt: now}
	err := s.store.Update(ctx, func(tx Tx) error {
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, s.event(ctx, p, EventUserCreate, now, map[string]any{
			"userId": string(u.ID), "name": u.Name, "role": string(u.Role), "telegramId": u.TelegramID,
		}))
	})
	if err != nil {
		return nil, "", err
	}
	return u, key, nil
}

// GetUser returns one user.
func (s *Service) GetUser(ctx context.Context, p Principal, id UserID) (*User, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if !id.Valid() {
		return nil, Errorf(CodeNotFound, "user not found")
	}
	return s.store.User(ctx, id)
}

// ListUsers returns a page of users and the total.
func (s *Service) ListUsers(ctx context.Context, p Principal, page Page) ([]*User, int, error) {
	if err := requireAdmin(p); err != nil {
		return nil, 0, err
	}
	return s.store.Users(ctx, page.Normalize())
}

// UpdateUser applies patch.
func (s *Service) UpdateUser(ctx context.Context, p Principal, id UserID, patch UserPatch) (*User, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if err := validUser(patch.Name, patch.Role, patch.TelegramID); err != nil {
		return nil, err
	}
	changes := map[string]any{"userId": string(id)}
	if patch.Name != nil {
		changes["name"] = *patch.Name
	}
	if patch.Role != nil {
		changes["role"] = string(*patch.Role)
	}
	if patch.TelegramID != nil {
		changes["telegramId"] = *patch.TelegramID
	}
	if patch.Active != nil {
		changes["isActive"] = *patch.Active
	}
	return s.changeUser(ctx, p, id, changes, func(u *User) {
		if patch.Name != nil {
			u.Name = *patch.Name
		}
		if patch.Role != nil {
			u.Role = *patch.Role
		}
		if patch.TelegramID != nil {
			u.TelegramID = *patch.TelegramID
		}
		if patch.Active != nil {
			u.Active = *patch.Active
		}
	})
}

// RotateUserKey replaces a user's key.
func (s *Service) RotateUserKey(ctx context.Context, p Principal, id UserID) (*User, Secret, error) {
	if err := requireAdmin(p); err != nil {
		return nil, "", err
	}
	key := NewUserKey()
	u, err := s.changeUser(ctx, p, id, map[string]any{"userId": string(id), "action": "api_key_rotation"}, func(u *User) {
		u.KeyHash, u.KeyPrefix = key.Hash(), keyPrefix(key)
	})
	if err != nil {
		return nil, "", err
	}
	return u, key, nil
}

func (s *Service) changeUser(ctx context.Context, p Principal, id UserID, details map[string]any, apply func(*User)) (*User, error) {
	if !id.Valid() {
		return nil, Errorf(CodeNotFound, "user not found")
	}
	now := s.clock()
	var out *User
	err := s.store.Update(ctx, func(tx Tx) error {
		u, err := tx.User(ctx, id)
		if err != nil {
			return err
		}
		apply(u)
		u.UpdatedAt = now
		if err := tx.UpdateUser(ctx, u); err != nil {
			return err
		}
		out = u
		return tx.AppendAudit(ctx, s.event(ctx, p, EventUserUpdate, now, details))
	})
	s.keys.invalidate()
	return out, err
}

// DeleteUser removes a user; decisions they made stay in the history.
func (s *Service) DeleteUser(ctx context.Context, p Principal, id UserID) error {
	u, err := s.GetUser(ctx, p, id)
	if err != nil {
		return err
	}
	if p.User != nil && p.User.ID == id {
		return Errorf(CodeConflict, "you cannot delete yourself")
	}
	now := s.clock()
	defer s.keys.invalidate()
	return s.store.Update(ctx, func(tx Tx) error {
		if err := tx.DeleteUser(ctx, id); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, s.event(ctx, p, EventUserDelete, now, map[string]any{"userId": string(id), "name": u.Name}))
	})
}

// BootstrapAdminName is the user that AGENTOTP_ADMIN_KEY signs in as.
const BootstrapAdminName = "admin"

// EnsureAdmin creates the bootstrap admin user with key in a store that has
// never had a user, and reports whether it did. Afterwards it changes
// nothing: the key no longer matching (rotated, the user disabled or
// deleted by an admin) is the admins' decision to keep.
func (s *Service) EnsureAdmin(ctx context.Context, key Secret) (bool, error) {
	if !ValidKeyFormat(key.Reveal()) || key.Reveal()[:3] != UserKeyPrefix {
		return false, ValidationError("AGENTOTP_ADMIN_KEY", "must be a uk_ key of 32 base64url characters")
	}
	// Only a store that never had a user gets one: once an admin has
	// rotated, disabled or deleted the bootstrap admin, a key from the
	// environment or the key file must not undo it.
	if _, total, err := s.store.Users(ctx, Page{Page: 1, Limit: 1}); err != nil || total > 0 {
		return false, err
	}
	if ever, err := s.store.AuditEvents(ctx, AuditFilter{Type: EventUserCreate, Limit: 1}); err != nil || len(ever) > 0 {
		return false, err
	}
	now := s.clock()
	created := false
	err := s.store.Update(ctx, func(tx Tx) error {
		if _, err := tx.UserByName(ctx, BootstrapAdminName); err == nil || !errors.Is(err, ErrNotFound) {
			return err // another process bootstrapped first
		}
		u := &User{ID: NewUserID(), Name: BootstrapAdminName, Role: RoleAdmin, Active: true,
			KeyHash: key.Hash(), KeyPrefix: keyPrefix(key), CreatedAt: now, UpdatedAt: now}
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		created = true
		return tx.AppendAudit(ctx, s.event(ctx, SystemPrincipal, EventUserCreate, now, map[string]any{
			"userId": string(u.ID), "name": u.Name, "role": string(u.Role), "bootstrap": true,
		}))
	})
	return created, err
}

// ListPermissions lists permissions for approvers and admins (pending ones
// for the approval queue). Due permissions are shown as expired.
func (s *Service) ListPermissions(ctx context.Context, p Principal, f PermissionFilter) ([]*Permission, int, error) {
	if p.IsAgent() || !p.Role().CanDecide() {
		return nil, 0, errDecideForbidden
	}
	if f.Status != "" && !f.Status.Valid() {
		return nil, 0, ValidationError("status", "must be one of pending, approved, denied, expired, used, revoked")
	}
	f.Page = f.Page.Normalize()
	list, total, err := s.store.Permissions(ctx, f)
	if err != nil {
		return nil, 0, err
	}
	now := s.clock()
	out := make([]*Permission, 0, len(list))
	for _, perm := range list {
		eff := perm.Effective(now)
		if f.Status != "" && eff.Status != f.Status {
			total--
			continue
		}
		out = append(out, eff)
	}
	return out, total, nil
}

// Approvals lists the votes cast on a permission.
func (s *Service) Approvals(ctx context.Context, p Principal, id PermissionID) ([]Approval, error) {
	if _, err := s.load(ctx, p, id); err != nil {
		return nil, err
	}
	return s.store.Approvals(ctx, id)
}

// The range of times an audit filter may name.
var (
	minFilterTime = time.Unix(0, 0)
	maxFilterTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

// ListAudit returns audit events for admins.
func (s *Service) ListAudit(ctx context.Context, p Principal, f AuditFilter) ([]*AuditEvent, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if f.Type != "" && !f.Type.Valid() {
		return nil, ValidationError("eventType", "is not a known event type")
	}
	// Times are stored as nanoseconds since 1970: outside what that holds
	// a bound would wrap around and match the wrong events.
	for name, t := range map[string]time.Time{"startDate": f.Start, "endDate": f.End} {
		if !t.IsZero() && (t.Before(minFilterTime) || t.After(maxFilterTime)) {
			return nil, ValidationError(name, "must be between 1970 and 2200")
		}
	}
	if f.Limit <= 0 {
		f.Limit = 50
	}
	if f.Limit > 1000 {
		f.Limit = 1000
	}
	return s.store.AuditEvents(ctx, f)
}

// AuditStats counts the last 30 days of events by type.
func (s *Service) AuditStats(ctx context.Context, p Principal) (AuditStats, error) {
	if err := requireAdmin(p); err != nil {
		return AuditStats{}, err
	}
	return s.store.AuditStats(ctx, s.clock().Add(-30*24*time.Hour))
}

// ScanAudit streams every audit event, oldest first, to fn.
func (s *Service) ScanAudit(ctx context.Context, p Principal, fn func(*AuditEvent) error) error {
	if err := requireAdmin(p); err != nil {
		return err
	}
	return s.store.ScanAudit(ctx, fn)
}

// VerifyAudit runs every audit check (VerifyAuditWith without a
// checkpoint): the keyed chain, the recorded head, and each permission's
// stored state against its events.
func (s *Service) VerifyAudit(ctx context.Context, p Principal) (AuditReport, error) {
	return s.VerifyAuditWith(ctx, p, AuditVerifyOptions{})
}
