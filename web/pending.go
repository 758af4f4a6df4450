package web

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"

	"github.com/agentotp/agentotp"
)

// pendingPerPage is the length of a page of the pending list: a queue of a
// thousand still renders one short page.
const pendingPerPage = 25

type pendingPage struct {
	base
	Rows              []pendingRow
	Total             int
	Page, Pages       int
	PrevURL, NextURL  string
	FirstRow, LastRow int
}

type pendingRow struct {
	URL         string
	ID          agentotp.PermissionID
	Agent       string
	Action      string
	Resource    string
	Reason      string
	Expires     string
	ExpiresAt   string
	ExpiresWhen string
	Asked       string
	AskedAt     string
}

func (c *Console) pending(w http.ResponseWriter, r *http.Request, s *signedIn) {
	n := pageParam(r.URL.Query())
	ctx, cancel := withTimeout(r)
	defer cancel()
	list, total, err := c.svc.ListPermissions(ctx, s.p, agentotp.PermissionFilter{
		Status: agentotp.StatusPending, Page: agentotp.Page{Page: n, Limit: pendingPerPage},
	})
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	now := c.svc.Now()
	names := agentNames{}
	v := &pendingPage{base: c.base(s, "Pending requests", "pending"), Total: total, Page: n,
		Pages: max(1, (total+pendingPerPage-1)/pendingPerPage)}
	v.Live = "pending"
	for _, p := range list {
		v.Rows = append(v.Rows, pendingRow{
			URL: "/ui/requests/" + string(p.ID), ID: p.ID,
			Agent:  names.get(ctx, c.svc, p.AgentID),
			Action: clip(p.Action, 80), Resource: clip(p.Resource, 120), Reason: clip(agentReason(p), 160),
			Expires: until(now, p.ApprovalExpiresAt), ExpiresAt: stamp(p.ApprovalExpiresAt), ExpiresWhen: machine(p.ApprovalExpiresAt),
			Asked: ago(now, p.CreatedAt), AskedAt: stamp(p.CreatedAt),
		})
	}
	if len(v.Rows) > 0 {
		v.FirstRow = (n-1)*pendingPerPage + 1
		v.LastRow = v.FirstRow + len(v.Rows) - 1
	}
	if n > 1 {
		v.PrevURL = pageURL("/ui/", n-1)
	}
	if n < v.Pages {
		v.NextURL = pageURL("/ui/", n+1)
	}
	c.render(w, r, http.StatusOK, "pending", v)
}

// maxPage bounds page numbers, so an offset cannot overflow.
const maxPage = 1_000_000

func pageParam(q url.Values) int {
	n, err := strconv.Atoi(q.Get("page"))
	if err != nil || n < 1 {
		return 1
	}
	return min(n, maxPage)
}

func pageURL(path string, n int) string {
	if n <= 1 {
		return path
	}
	return path + "?page=" + strconv.Itoa(n)
}

// agentNames resolves agent ids to names for one page, reading each once.
type agentNames map[agentotp.AgentID]string

func (a agentNames) get(ctx context.Context, svc *agentotp.Service, id agentotp.AgentID) string {
	if id == "" {
		return "(deleted agent)"
	}
	if name, ok := a[id]; ok {
		return name
	}
	name := string(id)
	ag, err := svc.Store().Agent(ctx, id)
	switch {
	case err == nil:
		name = ag.Name
	case errors.Is(err, agentotp.ErrNotFound):
		name = string(id) + " (deleted)"
	}
	a[id] = name
	return name
}

// agentReason is the reason the agent gave (its context's "reason"): its
// own claim, labelled as such wherever it is shown.
func agentReason(p *agentotp.Permission) string {
	s, _ := p.Context["reason"].(string)
	return s
}
