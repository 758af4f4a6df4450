package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

// runPrune deletes the decided and expired permissions past retention (their
// audit events stay): agentotp prune [--older-than 30d] [--vacuum].
func runPrune(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentotp prune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	olderThan := fs.String("older-than", "", "prune permissions decided longer ago than this, e.g. 30d, 12h, 90m (default: --retention)")
	vacuum := fs.Bool("vacuum", false, "then compact the database file, giving the freed space back to the file system")
	var cfg Config
	load := configFlags(fs, "data", "db", "policies", "log-level", "log-format", "retention")
	c := &adminCmd{fs: fs, load: func(env func(string) string) (Config, error) {
		var err error
		cfg, err = load(env)
		return cfg, err
	}}
	a, code := c.open(ctx, args, stderr)
	if code != 0 {
		return code
	}
	defer a.Close()
	local, ok := a.(*localAdmin)
	if !ok {
		fmt.Fprintln(stderr, "agentotp prune: works on the data directory (--data or --db), not through --url; "+
			"a running server prunes by itself every hour")
		return 2
	}
	spec := cfg.Retention
	if *olderThan != "" {
		spec = *olderThan
	}
	d, err := parseRetention(spec)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp prune: --older-than:", err)
		return 2
	}
	cutoff := local.app.svc.Now().Add(-d)
	n, err := local.app.svc.Prune(ctx, local.p, d)
	if err != nil {
		return fail(stderr, "prune", err)
	}
	fmt.Fprintf(stdout, "pruned %d decided or expired permissions last changed before %s (older than %s); their audit events stay\n",
		n, cutoff.UTC().Format(time.RFC3339), spec)
	if *vacuum {
		file, ok := local.app.store.(fileStore)
		if !ok {
			fmt.Fprintln(stdout, "--vacuum compacts a SQLite file; PostgreSQL reclaims the space of deleted rows itself (autovacuum)")
			return 0
		}
		before, after, err := compact(ctx, file)
		if err != nil {
			return fail(stderr, "prune --vacuum", err)
		}
		fmt.Fprintf(stdout, "database file %s: %d bytes before, %d after compacting\n", file.Path(), before, after)
	}
	return 0
}

// fileStore is a store kept in one file that can be compacted (SQLite).
type fileStore interface {
	Path() string
	Vacuum(context.Context) error
}

// compact vacuums the store and reports the file's size before and after
// (the write-ahead log included).
func compact(ctx context.Context, st fileStore) (before, after int64, err error) {
	size := func() int64 {
		var n int64
		for _, p := range []string{st.Path(), st.Path() + "-wal"} {
			if fi, err := os.Stat(p); err == nil {
				n += fi.Size()
			}
		}
		return n
	}
	before = size()
	if err := st.Vacuum(ctx); err != nil {
		return before, 0, err
	}
	return before, size(), nil
}

// maxRetentionDays keeps a retention far from time.Duration's limit.
const maxRetentionDays = 36500

// parseRetention reads a duration that may start with whole days: "30d",
// "1d12h", "12h", "90m", "0s". Negative durations are refused.
func parseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("must not be empty (e.g. 30d, 12h, 90m)")
	}
	var d time.Duration
	rest := s
	if days, after, ok := strings.Cut(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > maxRetentionDays {
			return 0, fmt.Errorf("%q is not a duration (e.g. 30d, 12h, 90m)", s)
		}
		d, rest = time.Duration(n)*24*time.Hour, after
	}
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, fmt.Errorf("%q is not a duration (e.g. 30d, 12h, 90m)", s)
		}
		d += r
	}
	return d, nil
}

// storageSettings checks the settings that bound storage and returns the
// retention: serve prunes with it every hour, so it must be positive.
func storageSettings(cfg Config) (time.Duration, error) {
	if b := cfg.MaxObjectBytes; b < 0 || b > agentotp.MaxObjectBytes || b != float64(int(b)) {
		return 0, fmt.Errorf("max-object-bytes: must be a whole number of bytes from 0 (the default, %d) to %d, not %v",
			agentotp.DefaultMaxRequestObjectBytes, agentotp.MaxObjectBytes, b)
	}
	d, err := parseRetention(cfg.Retention)
	if err != nil {
		return 0, fmt.Errorf("retention: %w", err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("retention: must be positive (e.g. 30d), not %q", cfg.Retention)
	}
	return d, nil
}
