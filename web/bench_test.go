package web_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/web"
)

// BenchmarkPendingList renders the first page of the pending list with
// 1,000 requests waiting, from ten agents, on the server side only: the
// session check, the count and one page from the store, the agents' names,
// the template.
func BenchmarkPendingList(b *testing.B) {
	e := newEnv(b, func(o *agentotp.Options, _ *web.Options) { o.MaxPendingPerAgent = 1000 })
	agents := []agentotp.Principal{e.agent}
	for i := range 9 {
		p, _ := e.newAgent(fmt.Sprintf("agent-%d", i))
		agents = append(agents, p)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := range 1000 {
		wg.Go(func() {
			_, _, err := e.svc.RequestPermission(e.ctx, agents[i%len(agents)], agentotp.PermissionRequest{
				Action: "gmail.send", Resource: fmt.Sprintf("mailbox:user-%d@example.com", i),
				Scope:   map[string]any{"max_emails": 1.0, "to": []any{fmt.Sprintf("user-%d@example.com", i)}},
				Context: map[string]any{"reason": strings.Repeat("a reason of some length ", 8)},
			})
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	require.NoError(b, <-errs)

	browser := e.signIn(e.adminKey)
	req := httptest.NewRequest(http.MethodGet, "/ui/", nil)
	req.AddCookie(browser.cookie)
	page := func() string {
		rec := httptest.NewRecorder()
		e.console.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d", rec.Code)
		}
		return rec.Body.String()
	}
	body := page()
	require.Contains(b, body, "Showing 1–25 of 1000")
	require.Equal(b, 25, strings.Count(body, `<tr id="row-`), "one page, not the whole queue")
	b.ReportAllocs()
	for b.Loop() {
		page()
	}
}
