package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

type requestPage struct {
	base
	ID      agentotp.PermissionID
	Status  agentotp.Status
	Pending bool
	Agent   string
	AgentID agentotp.AgentID

	Action, ActionASCII     string
	Resource, ResourceASCII string
	Reason                  string
	Scope                   string
	Granted                 string
	// Narrowed is set when the scope to grant is not the one asked for
	// (a policy template or an earlier approver narrowed it).
	Narrowed bool
	Context  string
	Tool     *agentotp.ToolCall

	Rule, PolicyVersion, PolicyReason string
	Approvers                         string
	Quorum, Approvals                 int
	Votes                             []voteRow

	Asked, AskedAt     string
	Expires, ExpiresAt string
	ExpiresWhen        string
	TokenTTL           string
	Uses               int

	Outcome        string
	DecisionReason string
	UsesRemaining  int
	TokenExpires   string
	History        []historyRow

	// The forms: shown only while pending and only to someone who may
	// decide. Voted: this person's approval already counts toward the
	// quorum.
	CanDecide     bool
	Voted         bool
	NotApprover   string
	Editor        string
	ApproveReason string
	DenyReason    string

	AuditURL string
}

type voteRow struct {
	Name, At, Reason string
}

type historyRow struct {
	At, AtMachine, What string
}

// decisionForm is what a person sent, shown again when it was refused.
type decisionForm struct {
	scope, approveReason, denyReason string
	err                              string
}

func (c *Console) request(w http.ResponseWriter, r *http.Request, s *signedIn) {
	c.showRequest(w, r, s, http.StatusOK, nil)
}

// showRequest renders the request page, with form (a refused decision)
// filled in again and its error on top.
func (c *Console) showRequest(w http.ResponseWriter, r *http.Request, s *signedIn, status int, form *decisionForm) {
	id := agentotp.PermissionID(r.PathValue("id"))
	ctx, cancel := withTimeout(r)
	defer cancel()
	perm, _, err := c.svc.GetPermission(ctx, s.p, id, 0)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	votes, err := c.svc.Approvals(ctx, s.p, id)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	v := c.requestView(ctx, s, perm, votes)
	if form != nil {
		v.Error = form.err
		v.Editor, v.ApproveReason, v.DenyReason = form.scope, form.approveReason, form.denyReason
	}
	c.render(w, r, status, "request", v)
}

func (c *Console) requestView(ctx context.Context, s *signedIn, perm *agentotp.Permission, votes []agentotp.Approval) *requestPage {
	now := c.svc.Now()
	names := userNames{}
	v := &requestPage{
		base: c.base(s, "Request "+string(perm.ID), "pending"),
		ID:   perm.ID, Status: perm.Status, Pending: perm.Status == agentotp.StatusPending,
		Agent: agentNames{}.get(ctx, c.svc, perm.AgentID), AgentID: perm.AgentID,
		Action: perm.Action, ActionASCII: nonASCII(perm.Action),
		Resource: perm.Resource, ResourceASCII: nonASCII(perm.Resource),
		Reason: agentReason(perm),
		Scope:  prettyJSON(perm.Scope), Granted: prettyJSON(perm.GrantedScope),
		Narrowed: !reflect.DeepEqual(perm.Scope, perm.GrantedScope),
		Context:  prettyJSON(perm.Context),
		Tool:     perm.Tool,
		Rule:     perm.Decision.Rule, PolicyVersion: perm.Decision.PolicyVersion, PolicyReason: perm.Decision.Reason,
		Approvers: strings.Join(perm.Decision.Approvers, ", "),
		Quorum:    max(1, perm.Decision.Quorum),
		Asked:     ago(now, perm.CreatedAt), AskedAt: stamp(perm.CreatedAt),
		Expires: until(now, perm.ApprovalExpiresAt), ExpiresAt: stamp(perm.ApprovalExpiresAt), ExpiresWhen: machine(perm.ApprovalExpiresAt),
		TokenTTL: span(perm.TokenTTL), Uses: perm.Uses,
		DecisionReason: perm.DecisionReason, UsesRemaining: perm.UsesRemaining,
		TokenExpires: stamp(perm.TokenExpiresAt),
	}
	v.Live = "request:" + string(perm.ID)
	if v.Rule == "" {
		v.Rule = "(default)"
	}
	if s.p.Role() == agentotp.RoleAdmin {
		v.AuditURL = "/ui/audit?permission=" + string(perm.ID)
	}
	for _, a := range votes {
		if !a.Approved {
			continue
		}
		v.Approvals++
		v.Votes = append(v.Votes, voteRow{Name: names.get(ctx, c.svc, a.UserID), At: stamp(a.CreatedAt), Reason: a.Reason})
		if a.UserID == s.user().ID {
			v.Voted = true
		}
	}
	if v.Pending {
		if c.svc.MayDecide(s.p, perm) {
			v.CanDecide = true
		} else {
			v.NotApprover = "The rule " + v.Rule + " names who may decide this request (" + v.Approvers + "), and you are not one of them."
		}
	}
	v.Editor = v.Granted
	v.Outcome = outcome(perm, names.decider(ctx, c.svc, perm.DecidedBy))
	v.History = history(ctx, c.svc, perm, votes, v.Agent, names)
	return v
}

// outcome says how a request ended, or "" while it waits.
func outcome(p *agentotp.Permission, by string) string {
	approved := "Approved by " + by
	humanEnded := p.DecidedBy == "" || p.DecidedBy == "timeout" || p.DecidedBy == "revoked"
	switch p.Status {
	case agentotp.StatusApproved:
		return approved
	case agentotp.StatusDenied:
		return "Denied by " + by
	case agentotp.StatusExpired:
		if humanEnded {
			return "Expired: nobody decided in time"
		}
		return approved + "; the permission has expired"
	case agentotp.StatusRevoked:
		if humanEnded {
			return "Revoked before a decision"
		}
		return approved + "; then revoked"
	case agentotp.StatusUsed:
		return approved + "; used up"
	}
	return ""
}

func history(ctx context.Context, svc *agentotp.Service, p *agentotp.Permission, votes []agentotp.Approval, agent string, names userNames) []historyRow {
	var out []historyRow
	add := func(t time.Time, what string) {
		if !t.IsZero() {
			out = append(out, historyRow{At: stamp(t), AtMachine: machine(t), What: what})
		}
	}
	add(p.CreatedAt, "Asked by the agent "+agent)
	for _, a := range votes {
		verb := "approved"
		if !a.Approved {
			verb = "voted against"
		}
		add(a.CreatedAt, names.get(ctx, svc, a.UserID)+" "+verb)
	}
	if p.DecidedBy != "" && p.DecidedBy != "timeout" && p.DecidedBy != "revoked" {
		by := names.decider(ctx, svc, p.DecidedBy)
		switch {
		case p.Status == agentotp.StatusDenied:
			add(p.DecidedAt, "Denied by "+by)
		default:
			add(p.DecidedAt, "Approved by "+by)
		}
	}
	add(p.TokenIssuedAt, "Token handed to the agent")
	switch {
	case p.Status == agentotp.StatusRevoked:
		add(firstSet(p.RevokedAt, p.UpdatedAt), "Revoked")
	case p.Status == agentotp.StatusExpired && (p.DecidedBy == "" || p.DecidedBy == "timeout"):
		add(p.ApprovalExpiresAt, "Expired before anyone decided")
	case p.Status == agentotp.StatusExpired:
		add(p.TokenExpiresAt, "The permission expired")
	case p.Status == agentotp.StatusUsed:
		add(p.UpdatedAt, "Used up")
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].AtMachine < out[j].AtMachine })
	return out
}

func firstSet(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

// userNames resolves user ids to names for one page, reading each once.
type userNames map[agentotp.UserID]string

func (u userNames) get(ctx context.Context, svc *agentotp.Service, id agentotp.UserID) string {
	if id == "" {
		return "(deleted user)"
	}
	if name, ok := u[id]; ok {
		return name
	}
	name := string(id)
	user, err := svc.Store().User(ctx, id)
	switch {
	case err == nil:
		name = user.Name
	case errors.Is(err, agentotp.ErrNotFound):
		name = string(id) + " (deleted)"
	}
	u[id] = name
	return name
}

// decider names who decided: "user:<id>" by the user's name, "policy" as
// the policy, "system" for the service itself.
func (u userNames) decider(ctx context.Context, svc *agentotp.Service, by string) string {
	switch {
	case by == "policy":
		return "the policy"
	case strings.HasPrefix(by, "user:"):
		return u.get(ctx, svc, agentotp.UserID(strings.TrimPrefix(by, "user:")))
	case by == "":
		return "nobody"
	}
	return by
}

func (c *Console) approve(w http.ResponseWriter, r *http.Request, s *signedIn) {
	form := &decisionForm{scope: r.PostForm.Get("scope"), approveReason: oneLine(r.PostForm.Get("reason"))}
	id := agentotp.PermissionID(r.PathValue("id"))
	ctx, cancel := withTimeout(r)
	defer cancel()
	perm, _, err := c.svc.GetPermission(ctx, s.p, id, 0)
	if err != nil {
		c.fail(w, r, s, err)
		return
	}
	mods, err := scopeChanges(perm.GrantedScope, form.scope)
	if err != nil {
		form.err = "Nothing was approved: " + lowerFirst(sentence(err))
		c.showRequest(w, r, s, http.StatusUnprocessableEntity, form)
		return
	}
	_, err = c.svc.Decide(ctx, s.p, id, agentotp.DecideInput{Approved: true, Reason: form.approveReason, ScopeModifications: mods})
	c.decided(w, r, s, form, err)
}

func (c *Console) deny(w http.ResponseWriter, r *http.Request, s *signedIn) {
	form := &decisionForm{denyReason: oneLine(r.PostForm.Get("reason"))}
	id := agentotp.PermissionID(r.PathValue("id"))
	ctx, cancel := withTimeout(r)
	defer cancel()
	_, err := c.svc.Decide(ctx, s.p, id, agentotp.DecideInput{Approved: false, Reason: form.denyReason})
	c.decided(w, r, s, form, err)
}

// decided answers a decision: back to the request page, which now shows
// the outcome, or the page again with the refusal on top.
func (c *Console) decided(w http.ResponseWriter, r *http.Request, s *signedIn, form *decisionForm, err error) {
	if err == nil {
		http.Redirect(w, r, "/ui/requests/"+r.PathValue("id"), http.StatusSeeOther)
		return
	}
	switch code := agentotp.ErrorCode(err); code {
	case agentotp.CodeValidation, agentotp.CodeConflict, agentotp.CodeForbidden:
		form.err = "Nothing changed: " + lowerFirst(sentence(err))
		c.showRequest(w, r, s, statusOf(code), form)
	default:
		c.fail(w, r, s, err)
	}
}

// scopeChanges reads the scope editor: nil when the scope is unchanged,
// else the edited scope, refused unless it only narrows the granted one.
func scopeChanges(granted map[string]any, text string) (map[string]any, error) {
	if strings.TrimSpace(text) == "" {
		return nil, agentotp.ValidationError("scope", "the editor is empty; reload the page to start again from the requested scope")
	}
	dec := json.NewDecoder(strings.NewReader(text))
	var edited map[string]any
	if err := dec.Decode(&edited); err != nil || edited == nil || dec.More() {
		return nil, agentotp.ValidationError("scope", "is not one JSON object")
	}
	if _, err := dec.Token(); err == nil {
		return nil, agentotp.ValidationError("scope", "has text after the JSON object")
	}
	if err := agentotp.ValidateObject("scope", edited); err != nil {
		return nil, err
	}
	if granted == nil {
		granted = map[string]any{}
	}
	if err := agentotp.CheckScopeEdit("scope", granted, edited); err != nil {
		return nil, err
	}
	if sameJSON(granted, edited) {
		return nil, nil
	}
	return edited, nil
}

// sameJSON compares two objects as JSON text (maps encode sorted).
func sameJSON(a, b map[string]any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// oneLine turns a reason typed in a form into one line: the service takes
// printable text only.
func oneLine(s string) string {
	return strings.TrimSpace(strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		return r
	}, s)), " "))
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}
