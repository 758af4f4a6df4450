package mcpserver_test

import (
	"context"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/mcp"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/mcpserver"
)

// BenchmarkGatewayOverhead measures the latency the gateway adds to one
// auto-approved tool call: the same call (echo, read-only, approved by the
// policy) on the same downstream binary over stdio, once directly and once
// through the gateway, alternating in one loop so both see the same machine
// load. One iteration = one direct call + one gateway call, each checked.
// Reported: the median of each (direct-ns/call, gateway-ns/call) and their
// difference (added-ns/call).
//
// The gateway asks and spends an at-once approval in one store transaction:
// embedded (agentotp.Service on SQLite in process; sync=FULL is the
// production default), or remote (through otpclient to the HTTP API over
// loopback TCP, one round trip: served in this process, or by `agentotp
// serve` at $AGENTOTP_BENCH_SERVER with agent key $AGENTOTP_BENCH_KEY).
// perms=memory approves in memory: the gateway's own cost.
//
//	go test -run '^$' -bench GatewayOverhead -benchtime 2000x ./mcpserver
func BenchmarkGatewayOverhead(b *testing.B) {
	bin := buildDownstream(b, b.TempDir())
	for _, mode := range []string{"sync=FULL", "sync=NORMAL", "remote/sync=FULL", "perms=memory"} {
		b.Run(mode, func(b *testing.B) {
			var perms mcpserver.Permissions = approveAll{}
			if remote, ok := strings.CutPrefix(mode, "remote/sync="); ok {
				// The gateway's server: mode, through otpclient to the
				// HTTP API on a loopback listener.
				e := newGWEnv(b, remote)
				srv := httptest.NewServer(httpapi.New(e.svc, httpapi.Options{RateLimit: -1}))
				b.Cleanup(srv.Close)
				perms = otpclient.New(srv.URL, e.agentKey.Reveal())
				if url := os.Getenv("AGENTOTP_BENCH_SERVER"); url != "" {
					// A real `agentotp serve` in its own process, with
					// the example gateway policy and an agent "gateway".
					perms = otpclient.New(url, os.Getenv("AGENTOTP_BENCH_KEY"))
				}
			} else if sync, ok := strings.CutPrefix(mode, "sync="); ok {
				perms = newGWEnv(b, sync).perms()
			}
			_, gw := startGatewayAs(b, perms, "bench", mcpserver.GatewayOptions{Servers: []mcpserver.Downstream{{Name: "dst", Command: bin}}})
			direct, err := client.NewStdioMCPClient(bin, nil)
			if err != nil {
				b.Fatal(err)
			}
			initLegacy(b, direct)

			ctx := context.Background()
			once := func(c *client.Client, name string) time.Duration {
				var req mcp.CallToolRequest
				req.Params.Name, req.Params.Arguments = name, map[string]any{"text": "bench"}
				start := time.Now()
				res, err := c.CallTool(ctx, req)
				d := time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if res.IsError || len(res.Content) != 1 || res.Content[0].(mcp.TextContent).Text != "echo: bench" {
					b.Fatalf("%s: unexpected result %+v", name, res)
				}
				return d
			}
			for range 50 { // warm up both paths
				once(direct, "echo")
				once(gw, "dst__echo")
			}

			ds, gs := make([]time.Duration, 0, b.N), make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				if i%2 == 0 {
					ds = append(ds, once(direct, "echo"))
					gs = append(gs, once(gw, "dst__echo"))
				} else {
					gs = append(gs, once(gw, "dst__echo"))
					ds = append(ds, once(direct, "echo"))
				}
			}
			b.StopTimer()
			md, mg := median(ds), median(gs)
			b.ReportMetric(float64(md), "direct-ns/call")
			b.ReportMetric(float64(mg), "gateway-ns/call")
			b.ReportMetric(float64(mg-md), "added-ns/call")
		})
	}
}

// approveAll approves every request at once and accepts every use,
// without a store.
type approveAll struct{ mcpserver.Permissions }

func (approveAll) Authorize(_ context.Context, req agentotp.PermissionRequest, _ time.Duration) (*agentotp.Permission, agentotp.Secret, error) {
	return &agentotp.Permission{ID: "perm_memory", Action: req.Action, Scope: req.Scope, Status: agentotp.StatusApproved}, "otp_memory", nil
}

func (approveAll) Spend(context.Context, agentotp.PermissionID, agentotp.Secret, map[string]any) error {
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func (approveAll) RecordOutcome(context.Context, agentotp.PermissionID, agentotp.Outcome) error {
	return nil
}
