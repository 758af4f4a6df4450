package main

import (
	"context"
	"encoding/json"
	"io"
	"sort"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
)

// admin is what the admin commands need. localAdmin works directly on the
// data directory; remoteAdmin talks to a running server's API. Both speak
// the domain's types so the commands print the same either way.
type admin interface {
	// CreateAgent and RotateAgentKey return the API key and the agent's
	// callback secret ("" when the server has no callback key), both shown once.
	CreateAgent(ctx context.Context, in agentotp.AgentInput) (*agentotp.Agent, agentotp.Secret, agentotp.Secret, error)
	ListAgents(ctx context.Context) ([]*agentotp.Agent, error)
	RotateAgentKey(ctx context.Context, id string) (*agentotp.Agent, agentotp.Secret, agentotp.Secret, error)
	SetAgentActive(ctx context.Context, id string, active bool) (*agentotp.Agent, error)
	DeleteAgent(ctx context.Context, id string) error
	CreateUser(ctx context.Context, in agentotp.UserInput) (*agentotp.User, agentotp.Secret, error)
	ListUsers(ctx context.Context) ([]*agentotp.User, error)
	RotateUserKey(ctx context.Context, id string) (*agentotp.User, agentotp.Secret, error)
	DeleteUser(ctx context.Context, id string) error
	Pending(ctx context.Context) ([]*agentotp.Permission, error)
	Permission(ctx context.Context, id string) (*agentotp.Permission, error)
	Decide(ctx context.Context, id string, in agentotp.DecideInput) (*agentotp.Permission, error)
	// RecentAudit returns up to limit events after seq afterSeq (0: the
	// newest), oldest first.
	RecentAudit(ctx context.Context, afterSeq int64, limit int) ([]*agentotp.AuditEvent, error)
	VerifyAudit(ctx context.Context) (agentotp.AuditReport, error)
	ExportAudit(ctx context.Context, w io.Writer) error
	Close() error
}

type localAdmin struct {
	app    *app
	p      agentotp.Principal
	cfg    Config
	stderr io.Writer // warnings
}

func (l *localAdmin) Close() error { return l.app.Close() }

func (l *localAdmin) CreateAgent(ctx context.Context, in agentotp.AgentInput) (*agentotp.Agent, agentotp.Secret, agentotp.Secret, error) {
	ag, key, err := l.app.svc.CreateAgent(ctx, l.p, in)
	if err != nil {
		return nil, "", "", err
	}
	return ag, key, l.callbackSecret(ag), nil
}

func (l *localAdmin) ListAgents(ctx context.Context) ([]*agentotp.Agent, error) {
	return allPages(func(p agentotp.Page) ([]*agentotp.Agent, int, error) { return l.app.svc.ListAgents(ctx, l.p, p) })
}

func (l *localAdmin) RotateAgentKey(ctx context.Context, id string) (*agentotp.Agent, agentotp.Secret, agentotp.Secret, error) {
	ag, key, err := l.app.svc.RotateAgentKey(ctx, l.p, agentotp.AgentID(id))
	if err != nil {
		return nil, "", "", err
	}
	return ag, key, l.callbackSecret(ag), nil
}

func (l *localAdmin) SetAgentActive(ctx context.Context, id string, active bool) (*agentotp.Agent, error) {
	return l.app.svc.UpdateAgent(ctx, l.p, agentotp.AgentID(id), agentotp.AgentPatch{Active: &active})
}

func (l *localAdmin) DeleteAgent(ctx context.Context, id string) error {
	return l.app.svc.DeleteAgent(ctx, l.p, agentotp.AgentID(id))
}

func (l *localAdmin) CreateUser(ctx context.Context, in agentotp.UserInput) (*agentotp.User, agentotp.Secret, error) {
	return l.app.svc.CreateUser(ctx, l.p, in)
}

func (l *localAdmin) ListUsers(ctx context.Context) ([]*agentotp.User, error) {
	return allPages(func(p agentotp.Page) ([]*agentotp.User, int, error) { return l.app.svc.ListUsers(ctx, l.p, p) })
}

func (l *localAdmin) RotateUserKey(ctx context.Context, id string) (*agentotp.User, agentotp.Secret, error) {
	return l.app.svc.RotateUserKey(ctx, l.p, agentotp.UserID(id))
}

func (l *localAdmin) DeleteUser(ctx context.Context, id string) error {
	return l.app.svc.DeleteUser(ctx, l.p, agentotp.UserID(id))
}

func (l *localAdmin) Pending(ctx context.Context) ([]*agentotp.Permission, error) {
	return allPages(func(p agentotp.Page) ([]*agentotp.Permission, int, error) {
		return l.app.svc.ListPermissions(ctx, l.p, agentotp.PermissionFilter{Status: agentotp.StatusPending, Page: p})
	})
}

func (l *localAdmin) Permission(ctx context.Context, id string) (*agentotp.Permission, error) {
	p, _, err := l.app.svc.GetPermission(ctx, l.p, agentotp.PermissionID(id), 0)
	return p, err
}

func (l *localAdmin) Decide(ctx context.Context, id string, in agentotp.DecideInput) (*agentotp.Permission, error) {
	return l.app.svc.Decide(ctx, l.p, agentotp.PermissionID(id), in)
}

func (l *localAdmin) RecentAudit(ctx context.Context, afterSeq int64, limit int) ([]*agentotp.AuditEvent, error) {
	if afterSeq > 0 {
		return l.app.svc.ListAudit(ctx, l.p, agentotp.AuditFilter{AfterSeq: afterSeq, Ascending: true, Limit: limit})
	}
	events, err := l.app.svc.ListAudit(ctx, l.p, agentotp.AuditFilter{Limit: limit})
	reverse(events)
	return events, err
}

func (l *localAdmin) VerifyAudit(ctx context.Context) (agentotp.AuditReport, error) {
	return l.app.svc.VerifyAudit(ctx, l.p)
}

func (l *localAdmin) ExportAudit(ctx context.Context, w io.Writer) error {
	enc := json.NewEncoder(w)
	return l.app.svc.ScanAudit(ctx, l.p, func(e *agentotp.AuditEvent) error { return enc.Encode(httpapi.AuditView(e)) })
}

// allPages collects a paged list (the CLI prints everything).
func allPages[T any](page func(agentotp.Page) ([]T, int, error)) ([]T, error) {
	var out []T
	for p := (agentotp.Page{Page: 1, Limit: 100}); ; p.Page++ {
		items, total, err := page(p)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if len(items) == 0 || p.Page*p.Limit >= total {
			return out, nil
		}
	}
}

func reverse[T any](s []T) {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
}

// remoteAdmin is the same over HTTP, with the Go client.
type remoteAdmin struct{ c *otpclient.Admin }

func (r *remoteAdmin) Close() error { return nil }

func fromAgent(a *otpclient.Agent) *agentotp.Agent {
	return &agentotp.Agent{ID: agentotp.AgentID(a.ID), Name: a.Name, Description: a.Description, Metadata: a.Metadata,
		Active: a.IsActive, KeyPrefix: a.APIKeyPrefix, CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt}
}

func fromUser(u *otpclient.User) *agentotp.User {
	return &agentotp.User{ID: agentotp.UserID(u.ID), Name: u.Name, Role: agentotp.Role(u.Role), TelegramID: u.TelegramID,
		Active: u.IsActive, KeyPrefix: u.APIKeyPrefix, CreatedAt: u.CreatedAt, UpdatedAt: u.UpdatedAt}
}

func fromEvent(e otpclient.AuditEvent) *agentotp.AuditEvent {
	d, _ := json.Marshal(e.Details)
	return &agentotp.AuditEvent{Seq: e.Seq, ID: agentotp.EventID(e.ID), Time: e.CreatedAt, Type: agentotp.EventType(e.EventType),
		ActorType: e.ActorType, ActorID: e.ActorID, AgentID: agentotp.AgentID(e.AgentID),
		PermissionID: agentotp.PermissionID(e.PermissionRequestID), RequestID: e.RequestID, Details: e.Details,
		DetailsJSON: d, PrevHash: e.PrevHash, Hash: e.Hash}
}

func (r *remoteAdmin) CreateAgent(ctx context.Context, in agentotp.AgentInput) (*agentotp.Agent, agentotp.Secret, agentotp.Secret, error) {
	a, err := r.c.CreateAgent(ctx, otpclient.AgentInput{Name: in.Name, Description: in.Description, Metadata: in.Metadata})
	if err != nil {
		return nil, "", "", err
	}
	return fromAgent(a), a.Key(), a.CallbackKey(), nil
}

func (r *remoteAdmin) ListAgents(ctx context.Context) ([]*agentotp.Agent, error) {
	return allPages(func(p agentotp.Page) ([]*agentotp.Agent, int, error) {
		list, info, err := r.c.ListAgents(ctx, otpclient.ListOptions{Page: p.Page, Limit: p.Limit})
		out := make([]*agentotp.Agent, 0, len(list))
		for i := range list {
			out = append(out, fromAgent(&list[i]))
		}
		return out, info.Total, err
	})
}

func (r *remoteAdmin) RotateAgentKey(ctx context.Context, id string) (*agentotp.Agent, agentotp.Secret, agentotp.Secret, error) {
	a, err := r.c.RotateAgentKey(ctx, id)
	if err != nil {
		return nil, "", "", err
	}
	return fromAgent(a), a.Key(), a.CallbackKey(), nil
}

func (r *remoteAdmin) SetAgentActive(ctx context.Context, id string, active bool) (*agentotp.Agent, error) {
	a, err := r.c.UpdateAgent(ctx, id, otpclient.AgentPatch{IsActive: &active})
	if err != nil {
		return nil, err
	}
	return fromAgent(a), nil
}

func (r *remoteAdmin) DeleteAgent(ctx context.Context, id string) error {
	return r.c.DeleteAgent(ctx, id)
}

func (r *remoteAdmin) CreateUser(ctx context.Context, in agentotp.UserInput) (*agentotp.User, agentotp.Secret, error) {
	u, err := r.c.CreateUser(ctx, otpclient.UserInput{Name: in.Name, Role: string(in.Role), TelegramID: in.TelegramID})
	if err != nil {
		return nil, "", err
	}
	return fromUser(u), u.Key(), nil
}

func (r *remoteAdmin) ListUsers(ctx context.Context) ([]*agentotp.User, error) {
	return allPages(func(p agentotp.Page) ([]*agentotp.User, int, error) {
		list, info, err := r.c.ListUsers(ctx, otpclient.ListOptions{Page: p.Page, Limit: p.Limit})
		out := make([]*agentotp.User, 0, len(list))
		for i := range list {
			out = append(out, fromUser(&list[i]))
		}
		return out, info.Total, err
	})
}

func (r *remoteAdmin) RotateUserKey(ctx context.Context, id string) (*agentotp.User, agentotp.Secret, error) {
	u, err := r.c.RotateUserKey(ctx, id)
	if err != nil {
		return nil, "", err
	}
	return fromUser(u), u.Key(), nil
}

func (r *remoteAdmin) DeleteUser(ctx context.Context, id string) error {
	return r.c.DeleteUser(ctx, id)
}

func (r *remoteAdmin) Pending(ctx context.Context) ([]*agentotp.Permission, error) {
	return allPages(func(p agentotp.Page) ([]*agentotp.Permission, int, error) {
		list, info, err := r.c.Approvals(ctx, agentotp.StatusPending, otpclient.ListOptions{Page: p.Page, Limit: p.Limit})
		out := make([]*agentotp.Permission, 0, len(list))
		for _, perm := range list {
			out = append(out, perm.Domain())
		}
		return out, info.Total, err
	})
}

func (r *remoteAdmin) Permission(ctx context.Context, id string) (*agentotp.Permission, error) {
	p, err := r.c.GetPermission(ctx, id)
	if err != nil {
		return nil, err
	}
	return p.Domain(), nil
}

func (r *remoteAdmin) Decide(ctx context.Context, id string, in agentotp.DecideInput) (*agentotp.Permission, error) {
	perm, err := r.c.Decide(ctx, id, otpclient.Decision{Approved: in.Approved, Reason: in.Reason, ScopeModifications: in.ScopeModifications})
	if err != nil {
		return nil, err
	}
	return perm.Domain(), nil
}

func (r *remoteAdmin) RecentAudit(ctx context.Context, afterSeq int64, limit int) ([]*agentotp.AuditEvent, error) {
	// The API lists newest first: walk back until afterSeq is reached.
	var out []*agentotp.AuditEvent
	q := otpclient.AuditQuery{Limit: min(limit, 1000)}
	for {
		page, err := r.c.Audit(ctx, q)
		if err != nil {
			return nil, err
		}
		for _, e := range page.Events {
			if e.Seq <= afterSeq || (afterSeq == 0 && len(out) >= limit) {
				sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
				return out, nil
			}
			out = append(out, fromEvent(e))
		}
		if !page.HasMore || afterSeq == 0 {
			sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
			return out, nil
		}
		q.Cursor = page.NextCursor
	}
}

func (r *remoteAdmin) VerifyAudit(ctx context.Context) (agentotp.AuditReport, error) {
	rep, err := r.c.VerifyAudit(ctx)
	if err != nil {
		return agentotp.AuditReport{}, err
	}
	return agentotp.AuditReport{OK: rep.OK, Checked: rep.Checked, LastSeq: rep.LastSeq, LastHash: rep.LastHash,
		BadSeq: rep.BadSeq, Reason: rep.Reason}, nil
}

func (r *remoteAdmin) ExportAudit(ctx context.Context, w io.Writer) error {
	return r.c.ExportAuditTo(ctx, w)
}
