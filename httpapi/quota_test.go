package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
)

// newLimitedServer is newTestServer with the service's request limits set.
func newLimitedServer(t *testing.T, maxObject int, maxStored int64) *testEnv {
	t.Helper()
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "agentotp.db")
	store, err := sqlite.Open(ctx, dbPath, sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	clock := newFakeClock()
	svc := agentotp.NewService(store, agentotp.Options{Clock: clock.Now, Evaluator: prefixEvaluator,
		MaxRequestObjectBytes: maxObject, MaxStoredBytesPerAgent: maxStored})
	srv := httptest.NewServer(httpapi.New(svc, httpapi.Options{RateLimit: -1}))
	adminKey := agentotp.NewUserKey()
	_, err = svc.EnsureAdmin(ctx, adminKey)
	require.NoError(t, err)
	e := &testEnv{t: t, clock: clock, store: store, dbPath: dbPath, svc: svc, srv: srv,
		client: &http.Client{Timeout: 30 * time.Second}, adminKey: adminKey.Reveal()}
	t.Cleanup(func() {
		srv.Close()
		require.NoError(t, store.Close())
	})
	return e
}

// A scope or context over the cap is a 413 naming the object, its size and
// the limit; at the cap it is accepted. The default cap is 8 KiB.
func TestObjectCapOverHTTP(t *testing.T) {
	e := newTestServer(t)
	agent := e.createAgent("big")
	blob := func(n int) map[string]any { return map[string]any{"b": strings.Repeat("x", n-len(`{"b":""}`))} }
	for _, field := range []string{"scope", "context"} {
		er := e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x", field: blob(9321)}).
			fail(t, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE")
		require.Equal(t, field+" is 9,321 bytes of JSON; the limit is 8,192", er.Message)
		require.Equal(t, "is 9,321 bytes of JSON; the limit is 8,192", er.Details[field])
		e.request(agent.Key, map[string]any{"action": "auto.x", field: blob(8192)}, http.StatusCreated)
	}
	er := e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x",
		"tool": map[string]any{"name": "write", "annotations": blob(8193)}}).fail(t, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE")
	require.Contains(t, er.Message, "tool.annotations is 8,193 bytes")

	// The setting moves the cap.
	wide := newLimitedServer(t, 16<<10, 0)
	agent = wide.createAgent("big")
	wide.request(agent.Key, map[string]any{"action": "auto.x", "scope": blob(9321)}, http.StatusCreated)
	er = wide.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x", "context": blob(20000)}).
		fail(t, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE")
	require.Equal(t, "context is 20,000 bytes of JSON; the limit is 16,384", er.Message)
}

// Past the storage quota a request is a 429 naming the quota; other agents
// and other calls go on.
func TestStorageQuotaOverHTTP(t *testing.T) {
	e := newLimitedServer(t, 0, 1000) // two small permissions take more

	agent := e.createAgent("hoarder")
	g := e.grant(agent.Key, nil)
	e.request(agent.Key, map[string]any{"action": "deny.x"}, http.StatusOK) // a denied request is stored too
	r := e.do("POST", "/api/v1/permissions/request", agent.Key, map[string]any{"action": "auto.x"})
	er := r.fail(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.Contains(t, er.Message, "storage quota reached")
	require.Equal(t, "1000", er.Details["quotaBytes"])
	require.NotEmpty(t, r.Header.Get("Retry-After"))
	require.True(t, e.use(agent.Key, g.ID, g.Token, nil).Success, "stored grants still work")
	e.grant(e.createAgent("other").Key, nil)
}
