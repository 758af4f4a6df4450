// Command bench is `make bench`: it starts a fresh `agentotp serve` on a
// temporary data directory, runs `agentotp bench --baseline` against it at
// 1, 8, 32 and 128 clients (request then use, and the use carried by the
// request) and open loop at 1,000 cycles/s, and rewrites the generated
// section of BENCHMARKS.md with the figures.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const (
	startMarker = "<!-- make bench: start -->"
	endMarker   = "<!-- make bench: end -->"

	// The open-loop rows offer openRate cycles/s with at most openInFlight
	// in flight: the latency target is stated at 1,000 cycles/s.
	openRate     = 1000
	openInFlight = 256
)

func main() {
	bin := flag.String("bin", "bin/agentotp", "the agentotp binary to measure")
	out := flag.String("out", "BENCHMARKS.md", "file whose generated section is rewritten")
	dur := flag.Duration("duration", 4*time.Second, "each load phase")
	baseDur := flag.Duration("baseline-duration", 2*time.Second, "each baseline phase")
	rateDur := flag.Duration("rate-duration", 10*time.Second, "each open-loop phase")
	runs := flag.Int("runs", 5, "alternating baseline and load runs at 32 clients (1 elsewhere)")
	flag.Parse()
	if err := run(*bin, *out, *dur, *baseDur, *rateDur, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// report is the part of `agentotp bench --json` this program reads.
type report struct {
	Machine            string  `json:"machine"`
	Date               string  `json:"date"`
	OneCall            bool    `json:"oneCall"`
	Concurrency        int     `json:"concurrency"`
	Rate               float64 `json:"rate"`
	Cycles             int64   `json:"cycles"`
	Failures           int64   `json:"failures"`
	FirstError         string  `json:"firstError"`
	CyclesPerSec       float64 `json:"cyclesPerSec"`
	MedianCyclesPerSec float64 `json:"medianCyclesPerSec"`
	Baseline           float64 `json:"baselineCommitsPerSec"`
	Ratio              float64 `json:"ratio"`
	Started            int64   `json:"started"`
	Late               int64   `json:"late"`
	Dropped            int64   `json:"dropped"`
	Runs               []struct {
		Ratio float64 `json:"ratio"`
	} `json:"runs"`
	Latency map[string]struct {
		P50, P90, P99 float64
	} `json:"latencyMs"`
}

// row is one invocation of agentotp bench.
type row struct {
	oneCall     bool
	clients     int
	runs        int
	rate        float64
	dur         time.Duration
	args        []string
	result      report
	elapsedSecs float64
}

func run(bin, out string, dur, baseDur, rateDur time.Duration, runs32 int) error {
	if _, err := os.Stat(out); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "agentotp-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	data := filepath.Join(tmp, "data")
	srv, url, err := startServe(bin, data, filepath.Join(tmp, "serve.log"))
	if err != nil {
		return err
	}
	defer func() {
		_ = srv.Process.Signal(os.Interrupt)
		_ = srv.Wait()
	}()
	loadBefore := loadAverage()
	ver, err := exec.Command(bin, "version").Output()
	if err != nil {
		return fmt.Errorf("%s version: %w", bin, err)
	}

	var rows []*row
	for _, oneCall := range []bool{false, true} {
		for _, c := range []int{1, 8, 32, 128} {
			r := &row{oneCall: oneCall, clients: c, runs: 1, dur: dur}
			if c == 32 {
				r.runs = runs32
			}
			rows = append(rows, r)
		}
	}
	for _, oneCall := range []bool{false, true} {
		rows = append(rows, &row{oneCall: oneCall, clients: openInFlight, runs: 1, rate: openRate, dur: rateDur})
	}
	for _, r := range rows {
		r.args = []string{"--baseline", "--baseline-duration", baseDur.String(), "--duration", r.dur.String(),
			"--concurrency", strconv.Itoa(r.clients), "--agents", strconv.Itoa(min(r.clients, 16))}
		if r.runs > 1 {
			r.args = append(r.args, "--runs", strconv.Itoa(r.runs))
		}
		if r.rate > 0 {
			r.args = append(r.args, "--rate", strconv.FormatFloat(r.rate, 'f', -1, 64))
		}
		if r.oneCall {
			r.args = append(r.args, "--one-call")
		}
		start := time.Now()
		cmd := exec.Command(bin, append([]string{"bench", "--url", url, "--data", data, "--json"}, r.args...)...)
		cmd.Env = benchEnv()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		o, err := cmd.Output()
		if jerr := json.Unmarshal(o, &r.result); jerr != nil {
			return fmt.Errorf("agentotp bench %s: %v %v: %s", strings.Join(r.args, " "), err, jerr, stderr.String())
		}
		if r.result.Failures > 0 || err != nil {
			return fmt.Errorf("agentotp bench %s: %d failed cycles, first: %s (%v)", strings.Join(r.args, " "), r.result.Failures, r.result.FirstError, err)
		}
		r.elapsedSecs = time.Since(start).Seconds()
		fmt.Fprintf(os.Stderr, "agentotp bench %s: %.0f cycles/s, baseline %.0f commits/s, ratio %.2f, p99 %.1f ms (%.0fs)\n",
			strings.Join(r.args, " "), r.result.MedianCyclesPerSec, r.result.Baseline, r.result.Ratio, r.result.Latency["cycle"].P99, r.elapsedSecs)
	}

	load := fmt.Sprintf("%s before, %s after", loadBefore, loadAverage())
	section := render(rows, strings.TrimSpace(string(ver)), load, dur, baseDur)
	doc, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	next, err := replaceSection(string(doc), section)
	if err != nil {
		return err
	}
	return os.WriteFile(out, []byte(next), 0o644)
}

// benchEnv keeps a developer's AGENTOTP_URL or AGENTOTP_ADMIN_KEY from
// pointing the bench at another server.
func benchEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AGENTOTP_") {
			env = append(env, kv)
		}
	}
	return env
}

// startServe runs bin serve on a free loopback port, its log in logPath,
// and returns once it listens.
func startServe(bin, data, logPath string) (*exec.Cmd, string, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin, "serve", "--addr", "127.0.0.1:0", "--data", data, "--rate-limit", "-1")
	cmd.Env = benchEnv()
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		re := regexp.MustCompile(`listening on (http://\S+)`)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
	}()
	select {
	case u := <-urls:
		return cmd, u, nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		log, _ := os.ReadFile(logPath)
		return nil, "", fmt.Errorf("serve did not start: %s", log)
	}
}

// loadAverage is the machine's 1-minute load average: other jobs on a
// shared machine move every figure.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "unknown"
}

func render(rows []*row, version, load string, dur, baseDur time.Duration) string {
	var b strings.Builder
	first := rows[0].result
	fmt.Fprintf(&b, "%s\n## `make bench`: the whole server against the disk's durable commit rate\n\n", startMarker)
	fmt.Fprintf(&b, "Generated by `make bench` (`scripts/bench`); rerun it rather than editing this section. "+
		"A fresh `agentotp serve --rate-limit -1` on a temporary data directory, driven by `agentotp bench` as a "+
		"second process on the same machine (the two share its cores), every answer checked. Baseline: in the same "+
		"run, just before each load phase, `agentotp bench` times a sequential loop of single-row `INSERT` commits "+
		"into a fresh SQLite file (WAL, `synchronous=FULL`) in the server's data directory. "+
		"Ratio: cycles/s ÷ baseline commits/s, the median over the runs. p50/p99: the whole cycle, all runs.\n\n")
	fmt.Fprintf(&b, "Machine: %s. Date: %s. Server: `%s`. Load average (1 min): %s.\n\n", first.Machine, first.Date, version, load)
	fmt.Fprintf(&b, "Each row: `agentotp bench --baseline --baseline-duration %s --duration %s --concurrency C --agents min(C,16) [--runs R] [--one-call]`.\n\n",
		baseDur, dur)
	b.WriteString("| cycle | clients | runs | baseline commits/s | cycles/s | ratio | p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	var open []*row
	var multi []*row
	for _, r := range rows {
		if r.rate > 0 {
			open = append(open, r)
			continue
		}
		if r.runs > 1 {
			multi = append(multi, r)
		}
		l := r.result.Latency["cycle"]
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | **%.2f** | %.1f ms | %.1f ms |\n", cycleName(r.oneCall), r.clients, r.runs,
			thousands(r.result.Baseline), thousands(r.result.MedianCyclesPerSec), r.result.Ratio, l.P50, l.P99)
	}
	for _, r := range multi {
		ratios := make([]string, len(r.result.Runs))
		for i, run := range r.result.Runs {
			ratios[i] = fmt.Sprintf("%.2f", run.Ratio)
		}
		fmt.Fprintf(&b, "\n%s at %d clients, ratio of each run in order: %s.", cycleName(r.oneCall), r.clients, strings.Join(ratios, ", "))
	}
	fmt.Fprintf(&b, "\n\nOpen loop: %d cycles/s offered, each started on schedule whatever the answers; latency counts from "+
		"the scheduled start. Late: started ≥ 1 ms behind schedule (the load generator itself fell behind); dropped: due "+
		"while %d were in flight.\n\n", openRate, openInFlight)
	b.WriteString("| cycle | command | achieved cycles/s | p50 | p90 | p99 | late | dropped | baseline commits/s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range open {
		l := r.result.Latency["cycle"]
		fmt.Fprintf(&b, "| %s | `agentotp bench %s` | %s | %.1f ms | %.1f ms | **%.1f ms** | %d | %d | %s |\n", cycleName(r.oneCall),
			strings.Join(r.args, " "), thousands(r.result.CyclesPerSec), l.P50, l.P90, l.P99, r.result.Late, r.result.Dropped, thousands(r.result.Baseline))
	}
	b.WriteString(endMarker + "\n")
	return b.String()
}

func cycleName(oneCall bool) string {
	if oneCall {
		return "request carrying its use (1 call)"
	}
	return "request, then use (2 calls)"
}

// thousands formats v rounded, with commas.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// replaceSection puts section (markers included) in place of the one in
// doc, or at its end when doc has none yet.
func replaceSection(doc, section string) (string, error) {
	i, j := strings.Index(doc, startMarker), strings.Index(doc, endMarker)
	switch {
	case i < 0 && j < 0:
		return strings.TrimRight(doc, "\n") + "\n\n" + section, nil
	case i < 0 || j < i:
		return "", errors.New("BENCHMARKS.md: the make bench markers are out of order or one is missing")
	}
	end := j + len(endMarker)
	if end < len(doc) && doc[end] == '\n' {
		end++
	}
	return doc[:i] + section + doc[end:], nil
}
