package callback_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/notify/callback"
	"github.com/agentotp/agentotp/store/sqlite"
)

// TestEndToEnd runs the HTTP API over a real service on SQLite: an agent
// created through the API asks with a callbackUrl, a person approves, and
// the allow-listed receiver gets permission.approved signed with the
// secret the create response showed.
func TestEndToEnd(t *testing.T) {
	ctx := context.Background()
	rc := newReceiver(t, nil)
	key := []byte(strings.Repeat("e", 32))
	hosts := []string{rc.addr()}

	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	results := make(chan callback.Result, 10)
	n, err := callback.New(callback.Options{Hosts: hosts, Key: key, Agents: store,
		Observe: func(r callback.Result) { results <- r }})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })

	srv := httptest.NewUnstartedServer(nil)
	url := "http://" + srv.Listener.Addr().String()
	svc := agentotp.NewService(store, agentotp.Options{PublicURL: url, Notifier: n, CallbackHosts: hosts, WaitPoll: 20 * time.Millisecond})
	srv.Config.Handler = httpapi.New(svc, httpapi.Options{RateLimit: -1, PublicURL: url, CallbackKey: key})
	srv.Start()
	t.Cleanup(srv.Close)
	adminKey := agentotp.NewUserKey()
	_, err = svc.EnsureAdmin(ctx, adminKey)
	require.NoError(t, err)
	admin, err := svc.Authenticate(ctx, adminKey.Reveal())
	require.NoError(t, err)

	agent, err := otpclient.NewAdmin(url, adminKey.Reveal()).CreateAgent(ctx, otpclient.AgentInput{Name: "e2e"})
	require.NoError(t, err)
	secret := agent.CallbackKey()
	require.True(t, strings.HasPrefix(secret.Reveal(), agentotp.CallbackSecretPrefix))

	c := otpclient.New(url, agent.APIKey)
	p, err := c.RequestPermission(ctx, otpclient.Request{Action: "gmail.send", Resource: "email:bob@example.com",
		CallbackURL: rc.URL + "/agentotp"})
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusPending, p.Status)
	require.Equal(t, rc.URL+"/agentotp", p.CallbackURL)
	_, err = c.RequestPermission(ctx, otpclient.Request{Action: "gmail.send", CallbackURL: "http://localhost:" + rc.port() + "/x"})
	require.ErrorIs(t, err, otpclient.ErrValidation, "a host not on the list is refused at request time")

	_, err = svc.Decide(ctx, admin, agentotp.PermissionID(p.ID), agentotp.DecideInput{Approved: true, Reason: "ship it"})
	require.NoError(t, err)
	select {
	case r := <-results:
		require.True(t, r.Delivered(), "%v", r.Err)
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
	}
	hits := rc.got()
	require.Len(t, hits, 1)
	ev, err := otpclient.VerifyCallback(secret, hits[0].header.Get(otpclient.CallbackSignatureHeader), hits[0].body, time.Now(), 0)
	require.NoError(t, err)
	require.Equal(t, "permission.approved", ev.Event)
	require.Equal(t, p.ID, ev.ID)
	require.Equal(t, agent.ID, ev.AgentID)
	require.Equal(t, "ship it", ev.Reason)
	require.Equal(t, "user", ev.DecidedBy)

	// The token still reaches the agent the usual way, and only there.
	got, err := c.WaitForDecision(ctx, p.ID)
	require.NoError(t, err)
	require.True(t, got.Approved())
	require.NotContains(t, string(hits[0].body), got.Token.Reveal())

	// Revoking sends the next outcome.
	_, err = c.Revoke(ctx, p.ID, "done")
	require.NoError(t, err)
	select {
	case r := <-results:
		require.True(t, r.Delivered(), "%v", r.Err)
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
	}
	hits = rc.got()
	require.Len(t, hits, 2)
	ev, err = otpclient.VerifyCallback(secret, hits[1].header.Get(otpclient.CallbackSignatureHeader), hits[1].body, time.Now(), 0)
	require.NoError(t, err)
	require.Equal(t, "permission.revoked", ev.Event)
}
