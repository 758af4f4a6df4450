package otpclient_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
)

func TestAuthorizeCarriesToolCall(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent, err := e.svc.Store().Agent(ctx, agentotp.AgentID(e.agent.ID))
	require.NoError(t, err)
	// In-process values: the server reads them back from JSON as float64,
	// and the hash is the same.
	args := map[string]any{"path": "/srv/share/a.txt", "mode": 420, "size": json.Number("1.0e3")}
	want := &agentotp.ToolCall{Server: "fs", Name: "write_file", Annotations: map[string]any{"destructiveHint": true},
		ArgsHash: agentotp.ArgsHash(args)}
	require.Equal(t, agentotp.ArgsHash(map[string]any{"path": "/srv/share/a.txt", "mode": 420.0, "size": 1000.0}), want.ArgsHash)

	impls := map[string]authorizer{
		"client":  e.client(),
		"session": e.svc.AgentSession(agentotp.Principal{Agent: agent}),
	}
	for name, a := range impls {
		t.Run(name, func(t *testing.T) {
			call := &agentotp.ToolCall{Server: "fs", Name: "write_file", Annotations: map[string]any{"destructiveHint": true}, Args: args}
			p, tok, err := a.Authorize(ctx, agentotp.PermissionRequest{Action: "auto.mcp.fs.write_file", Scope: args, Tool: call}, 0)
			require.NoError(t, err)
			require.Equal(t, agentotp.StatusApproved, p.Status)
			require.Equal(t, want, p.Tool)
			require.Empty(t, call.ArgsHash, "the caller's tool call is not modified")

			stored, err := e.svc.Store().Permission(ctx, p.ID)
			require.NoError(t, err)
			require.Equal(t, want, stored.Tool, "the server keeps the call")
			require.NoError(t, a.Spend(ctx, p.ID, tok, args), "a tool call is spent with its exact arguments")

			_, _, err = a.Authorize(ctx, agentotp.PermissionRequest{Action: "auto.x", Tool: &agentotp.ToolCall{Server: "fs"}}, 0)
			require.ErrorIs(t, err, agentotp.ErrValidation)
			require.ErrorContains(t, err, "tool.name")
		})
	}

	t.Run("request, read back, approver's view and domain", func(t *testing.T) {
		c := e.client()
		p, err := c.RequestPermission(ctx, otpclient.Request{Action: "human.mcp.fs.write_file", Scope: args,
			Tool: &agentotp.ToolCall{Server: "fs", Name: "write_file", Annotations: map[string]any{"destructiveHint": true},
				Args: args, ArgsHash: "ignored: the server computes it"}})
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusPending, p.Status)
		require.Equal(t, want, p.Tool)

		got, err := c.GetPermission(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, want, got.Tool)
		staff, err := e.admin.GetPermission(ctx, p.ID)
		require.NoError(t, err)
		require.Equal(t, want, staff.Tool)
		require.Equal(t, want, got.Domain().Tool)
		require.NotSame(t, got.Tool, got.Domain().Tool)

		plain, err := c.RequestPermission(ctx, otpclient.Request{Action: "auto.y"})
		require.NoError(t, err)
		require.Nil(t, plain.Tool)
		require.Nil(t, plain.Domain().Tool)
		_, err = c.Revoke(ctx, p.ID, "done")
		require.NoError(t, err)
	})

	t.Run("a retry re-sends the same call", func(t *testing.T) {
		c := e.client()
		req := otpclient.Request{Action: "auto.retry", IdempotencyKey: "tool-retry", Scope: args,
			Tool: &agentotp.ToolCall{Server: "fs", Name: "write_file", Args: args}}
		first, err := c.RequestPermission(ctx, req)
		require.NoError(t, err)
		again, err := c.RequestPermission(ctx, req)
		require.NoError(t, err)
		require.Equal(t, first.ID, again.ID)
		req.Tool = &agentotp.ToolCall{Server: "fs", Name: "delete_file", Args: args}
		_, err = c.RequestPermission(ctx, req)
		require.ErrorIs(t, err, otpclient.ErrConflict)
	})
}

// RecordOutcome reports a spent permission's result, in process and over
// HTTP alike.
func TestRecordOutcome(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent, err := e.svc.Store().Agent(ctx, agentotp.AgentID(e.agent.ID))
	require.NoError(t, err)
	type recorder interface {
		authorizer
		RecordOutcome(ctx context.Context, id agentotp.PermissionID, o agentotp.Outcome) error
	}
	for name, a := range map[string]recorder{"client": e.client(), "session": e.svc.AgentSession(agentotp.Principal{Agent: agent})} {
		t.Run(name, func(t *testing.T) {
			p, tok, err := a.Authorize(ctx, agentotp.PermissionRequest{Action: "auto.outcome"}, 0)
			require.NoError(t, err)
			o := agentotp.Outcome{Success: false, Duration: 1500 * time.Millisecond, ResultBytes: 10, Error: "downstream timed out"}
			require.ErrorIs(t, a.RecordOutcome(ctx, p.ID, o), agentotp.ErrConflict, "nothing was spent yet")
			require.NoError(t, a.Spend(ctx, p.ID, tok, nil))
			require.NoError(t, a.RecordOutcome(ctx, p.ID, o))
			events, err := e.svc.Store().AuditEvents(ctx, agentotp.AuditFilter{PermissionID: p.ID, Type: agentotp.EventToolResult})
			require.NoError(t, err)
			require.Len(t, events, 1)
			require.Equal(t, map[string]any{"success": false, "durationMs": 1500.0, "resultBytes": 10.0, "error": "downstream timed out"}, events[0].Details)
		})
	}
}
