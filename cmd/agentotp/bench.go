package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// runBench drives a running server with request → (decide → fetch) → use
// cycles from many agents and checks every response. It needs an admin key
// (AGENTOTP_ADMIN_KEY or <data>/admin.key) to create its agents.
//
// Mode "auto" installs an API-managed policy auto-approving "bench.*" for
// the run (so the server must load API policies); mode "human" approves each
// request through /decide as the admin, then fetches the token.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentotp bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8787", "server URL ($AGENTOTP_URL)")
	data := fs.String("data", "./data", "data directory holding admin.key when AGENTOTP_ADMIN_KEY is unset")
	agents := fs.Int("agents", 8, "agents to create (load is spread over them)")
	conc := fs.Int("concurrency", 16, "concurrent workers")
	dur := fs.Duration("duration", 10*time.Second, "how long to run")
	mode := fs.String("mode", "auto", "auto (policy auto-approves) or human (admin approves each request)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if v := env("AGENTOTP_URL"); v != "" && !flagSet(fs, "url") {
		*url = v
	}
	if *mode != "auto" && *mode != "human" {
		fmt.Fprintln(stderr, "agentotp bench: --mode must be auto or human")
		return 2
	}
	admin := env("AGENTOTP_ADMIN_KEY")
	if admin == "" {
		b, err := os.ReadFile(filepath.Join(*data, "admin.key"))
		if err != nil {
			fmt.Fprintln(stderr, "agentotp bench: need AGENTOTP_ADMIN_KEY or --data with admin.key:", err)
			return 2
		}
		admin = strings.TrimSpace(string(b))
	}
	b := &bencher{url: strings.TrimRight(*url, "/"), admin: admin, client: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute},
	}, human: *mode == "human"}
	res, err := b.run(ctx, *agents, *conc, *dur)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp bench:", err)
		return 1
	}
	res.print(stdout, *mode, *agents, *conc)
	if res.failures > 0 {
		return 1
	}
	return 0
}

func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

type bencher struct {
	url, admin string
	client     *http.Client
	human      bool
}

type benchResult struct {
	cycles   int64
	failures int64
	firstErr string
	elapsed  time.Duration
	lat      map[string][]time.Duration
}

// call performs one request and decodes the envelope's data into out,
// failing unless the status is one of want.
func (b *bencher) call(ctx context.Context, method, path, key string, body any, out any, want ...int) error {
	var rd io.Reader
	if body != nil {
		buf, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.url+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	res, err := b.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	var env struct {
		Success bool            `json:"success"`
		Data    json.RawMessage `json:"data"`
		Error   *struct{ Code, Message string }
	}
	if err := json.NewDecoder(res.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s %s: bad body: %w", method, path, err)
	}
	if !slices.Contains(want, res.StatusCode) || !env.Success {
		msg := ""
		if env.Error != nil {
			msg = env.Error.Code + ": " + env.Error.Message
		}
		return fmt.Errorf("%s %s: HTTP %d %s", method, path, res.StatusCode, msg)
	}
	if out != nil {
		return json.Unmarshal(env.Data, out)
	}
	return nil
}

type benchPerm struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Token  string `json:"token"`
}

func (b *bencher) run(ctx context.Context, nAgents, conc int, dur time.Duration) (*benchResult, error) {
	tag := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	keys := make([]string, nAgents)
	ids := make([]string, nAgents)
	for i := range keys {
		var a struct{ ID, APIKey string }
		if err := b.call(ctx, "POST", "/api/v1/agents", b.admin, map[string]any{"name": fmt.Sprintf("%s-%d", tag, i)}, &a, 201); err != nil {
			return nil, fmt.Errorf("create agent: %w", err)
		}
		keys[i], ids[i] = a.APIKey, a.ID
	}
	defer func() {
		for _, id := range ids {
			_ = b.call(context.Background(), "DELETE", "/api/v1/agents/"+id, b.admin, nil, nil, 200)
		}
	}()
	if !b.human {
		var pol struct{ ID string }
		err := b.call(ctx, "POST", "/api/v1/policies", b.admin, map[string]any{
			"name": tag, "priority": 1000000, "action": "auto_approve",
			"conditions": map[string]any{"action": map[string]any{"startsWith": "bench."}},
		}, &pol, 201)
		if err != nil {
			return nil, fmt.Errorf("install bench policy (is the policy engine on?): %w", err)
		}
		defer func() { _ = b.call(context.Background(), "DELETE", "/api/v1/policies/"+pol.ID, b.admin, nil, nil, 200) }()
	}

	res := &benchResult{lat: map[string][]time.Duration{}}
	var mu sync.Mutex
	var cycles, failures atomic.Int64
	runCtx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := keys[w%len(keys)]
			local := map[string][]time.Duration{}
			timed := func(name string, f func() error) error {
				t0 := time.Now()
				err := f()
				local[name] = append(local[name], time.Since(t0))
				return err
			}
			for runCtx.Err() == nil {
				err := b.cycle(runCtx, key, timed)
				switch {
				case err == nil:
					cycles.Add(1)
				case runCtx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
				default:
					if failures.Add(1) == 1 {
						mu.Lock()
						res.firstErr = err.Error()
						mu.Unlock()
					}
				}
			}
			mu.Lock()
			for k, v := range local {
				res.lat[k] = append(res.lat[k], v...)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.cycles, res.failures = cycles.Load(), failures.Load()
	return res, nil
}

// cycle is one request → (approve → fetch) → use, checking each answer.
func (b *bencher) cycle(ctx context.Context, key string, timed func(string, func() error) error) error {
	var p benchPerm
	want := 201
	if b.human {
		want = 202
	}
	if err := timed("request", func() error {
		return b.call(ctx, "POST", "/api/v1/permissions/request", key, map[string]any{"action": "bench.cycle", "scope": map[string]any{"max_items": 1}}, &p, want)
	}); err != nil {
		return err
	}
	if b.human {
		if err := timed("decide", func() error {
			return b.call(ctx, "POST", "/api/v1/permissions/"+p.ID+"/decide", b.admin, map[string]any{"approved": true}, nil, 200)
		}); err != nil {
			return err
		}
		if err := timed("fetch", func() error {
			return b.call(ctx, "GET", "/api/v1/permissions/"+p.ID, key, nil, &p, 200)
		}); err != nil {
			return err
		}
	}
	if p.Status != "approved" || !strings.HasPrefix(p.Token, "otp_") {
		return fmt.Errorf("permission %s: status %q without a token", p.ID, p.Status)
	}
	var u struct {
		Success       bool
		UsesRemaining int
		Reason        string
	}
	if err := timed("use", func() error {
		return b.call(ctx, "POST", "/api/v1/permissions/"+p.ID+"/use", key, map[string]any{"token": p.Token, "actionDetails": map[string]any{"items": 1}}, &u, 200)
	}); err != nil {
		return err
	}
	if !u.Success || u.UsesRemaining != 0 {
		return fmt.Errorf("use %s: success=%v remaining=%d reason=%q", p.ID, u.Success, u.UsesRemaining, u.Reason)
	}
	return nil
}

func (r *benchResult) print(w io.Writer, mode string, agents, conc int) {
	fmt.Fprintf(w, "mode %s, %d agents, %d workers, %.1fs\n", mode, agents, conc, r.elapsed.Seconds())
	fmt.Fprintf(w, "cycles: %d ok, %d failed (%.0f cycles/s)\n", r.cycles, r.failures, float64(r.cycles)/r.elapsed.Seconds())
	if r.firstErr != "" {
		fmt.Fprintf(w, "first failure: %s\n", r.firstErr)
	}
	names := make([]string, 0, len(r.lat))
	for k := range r.lat {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		l := r.lat[k]
		slices.Sort(l)
		q := func(p float64) time.Duration {
			if len(l) == 0 {
				return 0
			}
			return l[min(len(l)-1, int(p*float64(len(l))))]
		}
		fmt.Fprintf(w, "  %-8s n=%-7d p50=%-9s p90=%-9s p99=%-9s max=%s\n", k, len(l), q(.5).Round(time.Microsecond),
			q(.9).Round(time.Microsecond), q(.99).Round(time.Microsecond), q(1).Round(time.Microsecond))
	}
}
