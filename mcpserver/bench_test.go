package mcpserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/mcpserver"
	"github.com/agentotp/agentotp/store/sqlite"
)

// benchParallelism is goroutines per GOMAXPROCS: 16 per core, as in
// httpapi's BenchmarkRequestAndUseHTTP, so the store batches commits as it
// does in production (32 concurrent callers on 2 cores).
const benchParallelism = 16

// BenchmarkRequestUse compares the REST API with the MCP tools over
// streamable HTTP on one server and one store: the production wiring of
// newEnv (httpapi and /mcp on one listener, the MCP endpoint behind
// AgentOnly + ServiceAgents) but with the store's production durability
// (synchronous FULL). One iteration = one auto-approved request (token in
// the answer) plus one use of it, every answer checked. Both sides are raw
// clients sharing one keep-alive http.Client: net/http + encoding/json for
// REST, one mcp-go client (its own session) per goroutine for MCP.
//
// Note: with -count N each sub-benchmark runs N times in a row (all rest
// runs, then all mcp runs) against the same store, which keeps growing.
func BenchmarkRequestUse(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "agentotp.db"), sqlite.Options{}) // default: FULL
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	url := "http://" + srv.Listener.Addr().String()
	svc := agentotp.NewService(st, agentotp.Options{Evaluator: testPolicy, PublicURL: url})
	api := httpapi.New(svc, httpapi.Options{RateLimit: -1, PublicURL: url})
	mcpSrv := mcpserver.New(mcpserver.Options{})
	h := api.AgentOnly(mcpserver.ServiceAgents(svc, mcpSrv.HTTP(mcpserver.HTTPOptions{AllowedOrigins: []string{url}})))
	api.Handle("/mcp", h)
	api.Handle("/mcp/", h)
	srv.Config.Handler = api
	srv.Start()
	defer func() {
		srv.CloseClientConnections()
		srv.Close()
		if err := st.Close(); err != nil {
			b.Error(err)
		}
	}()
	_, key, err := svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	bearer := "Bearer " + key.Reveal()

	// One keep-alive pool for every caller, REST and MCP alike (the
	// default transport keeps only 2 idle connections per host).
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}}
	defer hc.CloseIdleConnections()

	// The same request and use on both sides.
	const action, resource = "auto.bench", "bench:1"
	scope := map[string]any{"max_n": 5}
	details := map[string]any{"n": 1}

	b.Run("rest", func(b *testing.B) {
		reqBody, _ := json.Marshal(map[string]any{"action": action, "resource": resource, "scope": scope, "ttl": 60})
		post := func(path string, body []byte, want int, v any) error {
			req, err := http.NewRequest("POST", url+path, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", bearer)
			req.Header.Set("Content-Type", "application/json")
			res, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer res.Body.Close()
			raw, err := io.ReadAll(res.Body)
			if err != nil {
				return err
			}
			if res.StatusCode != want {
				return fmt.Errorf("%s: status %d: %s", path, res.StatusCode, raw)
			}
			return json.Unmarshal(raw, v)
		}
		b.ReportAllocs()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				var granted struct {
					Success bool `json:"success"`
					Data    struct {
						ID     string `json:"id"`
						Status string `json:"status"`
						Token  string `json:"token"`
					} `json:"data"`
				}
				if err := post("/api/v1/permissions/request", reqBody, http.StatusCreated, &granted); err != nil {
					b.Error(err)
					return
				}
				if !granted.Success || granted.Data.Status != "approved" || granted.Data.ID == "" ||
					!agentotp.ValidTokenFormat(granted.Data.Token) {
					b.Errorf("request: not approved: %+v", granted)
					return
				}
				useBody, _ := json.Marshal(map[string]any{"token": granted.Data.Token, "actionDetails": details})
				var used struct {
					Success bool `json:"success"`
					Data    struct {
						Success       bool `json:"success"`
						UsesRemaining int  `json:"usesRemaining"`
					} `json:"data"`
				}
				if err := post("/api/v1/permissions/"+granted.Data.ID+"/use", useBody, http.StatusOK, &used); err != nil {
					b.Error(err)
					return
				}
				if !used.Success || !used.Data.Success || used.Data.UsesRemaining != 0 {
					b.Errorf("use: unsuccessful: %+v", used)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
	})

	// MCP sessions are opened once, outside the timer, and shared by the
	// repeated runs of the sub-benchmark: each parallel goroutine takes one
	// for itself (a session serves one caller at a time, as an agent would).
	sessions := make(chan *client.Client, 1024)
	defer func() {
		close(sessions)
		for c := range sessions {
			_ = c.Close()
		}
	}()
	b.Run("mcp-streamable-http", func(b *testing.B) {
		for n := benchParallelism * runtime.GOMAXPROCS(0); len(sessions) < n; {
			c, err := openBenchSession(url, bearer, hc)
			if err != nil {
				b.Fatal(err)
			}
			sessions <- c
		}
		reqArgs := map[string]any{"action": action, "resource": resource, "scope": scope, "ttl_seconds": 60}
		b.ReportAllocs()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			c := <-sessions
			defer func() { sessions <- c }()
			for pb.Next() {
				granted, err := callBenchTool(c, "request_permission", reqArgs)
				if err != nil {
					b.Error(err)
					return
				}
				id, _ := granted["id"].(string)
				tok, _ := granted["token"].(string)
				if granted["status"] != "approved" || id == "" || !agentotp.ValidTokenFormat(tok) {
					b.Errorf("request_permission: not approved: %v", granted)
					return
				}
				used, err := callBenchTool(c, "use_permission", map[string]any{"id": id, "token": tok, "details": details})
				if err != nil {
					b.Error(err)
					return
				}
				if used["success"] != true || used["uses_remaining"] != 0.0 {
					b.Errorf("use_permission: unsuccessful: %v", used)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
	})
}

// openBenchSession opens and initializes one MCP session over streamable
// HTTP, as the agent holding bearer.
func openBenchSession(url, bearer string, hc *http.Client) (*client.Client, error) {
	tr, err := transport.NewStreamableHTTP(url+"/mcp",
		transport.WithHTTPBasicClient(hc),
		transport.WithHTTPHeaders(map[string]string{"Authorization": bearer}))
	if err != nil {
		return nil, err
	}
	c := client.NewClient(tr, client.WithProtocolVersion(mcp.ProtocolVersion20251125))
	if err := c.Start(context.Background()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var req mcp.InitializeRequest
	req.Params.ProtocolVersion = mcp.ProtocolVersion20251125
	req.Params.ClientInfo = mcp.Implementation{Name: "bench-client", Version: "1.0.0"}
	if _, err := c.Initialize(ctx, req); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// callBenchTool calls a tool and returns its structured content; an error
// result is an error.
func callBenchTool(c *client.Client, name string, args map[string]any) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var req mcp.CallToolRequest
	req.Params.Name, req.Params.Arguments = name, args
	res, err := c.CallTool(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	data, ok := res.StructuredContent.(map[string]any)
	if !ok {
		raw, err := json.Marshal(res.StructuredContent)
		if err != nil {
			return nil, fmt.Errorf("%s: structured content: %w", name, err)
		}
		if err := json.Unmarshal(raw, &data); err != nil {
			return nil, fmt.Errorf("%s: structured content: %w", name, err)
		}
	}
	if res.IsError {
		return data, fmt.Errorf("%s: error result: %v", name, data)
	}
	return data, nil
}
