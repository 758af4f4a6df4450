package httpapi_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
)

// A v0.1.1 client polling a request that was revoked before any decision
// must stop waiting: the agent reads it as a refusal with the reason, while
// decidedBy (and our client, and staff) still tell it was revoked.
func TestRevokedPendingReadsAsRefusalToAgents(t *testing.T) {
	e := newTestServer(t)
	a := e.createAgent("legacy")
	p := e.pending(a.Key, "human.send")
	e.do("POST", "/api/v1/permissions/"+p.ID+"/revoke", a.Key, map[string]any{"reason": "the user cancelled"}).data(t, http.StatusOK, nil)

	var agentView map[string]any
	e.do("GET", "/api/v1/permissions/"+p.ID, a.Key, nil).data(t, http.StatusOK, &agentView)
	require.Equal(t, "denied", agentView["status"])
	require.Equal(t, "revoked", agentView["decidedBy"])
	require.Equal(t, "revoked before a decision: the user cancelled", agentView["reason"])

	var staffView map[string]any
	e.do("GET", "/api/v1/permissions/"+p.ID, e.adminKey, nil).data(t, http.StatusOK, &staffView)
	require.Equal(t, "revoked", staffView["status"])

	got, err := otpclient.New(e.srv.URL, a.Key).GetPermission(context.Background(), p.ID)
	require.NoError(t, err)
	require.Equal(t, agentotp.StatusRevoked, got.Status)
	require.Contains(t, got.Reason, "the user cancelled")
}
