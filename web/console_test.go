package web_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/web"
)

func TestSignIn(t *testing.T) {
	e := newEnv(t)
	approver := e.user("ann", agentotp.RoleApprover)
	disabled := e.user("gone", agentotp.RoleApprover)
	off := false
	p, err := e.svc.Authenticate(e.ctx, disabled.Reveal())
	require.NoError(t, err)
	_, err = e.svc.UpdateUser(e.ctx, e.admin, p.User.ID, agentotp.UserPatch{Active: &off})
	require.NoError(t, err)

	for _, tc := range []struct {
		name   string
		key    string
		status int
		says   string
	}{
		{"admin key", e.adminKey.Reveal(), http.StatusSeeOther, ""},
		{"approver key", approver.Reveal(), http.StatusSeeOther, ""},
		{"approver key with spaces around it", "  " + approver.Reveal() + "\n", http.StatusSeeOther, ""},
		{"agent key", e.agentKey.Reveal(), http.StatusForbidden, "Agent keys cannot sign in to the console"},
		{"disabled user", disabled.Reveal(), http.StatusForbidden, "This user is disabled"},
		{"unknown key", agentotp.NewUserKey().Reveal(), http.StatusUnauthorized, "That key does not sign anyone in"},
		{"not a key", "<script>alert(1)</script>", http.StatusUnauthorized, "That key does not sign anyone in"},
		{"empty", "", http.StatusUnauthorized, "That key does not sign anyone in"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.visitor().post("/ui/sign-in", url.Values{"key": {tc.key}})
			require.Equal(t, tc.status, res.status, res.body)
			if tc.status != http.StatusSeeOther {
				require.Empty(t, res.cookies, "no session for a refused key")
				require.Contains(t, res.body, tc.says)
				if tc.key != "" {
					require.NotContains(t, res.body, strings.TrimSpace(tc.key))
				}
				return
			}
			require.Equal(t, "/ui/", res.location)
			require.Len(t, res.cookies, 1)
			c := res.cookies[0]
			require.Equal(t, "agentotp_console", c.Name)
			require.True(t, strings.HasPrefix(c.Value, agentotp.ConsoleSessionPrefix))
			require.True(t, c.HttpOnly)
			require.Equal(t, http.SameSiteStrictMode, c.SameSite)
			require.Equal(t, "/", c.Path)
			require.False(t, c.Secure, "plain http: a Secure cookie would never come back")
			require.Equal(t, http.StatusOK, (&browser{e: e, cookie: c}).get("/ui/").status)
		})
	}
}

func TestSessionCookieIsSecureBehindHTTPS(t *testing.T) {
	e := newEnv(t, func(_ *agentotp.Options, o *web.Options) { o.PublicURL = "https://approvals.example" })
	res := e.visitor().post("/ui/sign-in", url.Values{"key": {e.adminKey.Reveal()}})
	require.Equal(t, http.StatusSeeOther, res.status)
	require.Len(t, res.cookies, 1)
	require.Equal(t, "__Host-agentotp_console", res.cookies[0].Name)
	require.True(t, res.cookies[0].Secure)
	require.Equal(t, "/", res.cookies[0].Path)
}

func TestSignOutEndsTheSession(t *testing.T) {
	e := newEnv(t)
	b := e.signIn(e.adminKey)
	token := b.csrf()

	// Without the CSRF token nothing happens.
	res := b.post("/ui/sign-out", url.Values{})
	require.Equal(t, http.StatusForbidden, res.status)
	require.Equal(t, http.StatusOK, b.get("/ui/").status)

	res = b.post("/ui/sign-out", url.Values{"csrf": {token}})
	require.Equal(t, http.StatusSeeOther, res.status)
	require.Equal(t, "/ui/sign-in", res.location)
	require.Len(t, res.cookies, 1)
	require.Less(t, res.cookies[0].MaxAge, 0, "the cookie is cleared")

	// The old cookie signs nobody in any more.
	res = b.get("/ui/")
	require.Equal(t, http.StatusSeeOther, res.status)
	require.Equal(t, "/ui/sign-in", res.location)
	require.Equal(t, http.StatusUnauthorized, b.get("/ui/events").status)

	out, err := e.svc.ListAudit(e.ctx, e.admin, agentotp.AuditFilter{Type: agentotp.EventConsoleSignOut})
	require.NoError(t, err)
	require.Len(t, out, 1)
}

func TestSessionEndsWithTheUser(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(e *env, id agentotp.UserID)
	}{
		{"disabled", func(e *env, id agentotp.UserID) {
			off := false
			_, err := e.svc.UpdateUser(e.ctx, e.admin, id, agentotp.UserPatch{Active: &off})
			require.NoError(e.t, err)
		}},
		{"key rotated", func(e *env, id agentotp.UserID) {
			_, _, err := e.svc.RotateUserKey(e.ctx, e.admin, id)
			require.NoError(e.t, err)
		}},
		{"deleted", func(e *env, id agentotp.UserID) { require.NoError(e.t, e.svc.DeleteUser(e.ctx, e.admin, id)) }},
		{"idle", func(e *env, _ agentotp.UserID) { e.clock.Add(agentotp.ConsoleIdleTimeout) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			key := e.user("ann", agentotp.RoleApprover)
			b := e.signIn(key)
			require.Equal(t, http.StatusOK, b.get("/ui/").status)
			p, err := e.svc.Authenticate(e.ctx, key.Reveal())
			require.NoError(t, err)
			tc.end(e, p.User.ID)
			res := b.get("/ui/")
			require.Equal(t, http.StatusSeeOther, res.status)
			require.Equal(t, "/ui/sign-in", res.location)
		})
	}
}

func TestUnsignedVisitorsGoToSignInAndBack(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send"})
	page := "/ui/requests/" + string(perm.ID)

	res := e.visitor().get(page)
	require.Equal(t, http.StatusSeeOther, res.status)
	require.Equal(t, "/ui/sign-in?next="+url.QueryEscape(page), res.location)

	form := e.visitor().get(res.location)
	require.Equal(t, http.StatusOK, form.status)
	require.Contains(t, form.body, `name="next" value="`+page+`"`)

	res = e.visitor().post("/ui/sign-in", url.Values{"key": {e.adminKey.Reveal()}, "next": {page}})
	require.Equal(t, http.StatusSeeOther, res.status)
	require.Equal(t, page, res.location)

	// A decision posted after the session ended leads back to its page.
	res = e.visitor().post(page+"/approve", url.Values{})
	require.Equal(t, http.StatusSeeOther, res.status)
	require.Equal(t, "/ui/sign-in?next="+url.QueryEscape(page), res.location)
	require.Equal(t, agentotp.StatusPending, e.perm(perm.ID).Status)

	// The queue and the filters of a page survive the round trip.
	res = e.visitor().get("/ui/audit?type=deny&agent=a+b")
	require.Equal(t, "/ui/sign-in?next="+url.QueryEscape("/ui/audit?type=deny&agent=a+b"), res.location)
}

func TestNoOpenRedirect(t *testing.T) {
	e := newEnv(t)
	for _, next := range []string{
		"https://evil.example/ui/", "//evil.example/ui/", "/\\evil.example", "/ui/\\evil", "http:/ui/x",
		"/ui/../api/v1/agents", "/ui/%2e%2e/api", "/ui//evil.example", "javascript:alert(1)", "/api/v1/agents",
		"/ui/sign-out", "/ui/sign-in?next=//evil.example", "/ui/static/console.js", "/ui/events", "ui/requests",
		"/ui/x#frag", "\t/ui/", "/ui/\r\nSet-Cookie: x=1",
	} {
		t.Run(next, func(t *testing.T) {
			res := e.visitor().post("/ui/sign-in", url.Values{"key": {e.adminKey.Reveal()}, "next": {next}})
			require.Equal(t, http.StatusSeeOther, res.status)
			require.Equal(t, "/ui/", res.location)

			page := e.visitor().get("/ui/sign-in?next=" + url.QueryEscape(next))
			require.Contains(t, page.body, `name="next" value="/ui/"`)
		})
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send"})
	b := e.signIn(e.adminKey)
	for _, path := range []string{"/ui/sign-in", "/ui/", "/ui/requests/" + string(perm.ID), "/ui/audit", "/ui/agents",
		"/ui/users", "/ui/nothing-here", "/ui/static/console.css", "/ui/static/console.js"} {
		t.Run(path, func(t *testing.T) {
			who := b
			if path == "/ui/sign-in" {
				who = e.visitor()
			}
			res := who.get(path)
			h := res.header
			csp := h.Get("Content-Security-Policy")
			require.Contains(t, csp, "default-src 'none'")
			require.Contains(t, csp, "script-src 'self'")
			require.Contains(t, csp, "frame-ancestors 'none'")
			require.Contains(t, csp, "form-action 'self'")
			require.NotContains(t, csp, "unsafe-inline")
			require.Equal(t, "nosniff", h.Get("X-Content-Type-Options"))
			require.Equal(t, "no-referrer", h.Get("Referrer-Policy"))
			require.Equal(t, "DENY", h.Get("X-Frame-Options"))
			if strings.HasPrefix(path, "/ui/static/") {
				require.Equal(t, http.StatusOK, res.status)
				return
			}
			require.Equal(t, "no-store", h.Get("Cache-Control"))
			require.Equal(t, "text/html; charset=utf-8", h.Get("Content-Type"))
			// No inline script and no inline handlers: only the script
			// file, which the policy allows.
			require.Equal(t, 1, strings.Count(res.body, "<script"), res.body)
			require.Regexp(t, `<script src="/ui/static/console\.js\?v=[0-9a-f]+" defer></script>`, res.body)
			require.NotRegexp(t, `(?i)\son[a-z]+=`, res.body)
			require.NotContains(t, res.body, "style=")
		})
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send"})
	ann := e.signIn(e.user("ann", agentotp.RoleApprover))
	bob := e.signIn(e.user("bob", agentotp.RoleApprover))
	for _, tc := range []struct {
		name   string
		form   url.Values
		header map[string]string
	}{
		{"no token", url.Values{}, nil},
		{"empty token", url.Values{"csrf": {""}}, nil},
		{"wrong token", url.Values{"csrf": {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}, nil},
		{"another session's token", url.Values{"csrf": {bob.csrf()}}, nil},
		{"token in the query only", nil, nil},
		{"right token from another site", url.Values{"csrf": {ann.csrf()}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"right token, foreign origin", url.Values{"csrf": {ann.csrf()}}, map[string]string{"Origin": "https://evil.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, verb := range []string{"approve", "deny"} {
				path := "/ui/requests/" + string(perm.ID) + "/" + verb
				if tc.form == nil {
					path += "?csrf=" + ann.csrf()
				}
				res := ann.do(http.MethodPost, path, tc.form, tc.header)
				require.Equal(t, http.StatusForbidden, res.status, res.body)
				require.Contains(t, res.body, "nothing changed")
				require.Equal(t, agentotp.StatusPending, e.perm(perm.ID).Status)
			}
		})
	}
	// The same form with the right token decides.
	res := ann.decide(perm.ID, "deny", nil)
	require.Equal(t, http.StatusSeeOther, res.status, res.body)
	require.Equal(t, agentotp.StatusDenied, e.perm(perm.ID).Status)
}

func TestNothingChangesOnGet(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send"})
	b := e.signIn(e.adminKey)
	for _, path := range []string{"/approve", "/deny", "/approve?approved=true&csrf=" + b.csrf()} {
		res := b.get("/ui/requests/" + string(perm.ID) + path)
		require.NotEqual(t, http.StatusSeeOther, res.status)
		require.GreaterOrEqual(t, res.status, 400)
	}
	require.GreaterOrEqual(t, b.get("/ui/sign-out").status, 400)
	require.Equal(t, agentotp.StatusPending, e.perm(perm.ID).Status)
	require.Equal(t, http.StatusOK, b.get("/ui/").status, "still signed in")
}

func TestApproveNarrowsTheScope(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send", Resource: "mailbox:team",
		Scope: map[string]any{"max_emails": 5.0, "to": []any{"a@example.com", "b@example.com"}}})
	b := e.signIn(e.user("ann", agentotp.RoleApprover))

	page := b.get("/ui/requests/" + string(perm.ID))
	require.Contains(t, page.body, `id="scope-editor"`)
	require.Contains(t, page.body, "&#34;max_emails&#34;: 5")

	res := b.decide(perm.ID, "approve", url.Values{"scope": {`{"max_emails": 1, "to": ["b@example.com"]}`}, "reason": {"one is enough"}})
	require.Equal(t, http.StatusSeeOther, res.status, res.body)
	require.Equal(t, "/ui/requests/"+string(perm.ID), res.location)

	// The agent's next read gets the token, granted the narrowed scope.
	got, token, err := e.svc.GetPermission(e.ctx, e.agent, perm.ID, 0)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusApproved, got.Status)
	require.NotEmpty(t, token.Reveal())
	v, err := e.svc.Verify(e.ctx, e.agent, perm.ID, token.Reveal())
	require.NoError(t, err)
	require.True(t, v.Valid)
	require.Equal(t, map[string]any{"max_emails": 1.0, "to": []any{"b@example.com"}}, v.Scope)

	// Decided in the console, by ann: the audit says so.
	events, err := e.svc.ListAudit(e.ctx, e.admin, agentotp.AuditFilter{PermissionID: perm.ID, Type: agentotp.EventApprove})
	require.NoError(t, err)
	require.Len(t, events, 1)
	ann, err := e.svc.Store().UserByName(e.ctx, "ann")
	require.NoError(t, err)
	require.Equal(t, "user", events[0].ActorType)
	require.Equal(t, string(ann.ID), events[0].ActorID)
	require.Equal(t, map[string]any{"via": "console"}, events[0].Details["channel"])

	page = b.get("/ui/requests/" + string(perm.ID))
	require.Contains(t, visible(page.body), "Approved by ann: one is enough")
	requireNoDecisionForms(t, page.body)
}

func TestApproveRefusesWidening(t *testing.T) {
	e := newEnv(t)
	scope := map[string]any{"max_emails": 5.0, "to": []any{"a@example.com"}, "blocked_domains": []any{"evil.example"}}
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send", Scope: scope})
	b := e.signIn(e.adminKey)
	for _, tc := range []struct {
		name, scope, says string
	}{
		{"number raised", `{"max_emails": 50, "to": ["a@example.com"], "blocked_domains": ["evil.example"]}`,
			"scope.max_emails: cannot go above the requested 5"},
		{"recipient added", `{"max_emails": 5, "to": ["a@example.com", "x@evil.example"], "blocked_domains": ["evil.example"]}`,
			"scope.to: cannot gain the entry"},
		{"block lifted", `{"max_emails": 5, "to": ["a@example.com"], "blocked_domains": []}`, "scope.blocked_domains: cannot be changed"},
		{"key removed", `{"to": ["a@example.com"], "blocked_domains": ["evil.example"]}`, "scope.max_emails: cannot be removed"},
		{"type changed", `{"max_emails": "5", "to": ["a@example.com"], "blocked_domains": ["evil.example"]}`, "scope.max_emails: must stay a number"},
		{"not JSON", `{"max_emails": 5,`, "scope: is not one JSON object"},
		{"two objects", `{} {}`, "scope: is not one JSON object"},
		{"not an object", `[1]`, "scope: is not one JSON object"},
		{"empty", ``, "the editor is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := b.decide(perm.ID, "approve", url.Values{"scope": {tc.scope}})
			require.Equal(t, http.StatusUnprocessableEntity, res.status, res.body)
			require.Contains(t, res.body, "Nothing was approved")
			require.Contains(t, unescape(res.body), tc.says)
			// The editor keeps what was typed, to fix it.
			require.Contains(t, unescape(res.body), ">"+tc.scope+"</textarea>")
			got := e.perm(perm.ID)
			require.Equal(t, agentotp.StatusPending, got.Status)
			require.Equal(t, scope, got.GrantedScope)
		})
	}
}

func TestDenyWithReasonReachesTheAgent(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send"})
	b := e.signIn(e.adminKey)
	res := b.decide(perm.ID, "deny", url.Values{"reason": {"not to\r\nthat list"}})
	require.Equal(t, http.StatusSeeOther, res.status, res.body)
	got, token, err := e.svc.GetPermission(e.ctx, e.agent, perm.ID, 0)
	require.NoError(t, err)
	require.Empty(t, token.Reveal())
	require.Equal(t, agentotp.StatusDenied, got.Status)
	require.Equal(t, "not to that list", got.DecisionReason)

	// Deciding again: the outcome stands, the page says why.
	res = b.decide(perm.ID, "approve", url.Values{"scope": {"{}"}})
	require.Equal(t, http.StatusConflict, res.status)
	require.Contains(t, res.body, "already denied")
}

func TestEndedRequestsShowTheirOutcomeInsteadOfButtons(t *testing.T) {
	e := newEnv(t)
	b := e.signIn(e.adminKey)
	for _, tc := range []struct {
		name    string
		end     func(id agentotp.PermissionID)
		outcome string
	}{
		{"approved", func(id agentotp.PermissionID) {
			_, err := e.svc.Decide(e.ctx, e.admin, id, agentotp.DecideInput{Approved: true})
			require.NoError(t, err)
		}, "Approved by admin"},
		{"denied", func(id agentotp.PermissionID) {
			_, err := e.svc.Decide(e.ctx, e.admin, id, agentotp.DecideInput{Reason: "no"})
			require.NoError(t, err)
		}, "Denied by admin: no"},
		{"revoked", func(id agentotp.PermissionID) {
			_, err := e.svc.Revoke(e.ctx, e.agent, id, "changed my mind")
			require.NoError(t, err)
		}, "Revoked before a decision"},
		{"expired", func(agentotp.PermissionID) { e.clock.Add(agentotp.DefaultApprovalTTL) }, "Expired: nobody decided in time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send"})
			page := b.get("/ui/requests/" + string(perm.ID))
			require.Contains(t, page.body, `id="approve"`)
			tc.end(perm.ID)
			page = b.get("/ui/requests/" + string(perm.ID))
			require.Equal(t, http.StatusOK, page.status)
			require.Contains(t, visible(page.body), tc.outcome)
			requireNoDecisionForms(t, page.body)
			require.NotContains(t, b.get("/ui/").body, string(perm.ID), "no longer in the pending list")
		})
	}
}

func requireNoDecisionForms(t *testing.T, body string) {
	t.Helper()
	for _, s := range []string{`id="approve"`, `id="deny"`, `/approve"`, `/deny"`, `id="scope-editor"`} {
		require.NotContains(t, body, s)
	}
}

func TestApproverNotNamedByTheRuleCannotDecide(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "restricted.delete", Resource: "db:prod"})
	ann := e.signIn(e.user("ann", agentotp.RoleApprover))
	bob := e.signIn(e.user("bob", agentotp.RoleApprover))

	page := bob.get("/ui/requests/" + string(perm.ID))
	require.Equal(t, http.StatusOK, page.status)
	requireNoDecisionForms(t, page.body)
	require.Contains(t, page.body, "The rule only-ann names who may decide this request (ann), and you are not one of them.")

	for _, verb := range []string{"approve", "deny"} {
		res := bob.decide(perm.ID, verb, url.Values{"scope": {"{}"}})
		require.Equal(t, http.StatusForbidden, res.status, res.body)
		require.Contains(t, res.body, "you are not an approver for this request")
		require.Equal(t, agentotp.StatusPending, e.perm(perm.ID).Status)
	}
	refused, err := e.svc.ListAudit(e.ctx, e.admin, agentotp.AuditFilter{PermissionID: perm.ID, Type: agentotp.EventDecideRejected})
	require.NoError(t, err)
	require.Len(t, refused, 2, "both attempts are audited")

	page = ann.get("/ui/requests/" + string(perm.ID))
	require.Contains(t, page.body, `id="approve"`)
	require.Equal(t, http.StatusSeeOther, ann.decide(perm.ID, "approve", url.Values{"scope": {"{}"}}).status)
	require.Equal(t, agentotp.StatusApproved, e.perm(perm.ID).Status)
}

func TestQuorumProgress(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "quorum.pay", Scope: map[string]any{"max_amount": 100.0}})
	ann := e.signIn(e.user("ann", agentotp.RoleApprover))
	bob := e.signIn(e.user("bob", agentotp.RoleApprover))

	res := ann.decide(perm.ID, "approve", url.Values{"scope": {`{"max_amount": 50}`}, "reason": {"half"}})
	require.Equal(t, http.StatusSeeOther, res.status, res.body)
	page := ann.get("/ui/requests/" + string(perm.ID))
	require.Contains(t, page.body, `id="quorum">1 of 2`)
	require.Contains(t, page.body, "ann approved at")
	require.Contains(t, page.body, "You have approved")
	require.NotContains(t, page.body, `id="approve"`, "one person, one vote")
	require.Contains(t, page.body, `id="deny"`)

	page = bob.get("/ui/requests/" + string(perm.ID))
	require.Contains(t, page.body, `id="approve"`)
	require.Contains(t, page.body, "&#34;max_amount&#34;: 50", "the editor starts from ann's narrowing")
	require.Equal(t, http.StatusSeeOther, bob.decide(perm.ID, "approve", url.Values{"scope": {`{"max_amount": 50}`}}).status)
	got := e.perm(perm.ID)
	require.Equal(t, agentotp.StatusApproved, got.Status)
	require.Equal(t, map[string]any{"max_amount": 50.0}, got.GrantedScope)
}

func TestPendingListIsNewestFirstAndPaginated(t *testing.T) {
	e := newEnv(t)
	var ids []agentotp.PermissionID
	for i := range 30 {
		e.clock.Add(time.Second)
		ids = append(ids, e.ask(agentotp.PermissionRequest{Action: fmt.Sprintf("job.%02d", i)}).ID)
	}
	b := e.signIn(e.adminKey)
	first := b.get("/ui/")
	require.Equal(t, 25, strings.Count(first.body, `<tr id="row-`))
	require.Less(t, strings.Index(first.body, string(ids[29])), strings.Index(first.body, string(ids[28])), "newest first")
	require.NotContains(t, first.body, string(ids[0]))
	require.Contains(t, first.body, `href="/ui/?page=2"`)
	require.Contains(t, first.body, "Showing 1–25 of 30")
	require.Contains(t, first.body, "mail-bot")
	require.Contains(t, first.body, "in 5m 00s")
	require.Contains(t, first.body, "asked 24s ago")

	second := b.get("/ui/?page=2")
	require.Equal(t, 5, strings.Count(second.body, `<tr id="row-`))
	require.Contains(t, second.body, string(ids[0]))
	for _, bad := range []string{"/ui/?page=-1", "/ui/?page=x", "/ui/?page=99999999999999999999"} {
		require.Equal(t, http.StatusOK, b.get(bad).status, bad)
	}
}

func TestAdminPages(t *testing.T) {
	e := newEnv(t)
	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send"})
	_, err := e.svc.Decide(e.ctx, e.admin, perm.ID, agentotp.DecideInput{Reason: "no"})
	require.NoError(t, err)
	other := e.ask(agentotp.PermissionRequest{Action: "calendar.read"})
	approver := e.signIn(e.user("ann", agentotp.RoleApprover))
	admin := e.signIn(e.adminKey)

	for _, path := range []string{"/ui/audit", "/ui/agents", "/ui/users"} {
		res := approver.get(path)
		require.Equal(t, http.StatusForbidden, res.status, path)
		require.Contains(t, res.body, "This page is for admins.")
		require.NotContains(t, approver.get("/ui/").body, `href="`+path+`"`, "not in an approver's navigation")
		require.Equal(t, http.StatusOK, admin.get(path).status, path)
	}
	require.Contains(t, admin.get("/ui/agents").body, "mail-bot")
	users := admin.get("/ui/users").body
	require.Contains(t, users, "ann")
	require.Contains(t, users, "approver")

	audit := admin.get("/ui/audit").body
	require.Regexp(t, `id="chain">Chain verified: \d+ events intact`, audit)
	require.Contains(t, audit, "console_sign_in")

	for _, tc := range []struct {
		query    string
		has, not []string
	}{
		{"?type=deny", []string{string(perm.ID)}, []string{string(other.ID)}},
		{"?action=calendar.read", []string{string(other.ID)}, []string{string(perm.ID)}},
		{"?action=gmail.*", []string{string(perm.ID)}, []string{string(other.ID)}},
		{"?agent=mail-bot&type=request", []string{string(perm.ID), string(other.ID)}, []string{"console_sign_in"}},
		{"?permission=" + string(other.ID), []string{string(other.ID)}, []string{string(perm.ID)}},
		{"?from=2026-11-26T00:00", nil, []string{string(perm.ID), string(other.ID)}},
		{"?to=2026-11-24", nil, []string{string(perm.ID), string(other.ID)}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			res := admin.get("/ui/audit" + tc.query)
			require.Equal(t, http.StatusOK, res.status)
			rows := res.body[strings.Index(res.body, `<form method="get"`):]
			for _, s := range tc.has {
				require.Contains(t, rows, `<code>`+s+`</code>`)
			}
			for _, s := range tc.not {
				require.NotContains(t, rows, `<code>`+s+`</code>`)
			}
		})
	}
	for _, bad := range []string{"?type=nope", "?agent=nobody", "?from=yesterday", "?permission=perm_x"} {
		res := admin.get("/ui/audit" + bad)
		require.Equal(t, http.StatusUnprocessableEntity, res.status, bad)
	}
}

func TestAuditShowsABrokenChain(t *testing.T) {
	e := newEnv(t)
	admin := e.signIn(e.adminKey)
	require.Contains(t, admin.get("/ui/audit").body, "Chain verified")
	// The chain breaks in the store (as an attacker with the file would
	// break it); verify=1 runs the check again at once.
	brokeChain(t, e)
	res := admin.get("/ui/audit?verify=1")
	require.Contains(t, res.body, "Chain verification FAILED")
}

func TestSignInIsRateLimited(t *testing.T) {
	e := newEnv(t)
	web.RestoreSignInLimit(e.console)
	var last response
	for range 11 {
		last = e.visitor().post("/ui/sign-in", url.Values{"key": {agentotp.NewUserKey().Reveal()}})
	}
	require.Equal(t, http.StatusTooManyRequests, last.status)
	require.NotEmpty(t, last.header.Get("Retry-After"))
	// A good key is limited too while the bucket is empty.
	res := e.visitor().post("/ui/sign-in", url.Values{"key": {e.adminKey.Reveal()}})
	require.Equal(t, http.StatusTooManyRequests, res.status)
}

func TestLiveEvents(t *testing.T) {
	e := newEnv(t)
	web.SetHeartbeat(e.console, 50*time.Millisecond)
	b := e.signIn(e.adminKey)
	token := b.csrf()

	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/ui/events", nil)
	require.NoError(t, err)
	req.AddCookie(b.cookie)
	res, err := client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func(prefix string) string {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				require.True(t, ok, "stream ended waiting for %q", prefix)
				if strings.HasPrefix(l, prefix) {
					return l
				}
			case <-ctx.Done():
				t.Fatalf("no %q", prefix)
			}
		}
	}
	next("retry:")

	perm := e.ask(agentotp.PermissionRequest{Action: "gmail.send", Context: map[string]any{"reason": "<b>hi</b>\n\nevent: x"}})
	require.Equal(t, "event: pending", next("event:"))
	require.Equal(t, "data: "+string(perm.ID), next("data:"), "only the id travels")
	_, err = e.svc.Decide(e.ctx, e.admin, perm.ID, agentotp.DecideInput{Approved: true})
	require.NoError(t, err)
	require.Equal(t, "event: resolved", next("event:"))
	require.Equal(t, "data: "+string(perm.ID), next("data:"))
	next(": keep-alive")

	// Signing out ends the stream.
	require.Equal(t, http.StatusSeeOther, b.post("/ui/sign-out", url.Values{"csrf": {token}}).status)
	for range lines {
	}
	require.NoError(t, ctx.Err(), "the stream closed before the test gave up")
}

// unescape undoes the template's escaping of quotes and brackets, to
// compare messages as a person reads them.
func unescape(s string) string {
	return strings.NewReplacer("&#34;", `"`, "&#39;", "'", "&lt;", "<", "&gt;", ">", "&amp;", "&").Replace(s)
}

func TestLiveStreamsPerPersonAreBounded(t *testing.T) {
	e := newEnv(t)
	b := e.signIn(e.adminKey)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	open := func() int {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/ui/events", nil)
		require.NoError(t, err)
		req.AddCookie(b.cookie)
		res, err := client.Do(req)
		require.NoError(t, err)
		t.Cleanup(func() { res.Body.Close() })
		return res.StatusCode
	}
	for range 16 {
		require.Equal(t, http.StatusOK, open())
	}
	require.Equal(t, http.StatusTooManyRequests, open())
	require.Equal(t, http.StatusUnauthorized, e.visitor().get("/ui/events").status)
}
