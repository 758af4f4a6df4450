package web

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentotp/agentotp"
)

// Audit page sizes. Filtering by action reads the permissions behind the
// events, so one page scans a bounded number of events and offers to go
// on from where it stopped.
const (
	auditPerPage = 50
	auditScanMax = 2000
	auditBatch   = 200
)

type auditPage struct {
	base
	Filter    auditFilter
	Types     []agentotp.EventType
	Rows      []auditRow
	OlderURL  string
	NewestURL string
	// Scanned is set when the action filter stopped after auditScanMax
	// events without filling the page.
	Scanned int
	Chain   chainStatus
}

type auditFilter struct {
	Agent, Action, Type, From, To, Permission string
}

type auditRow struct {
	Seq           int64
	At, AtMachine string
	Type          agentotp.EventType
	Actor         string
	Agent         string
	PermissionURL string
	Permission    agentotp.PermissionID
	Details       string
}

// chainStatus is the last verification of the audit chain.
type chainStatus struct {
	Checked bool
	OK      bool
	Events  int64
	BadSeq  int64
	Reason  string
	At, Ago string
	// Running is set while a verification runs in the background.
	Running bool
}

// verifyCache keeps the last verification. It reads the whole trail, so it
// runs in the background, at most one at a time, and pages show its latest
// result: a long trail never holds up a page.
type verifyCache struct {
	mu      sync.Mutex
	report  agentotp.AuditReport
	err     error
	at      time.Time
	running chan struct{} // closed when the running verification ends
}

// Verification timing: a result stands for verifyMaxAge; a page waits up
// to verifyWait for a run it started, which covers small trails.
const (
	verifyMaxAge  = 5 * time.Minute
	verifyWait    = 2 * time.Second
	verifyTimeout = 5 * time.Minute
)

// chain returns the chain's verification status, starting a new run when
// the last is older than verifyMaxAge or force is set.
func (c *Console) chain(ctx context.Context, p agentotp.Principal, force bool) chainStatus {
	c.verify.mu.Lock()
	now := c.svc.Now()
	if c.verify.running == nil && (force || c.verify.at.IsZero() || now.Sub(c.verify.at) > verifyMaxAge) {
		done := make(chan struct{})
		c.verify.running = done
		go func() {
			vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), verifyTimeout)
			defer cancel()
			rep, err := c.svc.VerifyAudit(vctx, p)
			if err != nil {
				c.log.Error("audit verification from the console failed", "err", err)
			}
			c.verify.mu.Lock()
			c.verify.report, c.verify.err, c.verify.at, c.verify.running = rep, err, c.svc.Now(), nil
			c.verify.mu.Unlock()
			close(done)
		}()
	}
	running := c.verify.running
	c.verify.mu.Unlock()
	if running != nil {
		select {
		case <-running:
		case <-time.After(verifyWait):
		case <-ctx.Done():
		}
	}

	c.verify.mu.Lock()
	defer c.verify.mu.Unlock()
	st := chainStatus{Running: c.verify.running != nil}
	if c.verify.at.IsZero() {
		return st
	}
	rep := c.verify.report
	st.Checked, st.OK, st.Events, st.BadSeq, st.Reason = true, rep.OK, rep.Checked, rep.BadSeq, rep.Reason
	if c.verify.err != nil {
		st.OK, st.Reason = false, "the verification could not finish: "+sentence(c.verify.err)
	}
	st.At, st.Ago = stamp(c.verify.at), ago(c.svc.Now(), c.verify.at)
	return st
}

func (c *Console) audit(w http.ResponseWriter, r *http.Request, s *signedIn) {
	q := r.URL.Query()
	ctx, cancel := withTimeout(r)
	defer cancel()
	v := &auditPage{base: c.base(s, "Audit trail", "audit"), Types: agentotp.EventTypes}
	v.Filter = auditFilter{Agent: strings.TrimSpace(q.Get("agent")), Action: strings.TrimSpace(q.Get("action")),
		Type: q.Get("type"), From: q.Get("from"), To: q.Get("to"), Permission: strings.TrimSpace(q.Get("permission"))}
	v.Chain = c.chain(ctx, s.p, q.Get("verify") == "1")

	f, err := c.auditQuery(ctx, v.Filter)
	if err != nil {
		v.Error = sentence(err)
		c.render(w, r, http.StatusUnprocessableEntity, "audit", v)
		return
	}
	if before, err := strconv.ParseInt(q.Get("before"), 10, 64); err == nil && before > 0 {
		f.BeforeSeq = before
		v.NewestURL = auditURL(v.Filter, 0)
	}
	events, cursor, scanned, err := c.auditEvents(ctx, s.p, f, v.Filter.Action)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	if cursor > 0 {
		v.OlderURL = auditURL(v.Filter, cursor)
		if len(events) < auditPerPage {
			v.Scanned = scanned
		}
	}
	agents, users := agentNames{}, userNames{}
	for _, e := range events {
		row := auditRow{Seq: e.Seq, At: stamp(e.Time), AtMachine: machine(e.Time), Type: e.Type,
			Permission: e.PermissionID, Details: clip(string(e.DetailsJSON), 600)}
		switch e.ActorType {
		case "user":
			row.Actor = "user " + users.get(ctx, c.svc, agentotp.UserID(e.ActorID))
		case "agent":
			row.Actor = "agent " + agents.get(ctx, c.svc, agentotp.AgentID(e.ActorID))
		default:
			row.Actor = strings.TrimSpace(e.ActorType + " " + e.ActorID)
		}
		if e.AgentID != "" {
			row.Agent = agents.get(ctx, c.svc, e.AgentID)
		}
		if e.PermissionID != "" {
			row.PermissionURL = "/ui/requests/" + string(e.PermissionID)
		}
		v.Rows = append(v.Rows, row)
	}
	c.render(w, r, http.StatusOK, "audit", v)
}

// auditQuery turns the form into a filter; the action is applied apart.
func (c *Console) auditQuery(ctx context.Context, in auditFilter) (agentotp.AuditFilter, error) {
	var f agentotp.AuditFilter
	if in.Agent != "" {
		id, err := c.findAgent(ctx, in.Agent)
		if err != nil {
			return f, err
		}
		f.AgentID = id
	}
	if in.Permission != "" {
		if !agentotp.PermissionID(in.Permission).Valid() {
			return f, agentotp.ValidationError("request", "is not a request id (perm_…)")
		}
		f.PermissionID = agentotp.PermissionID(in.Permission)
	}
	if in.Type != "" {
		f.Type = agentotp.EventType(in.Type)
		if !f.Type.Valid() {
			return f, agentotp.ValidationError("type", "is not an event type")
		}
	}
	for _, x := range []struct {
		name, value string
		dst         *time.Time
	}{{"from", in.From, &f.Start}, {"to", in.To, &f.End}} {
		if x.value == "" {
			continue
		}
		t, err := parseWhen(x.value)
		if err != nil {
			return f, agentotp.ValidationError(x.name, "must be a date and time such as 2026-05-01T09:30 (UTC)")
		}
		*x.dst = t
	}
	return f, nil
}

// parseWhen reads a datetime-local value (or a date), taken as UTC.
func parseWhen(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("bad time")
}

// maxAgentScan bounds the agents read to resolve a name.
const maxAgentScan = 10_000

// findAgent resolves an agent given by id or by name.
func (c *Console) findAgent(ctx context.Context, s string) (agentotp.AgentID, error) {
	if id := agentotp.AgentID(s); id.Valid() {
		return id, nil
	}
	for page := 1; page <= maxAgentScan/100; page++ {
		list, total, err := c.svc.Store().Agents(ctx, agentotp.Page{Page: page, Limit: 100})
		if err != nil {
			return "", err
		}
		for _, a := range list {
			if a.Name == s {
				return a.ID, nil
			}
		}
		if page*100 >= total {
			break
		}
	}
	return "", agentotp.ValidationError("agent", "names no agent")
}

// auditEvents reads one page of events, newest first, keeping those of
// requests for action (exact, or a prefix ending in "*") when it is set.
// cursor is where the next page starts, 0 when there is none.
func (c *Console) auditEvents(ctx context.Context, p agentotp.Principal, f agentotp.AuditFilter, action string) (events []*agentotp.AuditEvent, cursor int64, scanned int, err error) {
	if action == "" {
		f.Limit = auditPerPage
		list, err := c.svc.ListAudit(ctx, p, f)
		if err != nil || len(list) < auditPerPage {
			return list, 0, len(list), err
		}
		return list, list[len(list)-1].Seq, len(list), nil
	}
	actions := map[agentotp.PermissionID]string{}
	f.Limit = auditBatch
	for scanned < auditScanMax {
		list, err := c.svc.ListAudit(ctx, p, f)
		if err != nil {
			return nil, 0, 0, err
		}
		for _, e := range list {
			scanned++
			f.BeforeSeq = e.Seq
			if matchAction(action, c.eventAction(ctx, e, actions)) {
				events = append(events, e)
				if len(events) == auditPerPage {
					return events, e.Seq, scanned, nil
				}
			}
		}
		if len(list) < auditBatch {
			return events, 0, scanned, nil
		}
	}
	return events, f.BeforeSeq, scanned, nil
}

// eventAction is the action of the request an event belongs to: from the
// permission, or from the request event itself once the permission was
// pruned.
func (c *Console) eventAction(ctx context.Context, e *agentotp.AuditEvent, cache map[agentotp.PermissionID]string) string {
	if e.PermissionID == "" {
		return ""
	}
	if a, ok := cache[e.PermissionID]; ok {
		return a
	}
	var a string
	if perm, err := c.svc.Store().Permission(ctx, e.PermissionID); err == nil {
		a = perm.Action
	} else if e.Type == agentotp.EventRequest {
		a, _ = e.Details["action"].(string)
	}
	cache[e.PermissionID] = a
	return a
}

func matchAction(pattern, action string) bool {
	if action == "" {
		return false
	}
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(action, prefix)
	}
	return action == pattern
}

func auditURL(f auditFilter, before int64) string {
	q := url.Values{}
	for k, v := range map[string]string{"agent": f.Agent, "action": f.Action, "type": f.Type, "from": f.From, "to": f.To, "permission": f.Permission} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if before > 0 {
		q.Set("before", strconv.FormatInt(before, 10))
	}
	if len(q) == 0 {
		return "/ui/audit"
	}
	return "/ui/audit?" + q.Encode()
}
