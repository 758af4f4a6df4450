package main

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
)

// TestQuickstart runs the example against a real in-process server while a
// "human" approves the request it makes, and checks the permission ends
// used — spent exactly once.
func TestQuickstart(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{})
	require.NoError(t, err)
	defer st.Close()
	svc := agentotp.NewService(st, agentotp.Options{})
	srv := httptest.NewServer(httpapi.New(svc, httpapi.Options{RateLimit: -1}))
	defer srv.Close()
	adminKey := agentotp.NewUserKey()
	_, err = svc.EnsureAdmin(ctx, adminKey)
	require.NoError(t, err)
	admin, err := svc.Authenticate(ctx, adminKey.Reveal())
	require.NoError(t, err)
	_, agentKey, err := svc.CreateAgent(ctx, admin, agentotp.AgentInput{Name: "quickstart"})
	require.NoError(t, err)
	t.Setenv("AGENTOTP_URL", srv.URL)
	t.Setenv("AGENTOTP_API_KEY", agentKey.Reveal())

	approved := make(chan agentotp.PermissionID, 1)
	go func() {
		for range 200 {
			list, _, err := svc.ListPermissions(ctx, admin, agentotp.PermissionFilter{Status: agentotp.StatusPending})
			if err == nil && len(list) == 1 {
				if _, err := svc.Decide(ctx, admin, list[0].ID, agentotp.DecideInput{Approved: true}); err == nil {
					approved <- list[0].ID
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		close(approved)
	}()
	require.NoError(t, run())
	id, ok := <-approved
	require.True(t, ok, "the example's request was never pending")
	perm, err := st.Permission(ctx, id)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusUsed, perm.Status)
	require.Equal(t, "gmail.send", perm.Action)
}
