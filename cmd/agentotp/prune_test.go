package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

func TestParseRetention(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"30d": 30 * 24 * time.Hour, "1d12h": 36 * time.Hour, "12h": 12 * time.Hour, "90m": 90 * time.Minute,
		"0s": 0, "0": 0, "0d": 0, " 7d ": 7 * 24 * time.Hour, "2h30m": 150 * time.Minute,
	} {
		got, err := parseRetention(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "d", "30", "1.5d", "-1d", "-5m", "1d-1h", "30days", "forever", "99999d", "12x"} {
		_, err := parseRetention(in)
		require.Error(t, err, in)
	}
}

func TestStorageSettings(t *testing.T) {
	d, err := storageSettings(DefaultConfig())
	require.NoError(t, err)
	require.Equal(t, 30*24*time.Hour, d, "the default retention is 30 days")
	for _, c := range []struct {
		retention string
		maxObject float64
		want      string
	}{
		{"0s", 0, "retention: must be positive"},
		{"soon", 0, "retention:"},
		{"30d", -1, "max-object-bytes"},
		{"30d", 1 << 20, "max-object-bytes"},
		{"30d", 100.5, "max-object-bytes"},
	} {
		cfg := DefaultConfig()
		cfg.Retention, cfg.MaxObjectBytes = c.retention, c.maxObject
		_, err := storageSettings(cfg)
		require.ErrorContains(t, err, c.want)
	}
}

// seedDecided makes a data directory holding an agent with n permissions
// denied at decidedAt, one pending request, and their audit events.
func seedDecided(t *testing.T, dir string, n int, decidedAt time.Time) agentotp.PermissionID {
	t.Helper()
	ctx := context.Background()
	// With the data directory's audit key, as the commands that follow
	// open it: a store with a key refuses a chain written without one.
	key, err := auditKey(Config{Data: dir})
	require.NoError(t, err)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "agentotp.db"), sqlite.Options{AuditKey: key})
	require.NoError(t, err)
	defer st.Close()
	effect := agentotp.EffectDeny
	svc := agentotp.NewService(st, agentotp.Options{
		Clock: func() time.Time { return decidedAt },
		Evaluator: agentotp.EvaluatorFunc(func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: effect}, nil
		}),
	})
	a, _, err := svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "seeded"})
	require.NoError(t, err)
	p := agentotp.Principal{Agent: a}
	for range n {
		_, _, err := svc.RequestPermission(ctx, p, agentotp.PermissionRequest{Action: "x", Scope: map[string]any{"b": strings.Repeat("x", 8000)}})
		require.NoError(t, err)
	}
	effect = agentotp.EffectRequireApproval
	pending, _, err := svc.RequestPermission(ctx, p, agentotp.PermissionRequest{Action: "x", ApprovalTTL: 24 * time.Hour})
	require.NoError(t, err)
	return pending.ID
}

func storedPermissions(t *testing.T, dir string) int {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "agentotp.db"), sqlite.Options{})
	require.NoError(t, err)
	defer st.Close()
	_, total, err := st.Permissions(context.Background(), agentotp.PermissionFilter{})
	require.NoError(t, err)
	return total
}

// agentotp prune on a data directory deletes the decided permissions past
// --older-than (default: --retention), keeps pending ones, records a prune
// event, and leaves a trail that audit verify accepts.
func TestPruneCommand(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	pending := seedDecided(t, dir, 40, time.Now().Add(-time.Hour))

	code, out, errs := run(t, "prune", "--data", dir)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "pruned 0 ", "the default retention (30d) keeps an hour-old decision")
	require.Contains(t, out, "(older than 30d)")

	code, out, errs = run(t, "prune", "--older-than", "0s", "--data", dir)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "pruned 40 decided or expired permissions last changed before ")
	require.Contains(t, out, "their audit events stay")
	require.Equal(t, 1, storedPermissions(t, dir), "the pending request stays")

	code, out, errs = run(t, "show", string(pending), "--data", dir)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "pending")
	code, out, errs = run(t, "audit", "verify", "--data", dir)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "audit chain OK")
	code, out, errs = run(t, "audit", "list", "--data", dir, "--limit", "5")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `prune\s+user .*"count":40`, out)

	// --vacuum gives the pages freed by pruning back to the file system.
	code, out, errs = run(t, "prune", "--older-than", "0s", "--vacuum", "--data", dir)
	require.Equal(t, 0, code, errs)
	m := regexp.MustCompile(`(\d+) bytes before, (\d+) after compacting`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	before, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	after, err := strconv.Atoi(m[2])
	require.NoError(t, err)
	require.Less(t, after, before*3/4, "the pruned scopes' pages are gone: %s", out)

	code, _, errs = run(t, "prune", "--older-than", "soon", "--data", dir)
	require.Equal(t, 2, code)
	require.Contains(t, errs, "--older-than")
	withEnv(t, map[string]string{"AGENTOTP_URL": "http://127.0.0.1:1", "AGENTOTP_ADMIN_KEY": agentotp.NewUserKey().Reveal()})
	code, _, errs = run(t, "prune")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "works on the data directory")
}

// serve prunes at start with --retention, and --max-object-bytes sets the
// cap on a request's scope and context.
func TestServePrunesAndCaps(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	seedDecided(t, dir, 3, time.Now().Add(-48*time.Hour))
	require.Equal(t, 4, storedPermissions(t, dir))

	url, _, stop := startServer(t, "--data", dir, "--retention", "1d", "--max-object-bytes", "100")
	require.Eventually(t, func() bool { return storedPermissions(t, dir) == 1 }, 10*time.Second, 20*time.Millisecond,
		"decisions older than the retention are pruned at start")

	code, out, errs := run(t, "agents", "create", "capped", "--data", dir)
	require.Equal(t, 0, code, errs)
	key := regexp.MustCompile(`(ak_\S+)`).FindString(out)
	require.NotEmpty(t, key, out)
	status, data := call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "x", "scope": map[string]any{"b": strings.Repeat("x", 100)}})
	require.Equal(t, http.StatusRequestEntityTooLarge, status, data)
	require.Equal(t, "PAYLOAD_TOO_LARGE", data["errorCode"])
	status, _ = call(t, "POST", url+"/api/v1/permissions/request", key, map[string]any{"action": "x", "scope": map[string]any{"b": "small"}})
	require.Equal(t, http.StatusAccepted, status)
	stop()

	var out2, errb strings.Builder
	code = Main(context.Background(), []string{"serve", "--addr", "127.0.0.1:0", "--data", dir, "--retention", "0s"}, nil, &out2, &errb)
	require.Equal(t, 1, code)
	require.Contains(t, errb.String(), "retention: must be positive")
	_, err := os.Stat(filepath.Join(dir, "agentotp.db"))
	require.NoError(t, err)
}
