package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBenchFlagsRefused(t *testing.T) {
	withEnv(t, nil)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"one call needs auto approval", []string{"--mode", "human", "--one-call"}, "--one-call needs --mode auto"},
		{"no runs", []string{"--runs", "0"}, "--runs"},
		{"negative rate", []string{"--rate", "-5"}, "--rate"},
		{"no workers", []string{"--concurrency", "0"}, "--concurrency"},
		{"no agents", []string{"--agents", "0"}, "--agents"},
		{"no baseline time", []string{"--baseline", "--baseline-duration", "0s"}, "--baseline-duration"},
		{"unknown mode", []string{"--mode", "robot"}, "--mode"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := run(t, append([]string{"bench", "--data", t.TempDir()}, tc.args...)...)
			require.Equal(t, 2, code)
			require.Contains(t, errs, tc.want)
		})
	}
}

// TestBenchReport runs each kind of load briefly against a real server and
// reads the JSON report: every cycle checked and counted, the baseline
// measured beside the data, medians over the runs.
func TestBenchReport(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	url, _, _ := startServer(t, "--data", dir, "--rate-limit", "-1")
	cases := []struct {
		name  string
		args  []string
		check func(t *testing.T, r benchReport)
	}{
		{"baseline, alternating runs", []string{"--baseline", "--baseline-duration", "200ms", "--runs", "3"}, func(t *testing.T, r benchReport) {
			require.Len(t, r.Runs, 3)
			for _, run := range r.Runs {
				require.Positive(t, run.Baseline)
				require.Positive(t, run.Cycles)
				require.InDelta(t, run.CyclesPerSec/run.Baseline, run.Ratio, 1e-9)
			}
			require.Equal(t, median(r.Runs, func(x benchRun) float64 { return x.Ratio }), r.Ratio)
			require.Equal(t, dir, r.BaselineDir)
			require.Contains(t, r.Latency, "use")
		}},
		{"one call", []string{"--one-call"}, func(t *testing.T, r benchReport) {
			require.True(t, r.OneCall)
			require.Contains(t, r.Latency, "request")
			require.NotContains(t, r.Latency, "use", "the use rides on the request")
		}},
		{"open loop", []string{"--rate", "100", "--concurrency", "64"}, func(t *testing.T, r benchReport) {
			require.Equal(t, 100.0, r.Rate)
			require.InDelta(t, 70, r.Started+r.Dropped, 2, "one start every 10 ms for 700 ms")
			require.Equal(t, r.Started, r.Cycles)
			require.Zero(t, r.Baseline)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"bench", "--url", url, "--data", dir, "--duration", "700ms", "--concurrency", "4", "--agents", "2", "--json"}, tc.args...)
			code, out, errs := run(t, args...)
			require.Equal(t, 0, code, "%s %s", out, errs)
			var r benchReport
			require.NoError(t, json.Unmarshal([]byte(out), &r), out)
			require.Zero(t, r.Failures, r.FirstError)
			require.Positive(t, r.Cycles)
			require.Equal(t, r.Cycles, int64(r.Latency["cycle"].N))
			require.Contains(t, r.Machine, runtime.Version())
			require.NotEmpty(t, r.Date)
			tc.check(t, r)
		})
	}

	code, out, errs := run(t, "bench", "--url", url, "--data", dir, "--duration", "300ms", "--concurrency", "2", "--agents", "1", "--baseline", "--baseline-duration", "100ms")
	require.Equal(t, 0, code, "%s %s", out, errs)
	require.Regexp(t, `(?m)^machine: .+, \d+ cores, go`, out)
	require.Regexp(t, `(?m)^baseline: [1-9]\d* durable single-row commits/s`, out)
	require.Regexp(t, `(?m)^ratio: \d+\.\d\d `, out)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.NotContains(t, e.Name(), "baseline", "the baseline's file is removed")
	}
}

// A cycle answered otherwise than expected counts as a failure, and the
// bench exits 1: here a file rule outranks the bench's auto-approving one,
// so every request waits for a human instead of returning a token.
func TestBenchCountsFailures(t *testing.T) {
	withEnv(t, nil)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policies.yaml")
	require.NoError(t, os.WriteFile(pol, []byte("- name: nothing for the bench\n  priority: 2000000\n  conditions:\n    action: {startsWith: bench.}\n  action: require_approval\n"), 0o600))
	data := filepath.Join(dir, "data")
	url, _, _ := startServer(t, "--data", data, "--policies", pol, "--rate-limit", "-1")
	code, out, errs := run(t, "bench", "--url", url, "--data", data, "--duration", "300ms", "--concurrency", "1", "--agents", "1", "--one-call")
	require.Equal(t, 1, code, out)
	require.Contains(t, errs, "does not apply the bench's rule", "the bench refuses to run against a server that would not approve")
}

func TestDurableCommitRate(t *testing.T) {
	dir := t.TempDir()
	rate, err := durableCommitRate(context.Background(), dir, 100*time.Millisecond)
	require.NoError(t, err)
	require.Positive(t, rate)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "the baseline cleans up after itself")

	_, err = durableCommitRate(context.Background(), filepath.Join(dir, "missing"), time.Millisecond)
	require.Error(t, err)
}

func TestBenchStatistics(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	quantiles := []struct {
		l    []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, .5, 0},
		{ms(7), .99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), .5, 3 * time.Millisecond},
		{ms(1, 2, 3, 4), 1, 4 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), .9, 10 * time.Millisecond},
	}
	for _, tc := range quantiles {
		require.Equal(t, tc.want, quantile(tc.l, tc.q), "%v q=%v", tc.l, tc.q)
	}
	medians := []struct {
		v    []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tc := range medians {
		runs := make([]benchRun, len(tc.v))
		for i, v := range tc.v {
			runs[i].Ratio = v
		}
		require.Equal(t, tc.want, median(runs, func(r benchRun) float64 { return r.Ratio }), "%v", tc.v)
	}
}
