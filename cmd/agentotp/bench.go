package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite" // the baseline writes its own SQLite file
)

const benchUsage = `usage: agentotp bench [flags]

Drives a running server with request → use cycles from many agents and checks
every response. --baseline also measures, in the same run, how many durable
single-row commits per second the disk takes (a sequential loop of INSERTs into
a fresh SQLite file, WAL, synchronous=FULL) and prints cycles/s ÷ that rate;
--runs N alternates the two phases N times and reports medians. --rate R
starts R cycles per second whatever the answers (open loop): latencies then
count from each cycle's scheduled start, and --concurrency caps the cycles in
flight (a cycle due while the cap is reached is dropped and counted).

`

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
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage); fs.PrintDefaults() }
	url := fs.String("url", "http://127.0.0.1:8787", "server URL ($AGENTOTP_URL); several, comma-separated, spread the load over instances sharing a database")
	data := fs.String("data", "./data", "data directory holding admin.key when AGENTOTP_ADMIN_KEY is unset")
	var o benchOptions
	fs.IntVar(&o.agents, "agents", 8, "agents to create (load is spread over them)")
	fs.IntVar(&o.conc, "concurrency", 16, "concurrent workers (with --rate: the most cycles in flight)")
	fs.DurationVar(&o.dur, "duration", 10*time.Second, "how long each load phase runs")
	mode := fs.String("mode", "auto", "auto (policy auto-approves) or human (admin approves each request)")
	fs.BoolVar(&o.oneCall, "one-call", false, "spend the first use in the request itself (\"use\" field): one call per cycle (auto mode)")
	fs.Float64Var(&o.rate, "rate", 0, "open loop: start this many cycles per second regardless of completions (0: closed loop)")
	fs.IntVar(&o.runs, "runs", 1, "load phases (alternating with baseline phases under --baseline); medians are reported")
	fs.BoolVar(&o.baseline, "baseline", false, "measure the disk's durable single-row commit rate and report the ratio")
	fs.StringVar(&o.baselineDir, "baseline-dir", "", "directory for the baseline's temporary SQLite file; put it on the server's file system (default --data)")
	fs.StringVar(&o.baselineDB, "baseline-db", "", "with --baseline, time one-row commits on this PostgreSQL database (postgres://…, a table created and dropped) instead of a SQLite file")
	fs.DurationVar(&o.baselineDur, "baseline-duration", 3*time.Second, "how long each baseline phase runs")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return helpShown
		}
		return 2
	}
	if v := env("AGENTOTP_URL"); v != "" && !flagSet(fs, "url") {
		*url = v
	}
	if *mode != "auto" && *mode != "human" {
		fmt.Fprintln(stderr, "agentotp bench: --mode must be auto or human")
		return 2
	}
	o.human = *mode == "human"
	if o.baselineDir == "" {
		o.baselineDir = *data
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(stderr, "agentotp bench:", err)
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
	var urls []string
	for u := range strings.SplitSeq(*url, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		fmt.Fprintln(stderr, "agentotp bench: --url is empty")
		return 2
	}
	b := &bencher{url: urls[0], urls: urls, admin: admin, client: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: time.Minute},
	}, human: o.human, oneCall: o.oneCall}
	rep, err := b.run(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp bench:", err)
		return 1
	}
	rep.Mode = *mode
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "agentotp bench:", err)
			return 1
		}
	} else {
		rep.print(stdout)
	}
	if rep.Failures > 0 {
		return 1
	}
	return 0
}

func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// benchOptions are the flags that shape a run.
type benchOptions struct {
	agents, conc, runs int
	dur, baselineDur   time.Duration
	human, oneCall     bool
	rate               float64
	baseline           bool
	baselineDir        string
	baselineDB         string
}

func (o benchOptions) check() error {
	switch {
	case o.agents < 1:
		return errors.New("--agents must be at least 1")
	case o.conc < 1:
		return errors.New("--concurrency must be at least 1")
	case o.runs < 1:
		return errors.New("--runs must be at least 1")
	case o.dur <= 0:
		return errors.New("--duration must be positive")
	case o.rate < 0 || o.rate > 1e6:
		return errors.New("--rate must be between 0 (closed loop) and 1000000 cycles/s")
	case o.baseline && o.baselineDur <= 0:
		return errors.New("--baseline-duration must be positive")
	case o.oneCall && o.human:
		return errors.New("--one-call needs --mode auto: a use can ride on the request only when the policy approves at once")
	}
	return nil
}

type bencher struct {
	url, admin     string
	urls           []string // the instances the load is spread over
	client         *http.Client
	human, oneCall bool
}

// call performs one request and decodes the envelope's data into out,
// failing unless the status is one of want.
func (b *bencher) call(ctx context.Context, base, method, path, key string, body any, out any, want ...int) error {
	var rd io.Reader
	if body != nil {
		buf, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
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
	// One pass: data decodes straight into out (the load generator shares
	// the server's cores, so its own work is kept small).
	if out == nil {
		out = &struct{}{}
	}
	env := struct {
		Success bool `json:"success"`
		Data    any  `json:"data"`
		Error   *struct{ Code, Message string }
	}{Data: out}
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
	return nil
}

type benchUse struct {
	Success       bool
	UsesRemaining int
	Reason        string
}

type benchPerm struct {
	ID     string    `json:"id"`
	Status string    `json:"status"`
	Token  string    `json:"token"`
	Use    *benchUse `json:"use"`
}

// run sets up the agents (and the auto-approving rule), then alternates
// baseline and load phases o.runs times, and cleans up.
func (b *bencher) run(ctx context.Context, o benchOptions) (*benchReport, error) {
	rep := &benchReport{
		Machine: machine(), Date: time.Now().UTC().Format("2006-01-02 15:04:05 UTC"),
		OneCall: o.oneCall, Agents: o.agents, Concurrency: o.conc, Rate: o.rate,
		DurationS: o.dur.Seconds(), lat: map[string][]time.Duration{},
	}
	if o.baseline {
		rep.BaselineDir = o.baselineDir
		if o.baselineDB != "" {
			rep.BaselineDir, rep.BaselinePostgres = "", true
		}
	}
	tag := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	keys := make([]string, o.agents)
	ids := make([]string, o.agents)
	defer func() {
		for _, id := range ids {
			if id != "" {
				_ = b.call(context.Background(), b.url, "DELETE", "/api/v1/agents/"+id, b.admin, nil, nil, 200)
			}
		}
	}()
	for i := range keys {
		var a struct{ ID, APIKey string }
		if err := b.call(ctx, b.url, "POST", "/api/v1/agents", b.admin, map[string]any{"name": fmt.Sprintf("%s-%d", tag, i)}, &a, 201); err != nil {
			return nil, fmt.Errorf("create agent: %w", err)
		}
		keys[i], ids[i] = a.APIKey, a.ID
	}
	if !b.human {
		var pol struct{ ID string }
		err := b.call(ctx, b.url, "POST", "/api/v1/policies", b.admin, map[string]any{
			"name": tag, "priority": 1000000, "action": "auto_approve",
			"conditions": map[string]any{"action": map[string]any{"startsWith": "bench."}},
		}, &pol, 201)
		if err != nil {
			return nil, fmt.Errorf("install bench policy (is the policy engine on?): %w", err)
		}
		defer func() {
			_ = b.call(context.Background(), b.url, "DELETE", "/api/v1/policies/"+pol.ID, b.admin, nil, nil, 200)
		}()
		if err := b.awaitRule(ctx, keys[0]); err != nil {
			return nil, err
		}
	}

	var elapsed time.Duration
	for i := range o.runs {
		var r benchRun
		if o.baseline {
			var (
				rate float64
				err  error
			)
			if o.baselineDB != "" {
				rate, err = postgresCommitRate(ctx, o.baselineDB, o.baselineDur)
				if err != nil {
					return nil, fmt.Errorf("baseline on --baseline-db: %w", err)
				}
			} else if rate, err = durableCommitRate(ctx, o.baselineDir, o.baselineDur); err != nil {
				return nil, fmt.Errorf("baseline in %s (--baseline-dir): %w", o.baselineDir, err)
			}
			r.Baseline = rate
		}
		var ph *benchPhase
		if o.rate > 0 {
			ph = b.openLoop(ctx, keys, o.rate, o.conc, o.dur)
		} else {
			ph = b.closedLoop(ctx, keys, o.conc, o.dur)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r.Cycles, r.Failures = ph.cycles, ph.failures
		r.CyclesPerSec = float64(ph.cycles) / ph.elapsed.Seconds()
		if r.Baseline > 0 {
			r.Ratio = r.CyclesPerSec / r.Baseline
		}
		rep.Runs = append(rep.Runs, r)
		rep.Cycles += ph.cycles
		rep.Failures += ph.failures
		rep.Started += ph.started
		rep.Late += ph.late
		rep.Dropped += ph.dropped
		if rep.FirstError == "" {
			rep.FirstError = ph.firstErr
		}
		for k, v := range ph.lat {
			rep.lat[k] = append(rep.lat[k], v...)
		}
		elapsed += ph.elapsed
		if i == 0 && ph.failures > 0 {
			break // a broken setup fails the same way every run
		}
	}
	rep.CyclesPerSec = float64(rep.Cycles) / elapsed.Seconds()
	rep.MedianCyclesPerSec = median(rep.Runs, func(r benchRun) float64 { return r.CyclesPerSec })
	if o.baseline {
		rep.Baseline = median(rep.Runs, func(r benchRun) float64 { return r.Baseline })
		rep.Ratio = median(rep.Runs, func(r benchRun) float64 { return r.Ratio })
	}
	rep.Latency = map[string]benchLatency{}
	for k, l := range rep.lat {
		rep.Latency[k] = latencyOf(l)
	}
	return rep, nil
}

// benchPhase is what one load phase measured.
type benchPhase struct {
	cycles, failures       int64
	started, late, dropped int64 // open loop only
	firstErr               string
	elapsed                time.Duration
	lat                    map[string][]time.Duration
}

// record counts one finished cycle under mu.
func (p *benchPhase) record(mu *sync.Mutex, err error) {
	mu.Lock()
	defer mu.Unlock()
	if err == nil {
		p.cycles++
	} else if p.failures++; p.failures == 1 {
		p.firstErr = err.Error()
	}
}

// merge adds latencies measured by one worker under mu.
func (p *benchPhase) merge(mu *sync.Mutex, t timer) {
	mu.Lock()
	defer mu.Unlock()
	for k, v := range t {
		p.lat[k] = append(p.lat[k], v...)
	}
}

// timer collects the latency of each call of one cycle, and of the cycle.
type timer map[string][]time.Duration

func (t timer) timed(name string, f func() error) error {
	t0 := time.Now()
	err := f()
	t[name] = append(t[name], time.Since(t0))
	return err
}

// closedLoop runs conc workers, each starting its next cycle when the last
// one is answered, for dur. Cycles cut off by the deadline do not count.
func (b *bencher) closedLoop(ctx context.Context, keys []string, conc int, dur time.Duration) *benchPhase {
	ph := &benchPhase{lat: map[string][]time.Duration{}}
	var mu sync.Mutex
	runCtx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			key := keys[w%len(keys)]
			local := timer{}
			base := b.urls[w%len(b.urls)]
			for runCtx.Err() == nil {
				t0 := time.Now()
				err := b.cycle(runCtx, base, key, local.timed)
				if runCtx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
					break
				}
				if err == nil {
					local["cycle"] = append(local["cycle"], time.Since(t0))
				}
				ph.record(&mu, err)
			}
			ph.merge(&mu, local)
		})
	}
	wg.Wait()
	ph.elapsed = time.Since(start)
	return ph
}

// lateAfter is how far behind its schedule an open-loop cycle may start
// before it counts as late (the generator itself could not keep up).
const lateAfter = time.Millisecond

// openLoop starts a cycle every 1/rate s for dur, whatever the answers, so
// that a slow server meets the arrivals it would meet in production instead
// of slowing its own load down. Latency counts from the scheduled start, so
// time spent waiting behind the generator is counted too.
func (b *bencher) openLoop(ctx context.Context, keys []string, rate float64, maxInFlight int, dur time.Duration) *benchPhase {
	ph := &benchPhase{lat: map[string][]time.Duration{}}
	var mu sync.Mutex
	var inFlight atomic.Int64
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for i := 0; ctx.Err() == nil; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.Sub(start) >= dur {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if inFlight.Load() >= int64(maxInFlight) {
			ph.dropped++
			continue
		}
		ph.started++
		if time.Since(at) >= lateAfter {
			ph.late++
		}
		inFlight.Add(1)
		key := keys[i%len(keys)]
		wg.Go(func() {
			defer inFlight.Add(-1)
			local := timer{}
			err := b.cycle(ctx, b.urls[i%len(b.urls)], key, local.timed)
			if err == nil {
				local["cycle"] = append(local["cycle"], time.Since(at))
			}
			if ctx.Err() == nil {
				ph.record(&mu, err)
				ph.merge(&mu, local)
			}
		})
	}
	wg.Wait()
	ph.elapsed = time.Since(start)
	return ph
}

// cycle is one request → (approve → fetch) → use, checking each answer;
// with oneCall the use rides on the request.
func (b *bencher) cycle(ctx context.Context, base, key string, timed func(string, func() error) error) error {
	var p benchPerm
	want := 201
	if b.human {
		want = 202
	}
	body := map[string]any{"action": "bench.cycle", "scope": map[string]any{"max_items": 1}}
	if b.oneCall {
		body["use"] = map[string]any{"actionDetails": map[string]any{"items": 1}}
	}
	if err := timed("request", func() error {
		return b.call(ctx, base, "POST", "/api/v1/permissions/request", key, body, &p, want)
	}); err != nil {
		return err
	}
	if b.oneCall {
		if p.Status != "used" || p.Use == nil || !p.Use.Success || p.Use.UsesRemaining != 0 {
			return fmt.Errorf("permission %s: status %q, use %+v: want the first use spent", p.ID, p.Status, p.Use)
		}
		return nil
	}
	if b.human {
		if err := timed("decide", func() error {
			return b.call(ctx, base, "POST", "/api/v1/permissions/"+p.ID+"/decide", b.admin, map[string]any{"approved": true}, nil, 200)
		}); err != nil {
			return err
		}
		if err := timed("fetch", func() error {
			return b.call(ctx, base, "GET", "/api/v1/permissions/"+p.ID, key, nil, &p, 200)
		}); err != nil {
			return err
		}
	}
	if p.Status != "approved" || !strings.HasPrefix(p.Token, "otp_") {
		return fmt.Errorf("permission %s: status %q without a token", p.ID, p.Status)
	}
	var u benchUse
	if err := timed("use", func() error {
		return b.call(ctx, base, "POST", "/api/v1/permissions/"+p.ID+"/use", key, map[string]any{"token": p.Token, "actionDetails": map[string]any{"items": 1}}, &u, 200)
	}); err != nil {
		return err
	}
	if !u.Success || u.UsesRemaining != 0 {
		return fmt.Errorf("use %s: success=%v remaining=%d reason=%q", p.ID, u.Success, u.UsesRemaining, u.Reason)
	}
	return nil
}

// durableCommitRate is the disk's floor for durable writes: single-row
// INSERTs, each its own transaction, into a fresh SQLite file in dir with
// the server's durability (WAL, synchronous=FULL), one after another for d.
func durableCommitRate(ctx context.Context, dir string, d time.Duration) (float64, error) {
	tmp, err := os.MkdirTemp(dir, "agentotp-baseline-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	path := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.Join(tmp, "baseline.db"))
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)")
	if err != nil {
		return 0, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	// Check the pragmas took: a baseline at other settings would flatter
	// the server or shame it.
	var journal string
	var synchronous int
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&journal); err != nil {
		return 0, err
	}
	if err := db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&synchronous); err != nil {
		return 0, err
	}
	if journal != "wal" || synchronous != 2 {
		return 0, fmt.Errorf("journal_mode %s, synchronous %d: want wal and 2 (FULL)", journal, synchronous)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)"); err != nil {
		return 0, err
	}
	ins, err := db.PrepareContext(ctx, "INSERT INTO t (v) VALUES (?)")
	if err != nil {
		return 0, err
	}
	defer ins.Close()
	row := make([]byte, 100)
	_, _ = rand.Read(row)
	// The first commits create the WAL and grow it; time the steady state.
	for range 50 {
		if _, err := ins.ExecContext(ctx, row); err != nil {
			return 0, err
		}
	}
	n, start := 0, time.Now()
	for time.Since(start) < d {
		if _, err := ins.ExecContext(ctx, row); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// awaitRule waits until every instance approves at once: another instance
// than the one that stored the bench's rule reloads it at its next sweep.
func (b *bencher) awaitRule(ctx context.Context, key string) error {
	for _, u := range b.urls {
		deadline := time.Now().Add(5 * time.Second)
		for {
			var p benchPerm
			err := b.call(ctx, u, "POST", "/api/v1/permissions/request", key, map[string]any{"action": "bench.probe"}, &p, 201, 202)
			if err != nil {
				return fmt.Errorf("probe %s: %w", u, err)
			}
			if p.Status == "approved" {
				break
			}
			_ = b.call(ctx, u, "POST", "/api/v1/permissions/"+p.ID+"/revoke", key, map[string]any{"reason": "bench probe"}, nil, 200)
			if time.Now().After(deadline) {
				return fmt.Errorf("%s does not apply the bench's rule after 5 s (does it load API policies?)", u)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// postgresCommitRate is durableCommitRate on PostgreSQL: one-row INSERTs,
// each its own transaction (synchronous_commit as the server has it), one
// after another on one connection, into a table made for the run.
func postgresCommitRate(ctx context.Context, dsn string, d time.Duration) (float64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, errors.New("cannot connect (the DSN is not shown: it may hold a password)")
	}
	defer conn.Close(context.Background())
	var syncCommit string
	if err := conn.QueryRow(ctx, "SHOW synchronous_commit").Scan(&syncCommit); err != nil {
		return 0, err
	}
	if syncCommit == "off" {
		return 0, errors.New("synchronous_commit is off: a baseline without durable commits would flatter the server")
	}
	table := pgx.Identifier{fmt.Sprintf("agentotp_baseline_%d", time.Now().UnixNano())}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE TABLE "+table+" (id bigserial PRIMARY KEY, v bytea NOT NULL)"); err != nil {
		return 0, err
	}
	defer func() { _, _ = conn.Exec(context.Background(), "DROP TABLE "+table) }()
	row := make([]byte, 100)
	_, _ = rand.Read(row)
	ins := "INSERT INTO " + table + " (v) VALUES ($1)"
	for range 50 {
		if _, err := conn.Exec(ctx, ins, row); err != nil {
			return 0, err
		}
	}
	n, start := 0, time.Now()
	for time.Since(start) < d {
		if _, err := conn.Exec(ctx, ins, row); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// machine names the CPU, the cores and the Go that ran the bench.
func machine() string {
	cpu := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	return fmt.Sprintf("%s, %d cores, %s %s/%s", cpu, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// benchReport is a whole run; --json prints it as is.
type benchReport struct {
	Machine            string                  `json:"machine"`
	Date               string                  `json:"date"`
	Mode               string                  `json:"mode"`
	OneCall            bool                    `json:"oneCall"`
	Agents             int                     `json:"agents"`
	Concurrency        int                     `json:"concurrency"`
	Rate               float64                 `json:"rate,omitempty"`
	DurationS          float64                 `json:"durationSeconds"`
	BaselineDir        string                  `json:"baselineDir,omitempty"`
	BaselinePostgres   bool                    `json:"baselinePostgres,omitempty"`
	Runs               []benchRun              `json:"runs"`
	Cycles             int64                   `json:"cycles"`
	Failures           int64                   `json:"failures"`
	FirstError         string                  `json:"firstError,omitempty"`
	CyclesPerSec       float64                 `json:"cyclesPerSec"`
	MedianCyclesPerSec float64                 `json:"medianCyclesPerSec"`
	Baseline           float64                 `json:"baselineCommitsPerSec,omitempty"`
	Ratio              float64                 `json:"ratio,omitempty"`
	Started            int64                   `json:"started,omitempty"`
	Late               int64                   `json:"late,omitempty"`
	Dropped            int64                   `json:"dropped,omitempty"`
	Latency            map[string]benchLatency `json:"latencyMs"`

	lat map[string][]time.Duration
}

type benchRun struct {
	Baseline     float64 `json:"baselineCommitsPerSec,omitempty"`
	Cycles       int64   `json:"cycles"`
	Failures     int64   `json:"failures"`
	CyclesPerSec float64 `json:"cyclesPerSec"`
	Ratio        float64 `json:"ratio,omitempty"`
}

// benchLatency is in milliseconds.
type benchLatency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func latencyOf(l []time.Duration) benchLatency {
	slices.Sort(l)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return benchLatency{N: len(l), P50: ms(quantile(l, .5)), P90: ms(quantile(l, .9)), P99: ms(quantile(l, .99)), Max: ms(quantile(l, 1))}
}

// quantile is the nearest-rank q-quantile of sorted l (0 when empty).
func quantile(l []time.Duration, q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

// median of f over runs; the mean of the middle two for an even count.
func median(runs []benchRun, f func(benchRun) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

func (r *benchReport) print(w io.Writer) {
	fmt.Fprintf(w, "machine: %s\ndate: %s\n", r.Machine, r.Date)
	cycle := "request, use (two calls)"
	switch {
	case r.OneCall:
		cycle = "request carrying its use (one call)"
	case r.Mode == "human":
		cycle = "request, decide, fetch, use (four calls)"
	}
	loop := fmt.Sprintf("%d workers", r.Concurrency)
	if r.Rate > 0 {
		loop = fmt.Sprintf("open loop at %g cycles/s, at most %d in flight", r.Rate, r.Concurrency)
	}
	fmt.Fprintf(w, "mode %s, %s, %d agents, %s, %gs per run\n", r.Mode, cycle, r.Agents, loop, r.DurationS)
	if len(r.Runs) > 1 {
		for i, run := range r.Runs {
			fmt.Fprintf(w, "run %d/%d: %.0f cycles/s", i+1, len(r.Runs), run.CyclesPerSec)
			if run.Baseline > 0 {
				fmt.Fprintf(w, ", baseline %.0f commits/s, ratio %.2f", run.Baseline, run.Ratio)
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, "cycles: %d ok, %d failed (%.0f cycles/s", r.Cycles, r.Failures, r.CyclesPerSec)
	if len(r.Runs) > 1 {
		fmt.Fprintf(w, "; median of runs %.0f", r.MedianCyclesPerSec)
	}
	fmt.Fprintln(w, ")")
	if r.FirstError != "" {
		fmt.Fprintf(w, "first failure: %s\n", r.FirstError)
	}
	if r.Baseline > 0 {
		of := ""
		if len(r.Runs) > 1 {
			of = fmt.Sprintf(", median of %d runs", len(r.Runs))
		}
		if r.BaselinePostgres {
			fmt.Fprintf(w, "baseline: %.0f one-row commits/s on the PostgreSQL of --baseline-db (synchronous_commit on)%s\n", r.Baseline, of)
		} else {
			fmt.Fprintf(w, "baseline: %.0f durable single-row commits/s (WAL, synchronous=FULL, in %s)%s\n", r.Baseline, r.BaselineDir, of)
		}
		fmt.Fprintf(w, "ratio: %.2f (cycles/s ÷ baseline commits/s%s)\n", r.Ratio, of)
	}
	if r.Rate > 0 {
		fmt.Fprintf(w, "open loop: %d started, %d late (≥ %s behind schedule), %d dropped (%d in flight)\n",
			r.Started, r.Late, lateAfter, r.Dropped, r.Concurrency)
	}
	names := make([]string, 0, len(r.Latency))
	for k := range r.Latency {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		l := r.Latency[k]
		ms := func(v float64) string {
			return (time.Duration(v * float64(time.Millisecond))).Round(time.Microsecond).String()
		}
		fmt.Fprintf(w, "  %-8s n=%-7d p50=%-9s p90=%-9s p99=%-9s max=%s\n", k, l.N, ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max))
	}
}
