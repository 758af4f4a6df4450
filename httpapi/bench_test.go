package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/agentotp/agentotp"
)

// BenchmarkRequestAndUseHTTP measures the HTTP hot path end to end: an
// auto-approving policy, the real SQLite store with its default durable
// settings (synchronous FULL) in a temp dir, a real server on loopback and
// keep-alive clients. One iteration = one request and its use, every
// response checked: "two-call" is POST /request (201 + token) then POST
// /use (success:true); "one-call" is POST /request with "use" (201, status
// used, use.success).
func BenchmarkRequestAndUseHTTP(b *testing.B) {
	for _, oneCall := range []bool{false, true} {
		name := "two-call"
		if oneCall {
			name = "one-call"
		}
		b.Run(name, func(b *testing.B) { requestAndUseHTTP(b, oneCall) })
	}
}

func requestAndUseHTTP(b *testing.B, oneCall bool) {
	e := newTestServer(b)
	agent := e.createAgent("bench")
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}}
	defer client.CloseIdleConnections()
	reqBody := []byte(`{"action":"auto.bench","resource":"bench:1","scope":{"max_n":5},"ttl":60}`)
	if oneCall {
		reqBody = []byte(`{"action":"auto.bench","resource":"bench:1","scope":{"max_n":5},"ttl":60,"use":{"actionDetails":{"n":1}}}`)
	}

	post := func(path string, body []byte, want int, v any) error {
		req, err := http.NewRequest("POST", e.srv.URL+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+agent.Key)
		req.Header.Set("Content-Type", "application/json")
		res, err := client.Do(req)
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
	// Agents run concurrently; 16 clients per core lets the store batch
	// their commits, as it does in production.
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var granted struct {
				Success bool `json:"success"`
				Data    struct {
					ID     string `json:"id"`
					Status string `json:"status"`
					Token  string `json:"token"`
					Use    *struct {
						Success       bool `json:"success"`
						UsesRemaining int  `json:"usesRemaining"`
					} `json:"use"`
				} `json:"data"`
			}
			if err := post("/api/v1/permissions/request", reqBody, http.StatusCreated, &granted); err != nil {
				b.Error(err)
				return
			}
			if oneCall {
				if !granted.Success || granted.Data.Status != "used" || granted.Data.Use == nil || !granted.Data.Use.Success {
					b.Errorf("request with use: unexpected answer %+v", granted)
					return
				}
				continue
			}
			if !granted.Success || granted.Data.Status != "approved" || !agentotp.ValidTokenFormat(granted.Data.Token) {
				b.Errorf("request: unexpected answer %+v", granted)
				return
			}
			useBody, _ := json.Marshal(map[string]any{"token": granted.Data.Token, "actionDetails": map[string]any{"n": 1}})
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
				b.Errorf("use: unexpected answer %+v", used)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cycles/s")
}

// BenchmarkAuthenticate measures the per-request key lookup: format check,
// SHA-256, an indexed read and a constant-time compare.
func BenchmarkAuthenticate(b *testing.B) {
	e := newTestServer(b)
	ctx := context.Background()
	var keys []string
	for i := range 100 {
		keys = append(keys, e.createAgent(fmt.Sprintf("auth-%03d", i)).Key)
	}
	userKey := e.createUser("auth-user", "approver").Key
	cases := []struct {
		name   string
		key    string
		wantOK bool
	}{
		{"agent key", keys[len(keys)/2], true},
		{"user key", userKey, true},
		{"unknown key", agentotp.NewAgentKey().Reveal(), false},
		{"malformed key", "ak_not-a-key", false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, err := e.svc.Authenticate(ctx, c.key)
				if (err == nil) != c.wantOK {
					b.Fatalf("Authenticate(%s): %v", c.name, err)
				}
			}
		})
	}
	b.Run("agent key parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := e.svc.Authenticate(ctx, keys[7]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
