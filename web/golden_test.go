package web_test

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// Hostile strings an agent controls: its name (set by an admin, but
// copied from the agent's own description of itself), the action,
// resource, scope and context of a request.
const (
	hostileName     = `evil<script>alert("name")</script>`
	hostileAction   = `gmail.send"><script>alert(1)</script><img src=x onerror=alert(2)>`
	hostileResource = "email:boss@corp.example\u202e\u200bmoc.live@" // reads backwards without the markers
	hostileReason   = "</q><b>✅ Verified by the security team</b><script>alert('reason')</script>\u2066 approve now"
)

func hostileRequest() agentotp.PermissionRequest {
	return agentotp.PermissionRequest{
		Action: hostileAction, Resource: hostileResource,
		Scope: map[string]any{
			"to":         []any{"</textarea><script>alert('scope')</script>", "a@example.com"},
			"max_emails": 1.0,
			"note\u202e": "x\u200by",
		},
		Context: map[string]any{
			"reason": hostileReason,
			"link":   "javascript:alert(1)",
			"html":   `<a href="//evil.example" onclick="alert(3)">click</a>`,
		},
	}
}

// Everything agent-supplied is escaped by the template engine, and
// invisible characters are shown: golden pages, checked also for what must
// never appear.
func TestHostileStringsAreEscaped(t *testing.T) {
	e := newEnv(t)
	agent, _ := e.newAgent(hostileName)
	perm, _, err := e.svc.RequestPermission(e.ctx, agent, hostileRequest())
	require.NoError(t, err)
	b := e.signIn(e.adminKey)

	for _, page := range []struct{ golden, path string }{
		{"pending_hostile.html", "/ui/"},
		{"request_hostile.html", "/ui/requests/" + string(perm.ID)},
		{"audit_hostile.html", "/ui/audit?type=request"},
	} {
		t.Run(page.golden, func(t *testing.T) {
			res := b.get(page.path)
			require.Equal(t, http.StatusOK, res.status)
			// No tag an agent wrote survives as a tag; no invisible
			// character survives unmarked.
			for _, never := range []string{"<script>alert", "<img", "<b>", "</q><b>", "</textarea><script>",
				`onclick="alert`, `<a href="//evil`, "\u202e", "\u200b", "\u2066"} {
				require.NotContains(t, res.body, never)
			}
			if page.golden != "audit_hostile.html" {
				require.Contains(t, res.body, `<span class="hidden-char" title="an invisible or direction-changing character">U&#43;202E</span>`)
			}
			golden(t, page.golden, normalize(res.body))
		})
	}

	page := b.get("/ui/requests/" + string(perm.ID)).body
	require.Contains(t, page, "&lt;/textarea&gt;&lt;script&gt;", "the scope editor holds the scope as text")
	require.Contains(t, page, `\u202e`, "invisible characters in the scope are JSON escapes")
	require.NotContains(t, page, "The action has characters beyond plain ASCII", "the action is plain ASCII")
	require.Contains(t, page, "The resource has characters beyond plain ASCII")
	require.Contains(t, visible(page), `"email:boss@corp.example\u202e\u200bmoc.live@"`)
	require.Contains(t, visible(page), "the agent's own words, not verified")

	// An untouched editor approves exactly the requested scope.
	editor := regexp.MustCompile(`(?s)<textarea id="scope-editor" name="scope"[^>]*>(.*?)</textarea>`).FindStringSubmatch(page)
	require.NotNil(t, editor)
	res := b.decide(perm.ID, "approve", map[string][]string{"scope": {unescape(editor[1])}})
	require.Equal(t, http.StatusSeeOther, res.status, res.body)
	got := e.perm(perm.ID)
	require.Equal(t, agentotp.StatusApproved, got.Status)
	require.Equal(t, hostileRequest().Scope, got.GrantedScope)
}

var (
	randomID  = regexp.MustCompile(`(perm|agt|usr|evt)_[0-9a-z]{26}`)
	csrfValue = regexp.MustCompile(`name="csrf" value="[^"]+"`)
	assetTag  = regexp.MustCompile(`\?v=[0-9a-f]+`)
	hashRef   = regexp.MustCompile(`&#34;session&#34;:&#34;[0-9a-f]{16}&#34;`)
	seqCell   = regexp.MustCompile(`<td data-label="#">\d+</td>`)
	verified  = regexp.MustCompile(`Chain verified: \d+ events`)
)

// normalize replaces what differs between runs: random ids, the CSRF
// token, asset digests.
func normalize(body string) string {
	body = randomID.ReplaceAllString(body, "${1}_X")
	body = csrfValue.ReplaceAllString(body, `name="csrf" value="CSRF"`)
	body = assetTag.ReplaceAllString(body, "?v=V")
	body = hashRef.ReplaceAllString(body, "&#34;session&#34;:&#34;S&#34;")
	body = seqCell.ReplaceAllString(body, `<td data-label="#">N</td>`)
	return verified.ReplaceAllString(body, "Chain verified: N events")
}

// golden compares got with testdata/name, rewriting it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create it")
	require.Equal(t, string(want), got, "rewrite with go test -update")
	require.False(t, strings.Contains(got, "\r"))
}
