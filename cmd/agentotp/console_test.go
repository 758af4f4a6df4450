package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
)

// browser starts a headless Chromium for the test, or skips when there is
// none — unless CI=true, where the console must be tested.
func browser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no chromium on PATH: CI must run the console's browser tests (apt-get install -y chromium)")
		}
		t.Skip("no chromium on PATH: skipping the console's browser tests (apt-get install -y chromium to run them)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1200, 860))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(func() { bcancel(); acancel() })
	// The first run starts the browser and binds its life to bctx, which
	// therefore has no timeout of its own.
	require.NoError(t, chromedp.Do(bctx))
	// Every page records the Content-Security-Policy violations it causes
	// (this script is the browser's, not the page's, so the policy does
	// not apply to it).
	_, err := chromedp.Call(bctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.__csp = []; document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));`,
	})
	require.NoError(t, err)
	return bctx
}

// noCSPViolations fails when the current page broke its own policy.
func noCSPViolations(t *testing.T, ctx context.Context) {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__csp || []`))
	require.NoError(t, err)
	require.Empty(t, v, "the page violates its Content-Security-Policy")
}

// screenshot saves the page under docs/ when AGENTOTP_SCREENSHOTS=1.
func screenshot(t *testing.T, ctx context.Context, name string, full bool) {
	t.Helper()
	if os.Getenv("AGENTOTP_SCREENSHOTS") != "1" {
		return
	}
	shot := chromedp.CaptureScreenshot()
	if full {
		shot = chromedp.FullScreenshot(100)
	}
	png, err := chromedp.Run(ctx, shot)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join("..", "..", "docs", name), png, 0o644))
}

type agentResult struct {
	perm *otpclient.Permission
	err  error
}

// askAndWait makes the agent ask and long-poll for the decision, as an
// agent does; the pending request's id arrives on ids.
func askAndWait(ctx context.Context, c *otpclient.Client, req otpclient.Request, ids chan<- string) <-chan agentResult {
	out := make(chan agentResult, 1)
	go func() {
		p, err := c.RequestPermission(ctx, req, otpclient.Wait(0),
			otpclient.OnPending(func(p *otpclient.Permission) { ids <- p.ID }))
		out <- agentResult{p, err}
	}()
	return out
}

// The console end to end in a real browser against the real serve: sign
// in, a request appears without a reload, the approver narrows its scope
// and approves, and the agent's long-poll receives a token for the
// narrowed scope; a denial with a reason reaches the agent; signing out
// ends the session.
func TestConsoleInBrowser(t *testing.T) {
	bctx := browser(t)
	url, adminKey, _ := startServer(t, "--data", t.TempDir())
	require.NotEmpty(t, adminKey)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	admin := otpclient.NewAdmin(url, adminKey)
	ag, err := admin.CreateAgent(ctx, otpclient.AgentInput{Name: "mail-bot", Description: "sends the weekly report"})
	require.NoError(t, err)
	other, err := admin.CreateAgent(ctx, otpclient.AgentInput{Name: "deploy-bot"})
	require.NoError(t, err)
	ann, err := admin.CreateUser(ctx, otpclient.UserInput{Name: "ann", Role: string(agentotp.RoleApprover)})
	require.NoError(t, err)
	agent := otpclient.New(url, ag.APIKey)

	tab, closeTab := chromedp.NewContext(bctx)
	defer closeTab()
	tab, stop := context.WithTimeout(tab, 90*time.Second)
	defer stop()

	// Sign in: the console sends a visitor to the sign-in page first.
	require.NoError(t, chromedp.Do(tab,
		chromedp.Navigate(url+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("key")),
		chromedp.SendKeys(chromedp.ID("key"), ann.APIKey),
		chromedp.Submit(chromedp.ID("sign-in")),
		chromedp.WaitVisible(chromedp.ID("nothing-pending")),
		// The page listens for live updates before anything is asked.
		chromedp.WaitReady(chromedp.CSS(`body[data-live-state="open"]`)),
	))
	noCSPViolations(t, tab)
	// A mark on this page: gone if the page reloads.
	require.NoError(t, chromedp.Do(tab, chromedp.Evaluate[chromedp.Void](`window.__same = 'yes'`)))

	// Another agent's request first, for a fuller list.
	ids := make(chan string, 4)
	_ = askAndWait(ctx, otpclient.New(url, other.APIKey), otpclient.Request{Action: "k8s.rollout", Resource: "deployment:api/prod",
		Scope: map[string]any{"image": "api:1.42"}, Context: map[string]any{"reason": "release 1.42 passed staging"}}, ids)
	<-ids
	narrowed := askAndWait(ctx, agent, otpclient.Request{
		Action: "gmail.send", Resource: "mailbox:team@example.com",
		Scope:   map[string]any{"max_emails": 5, "to": []any{"team@example.com", "boss@example.com"}},
		Context: map[string]any{"reason": "send the weekly report to the team"},
	}, ids)
	id := <-ids

	// It appears without a reload.
	require.NoError(t, chromedp.Do(tab, chromedp.WaitVisible(chromedp.ID("row-"+id))))
	same, err := chromedp.Run(tab, chromedp.Evaluate[string](`window.__same || 'reloaded'`))
	require.NoError(t, err)
	require.Equal(t, "yes", same, "the row came without a reload")
	count, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("pending-count")))
	require.NoError(t, err)
	require.Equal(t, "2", count)
	screenshot(t, tab, "console-pending.png", false)

	// Narrow the scope and approve.
	require.NoError(t, chromedp.Do(tab,
		chromedp.Click(chromedp.CSS(`#row-`+id+` a.button`)),
		chromedp.WaitVisible(chromedp.ID("scope-editor")),
	))
	noCSPViolations(t, tab)
	action, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("action")))
	require.NoError(t, err)
	require.Equal(t, "gmail.send", action)
	screenshot(t, tab, "console-request.png", true)
	require.NoError(t, chromedp.Do(tab,
		chromedp.SetValue(chromedp.ID("scope-editor"), `{"max_emails": 1, "to": ["team@example.com"]}`),
		chromedp.SendKeys(chromedp.ID("approve-reason"), "the team only"),
		chromedp.Click(chromedp.ID("approve")),
		chromedp.WaitVisible(chromedp.ID("outcome")),
	))
	outcome, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("outcome")))
	require.NoError(t, err)
	require.Equal(t, "Approved by ann: the team only", outcome)

	res := <-narrowed
	require.NoError(t, res.err)
	require.True(t, res.perm.Approved(), "the agent's long-poll got the token")
	v, err := agent.Verify(ctx, res.perm.ID, res.perm.Token)
	require.NoError(t, err)
	require.True(t, v.Valid)
	require.Equal(t, map[string]any{"max_emails": 1.0, "to": []any{"team@example.com"}}, v.Scope)

	// Widening is refused, with the reason on the page.
	wide := askAndWait(ctx, agent, otpclient.Request{Action: "gmail.send", Resource: "mailbox:team@example.com",
		Scope: map[string]any{"max_emails": 1}}, ids)
	id = <-ids
	require.NoError(t, chromedp.Do(tab,
		chromedp.Navigate(url+"/ui/requests/"+id),
		chromedp.WaitVisible(chromedp.ID("scope-editor")),
		chromedp.SetValue(chromedp.ID("scope-editor"), `{"max_emails": 100}`),
		chromedp.Click(chromedp.ID("approve")),
		chromedp.WaitVisible(chromedp.ID("error")),
	))
	msg, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("error")))
	require.NoError(t, err)
	require.Contains(t, msg, "scope.max_emails: cannot go above the requested 1")

	// Deny it with a reason; the agent hears the reason.
	require.NoError(t, chromedp.Do(tab,
		chromedp.SendKeys(chromedp.ID("deny-reason"), "one was enough"),
		chromedp.Click(chromedp.ID("deny")),
		chromedp.WaitVisible(chromedp.ID("outcome")),
	))
	res = <-wide
	require.True(t, errors.Is(res.err, otpclient.ErrDenied), "%v", res.err)
	require.Equal(t, "one was enough", res.perm.Reason)

	// On a phone: one column, and long values wrap instead of widening
	// the page.
	long, err := agent.RequestPermission(ctx, otpclient.Request{Action: "s3.put",
		Resource: "s3://bucket/" + strings.Repeat("x", 900),
		Scope:    map[string]any{"key": strings.Repeat("k", 2000)}, Context: map[string]any{"reason": strings.Repeat("why", 300)}})
	require.NoError(t, err)
	for _, path := range []string{"/ui/", "/ui/requests/" + long.ID} {
		require.NoError(t, chromedp.Do(tab,
			chromedp.EmulateViewport(390, 844),
			chromedp.Navigate(url+path),
			chromedp.WaitVisible(chromedp.ID("live")),
		))
		fits, err := chromedp.Run(tab, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth`))
		require.NoError(t, err)
		require.True(t, fits, "%s scrolls sideways on a phone", path)
	}
	columns, err := chromedp.Run(tab, chromedp.Evaluate[string](`getComputedStyle(document.querySelector('dl.facts')).gridTemplateColumns`))
	require.NoError(t, err)
	require.NotContains(t, strings.TrimSpace(columns), " ", "one column under 600 px: %q", columns)
	require.NoError(t, chromedp.Do(tab, chromedp.ResetViewport()))

	// Sign out: the old cookie signs nobody in any more.
	cookies, err := chromedp.Call(tab, network.GetCookies, network.GetCookiesParams{})
	require.NoError(t, err)
	var session *network.Cookie
	for _, c := range cookies.Cookies {
		if c.Name == "agentotp_console" {
			session = c
		}
	}
	require.NotNil(t, session)
	require.True(t, session.HTTPOnly)
	require.Equal(t, network.CookieSameSiteStrict, session.SameSite)
	require.NoError(t, chromedp.Do(tab,
		chromedp.Click(chromedp.ID("sign-out")),
		chromedp.WaitVisible(chromedp.ID("sign-in")),
	))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/ui/", nil)
	require.NoError(t, err)
	req.AddCookie(&http.Cookie{Name: session.Name, Value: session.Value})
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.True(t, strings.HasPrefix(resp.Header.Get("Location"), "/ui/sign-in"))
}
