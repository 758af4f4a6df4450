package web

import (
	"net/http"

	"github.com/agentotp/agentotp"
)

// directoryPerPage is the length of a page of agents or users.
const directoryPerPage = 50

type directoryPage[T any] struct {
	base
	Rows             []T
	Total            int
	Page, Pages      int
	PrevURL, NextURL string
}

type agentRow struct {
	Name, Description string
	ID                agentotp.AgentID
	Active            bool
	KeyPrefix         string
	Created           string
	AuditURL          string
}

type userRow struct {
	Name      string
	ID        agentotp.UserID
	Role      agentotp.Role
	Active    bool
	Telegram  bool
	KeyPrefix string
	Created   string
}

func (c *Console) agents(w http.ResponseWriter, r *http.Request, s *signedIn) {
	n := pageParam(r.URL.Query())
	ctx, cancel := withTimeout(r)
	defer cancel()
	list, total, err := c.svc.ListAgents(ctx, s.p, agentotp.Page{Page: n, Limit: directoryPerPage})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	v := newDirectoryPage[agentRow](c.base(s, "Agents", "agents"), "/ui/agents", n, total)
	for _, a := range list {
		v.Rows = append(v.Rows, agentRow{Name: a.Name, Description: a.Description, ID: a.ID, Active: a.Active,
			KeyPrefix: a.KeyPrefix, Created: stamp(a.CreatedAt), AuditURL: "/ui/audit?agent=" + string(a.ID)})
	}
	c.render(w, r, http.StatusOK, "agents", v)
}

func (c *Console) users(w http.ResponseWriter, r *http.Request, s *signedIn) {
	n := pageParam(r.URL.Query())
	ctx, cancel := withTimeout(r)
	defer cancel()
	list, total, err := c.svc.ListUsers(ctx, s.p, agentotp.Page{Page: n, Limit: directoryPerPage})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	v := newDirectoryPage[userRow](c.base(s, "Users", "users"), "/ui/users", n, total)
	for _, u := range list {
		v.Rows = append(v.Rows, userRow{Name: u.Name, ID: u.ID, Role: u.Role, Active: u.Active, Telegram: u.TelegramID != 0,
			KeyPrefix: u.KeyPrefix, Created: stamp(u.CreatedAt)})
	}
	c.render(w, r, http.StatusOK, "users", v)
}

func newDirectoryPage[T any](b base, path string, n, total int) *directoryPage[T] {
	v := &directoryPage[T]{base: b, Total: total, Page: n, Pages: max(1, (total+directoryPerPage-1)/directoryPerPage)}
	if n > 1 {
		v.PrevURL = pageURL(path, n-1)
	}
	if n < v.Pages {
		v.NextURL = pageURL(path, n+1)
	}
	return v
}
