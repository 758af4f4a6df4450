package main

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/store/sqlite"
)

// auditData is a data directory with a bootstrap admin, one agent and its
// permissions, as the CLI made them.
type auditData struct {
	t        *testing.T
	dir      string
	agentKey string
}

func newAuditData(t *testing.T, args ...string) *auditData {
	t.Helper()
	d := &auditData{t: t, dir: filepath.Join(t.TempDir(), "data")}
	code, out, errs := run(t, append([]string{"agents", "create", "bot", "--data", d.dir}, args...)...)
	require.Equal(t, 0, code, errs)
	d.agentKey = regexp.MustCompile(`ak_\S+`).FindString(out)
	require.NotEmpty(t, d.agentKey)
	return d
}

// service opens the data directory in process with the key the CLI would
// use (cfg's, else the environment's, else the data directory's),
// auto-approving every request, and runs fn with the agent.
func (d *auditData) service(cfg Config, fn func(svc *agentotp.Service, agent agentotp.Principal)) {
	d.t.Helper()
	ctx := context.Background()
	cfg.Data = d.dir
	if cfg.AuditKeyFile == "" {
		cfg.AuditKeyFile, cfg.AuditKey = env("AGENTOTP_AUDIT_KEY_FILE"), agentotp.Secret(env("AGENTOTP_AUDIT_KEY"))
	}
	key, err := auditKey(cfg)
	require.NoError(d.t, err)
	st, err := sqlite.Open(ctx, filepath.Join(d.dir, "agentotp.db"), sqlite.Options{AuditKey: key})
	require.NoError(d.t, err)
	defer st.Close()
	svc := agentotp.NewService(st, agentotp.Options{Evaluator: agentotp.EvaluatorFunc(
		func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "test"}, nil
		})})
	agent, err := svc.Authenticate(ctx, d.agentKey)
	require.NoError(d.t, err)
	fn(svc, agent)
}

// usedPermission requests a one-use permission and spends it.
func (d *auditData) usedPermission() agentotp.PermissionID {
	d.t.Helper()
	var id agentotp.PermissionID
	d.service(Config{}, func(svc *agentotp.Service, agent agentotp.Principal) {
		ctx := context.Background()
		p, tok, err := svc.RequestPermission(ctx, agent, agentotp.PermissionRequest{Action: "db.query"})
		require.NoError(d.t, err)
		res, err := svc.Use(ctx, agent, p.ID, tok.Reveal(), nil)
		require.NoError(d.t, err)
		require.True(d.t, res.Success)
		id = p.ID
	})
	return id
}

func (d *auditData) sql(stmts ...string) {
	d.t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(d.dir, "agentotp.db"))
	require.NoError(d.t, err)
	defer db.Close()
	for _, q := range append([]string{"DROP TRIGGER IF EXISTS audit_events_no_update", "DROP TRIGGER IF EXISTS audit_events_no_delete"}, stmts...) {
		_, err := db.Exec(q)
		require.NoError(d.t, err, q)
	}
}

func (d *auditData) query(q string, dst ...any) {
	d.t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(d.dir, "agentotp.db"))
	require.NoError(d.t, err)
	defer db.Close()
	require.NoError(d.t, db.QueryRow(q).Scan(dst...), q)
}

func (d *auditData) verify(args ...string) (int, string) {
	d.t.Helper()
	code, out, errs := run(d.t, append([]string{"audit", "verify", "--data", d.dir}, args...)...)
	return code, out + errs
}

// TestAuditVerifyCatchesTampering: `audit verify` exits 1 naming the seq or
// the permission for each way of rewriting history that passed before.
func TestAuditVerifyCatchesTampering(t *testing.T) {
	withEnv(t, nil)

	t.Run("untouched", func(t *testing.T) {
		d := newAuditData(t)
		d.usedPermission()
		code, out := d.verify()
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "audit chain OK")
		require.Regexp(t, `MACs: checked with key [0-9a-f]{16} from seq 1\n`, out)
		require.Contains(t, out, "permissions: 1 checked against their events, all consistent")
		require.Regexp(t, `(?m)^agentotp-checkpoint v1 seq=\d+ .* sig=[0-9a-f]{64}$`, out)
	})

	t.Run("truncate and move the head", func(t *testing.T) {
		d := newAuditData(t)
		id := d.usedPermission()
		var last int64
		d.query(`SELECT max(seq) FROM audit_events`, &last)
		d.sql(fmt.Sprintf(`DELETE FROM audit_events WHERE seq = %d`, last),
			fmt.Sprintf(`UPDATE audit_head SET seq = %d, hash = (SELECT hash FROM audit_events WHERE seq = %d)`, last-1, last-1))
		code, out := d.verify()
		require.Equal(t, 1, code, out)
		require.Contains(t, out, fmt.Sprintf("BROKEN at seq %d: the recorded head's MAC does not verify", last-1))
		require.Contains(t, out, fmt.Sprintf("permission %s: stored status used, events say approved", id))
	})

	t.Run("recompute the chain", func(t *testing.T) {
		d := newAuditData(t)
		d.usedPermission()
		// Rewrite the agent's creation and recompute every later hash, as
		// anyone can without the key.
		st, err := sqlite.Open(context.Background(), filepath.Join(d.dir, "agentotp.db"), sqlite.Options{})
		require.NoError(t, err)
		var events []*agentotp.AuditEvent
		require.NoError(t, st.ScanAudit(context.Background(), func(e *agentotp.AuditEvent) error { events = append(events, e); return nil }))
		require.NoError(t, st.Close())
		var stmts []string
		for i, e := range events {
			if i == 0 {
				continue
			}
			if i == 1 {
				e.DetailsJSON = []byte(`{"name":"mallory"}`)
			}
			e.PrevHash = events[i-1].Hash
			e.Hash, err = e.ComputeHash(e.PrevHash)
			require.NoError(t, err)
			stmts = append(stmts, fmt.Sprintf(`UPDATE audit_events SET details_json = '%s', prev_hash = '%s', hash = '%s' WHERE seq = %d`,
				e.DetailsJSON, e.PrevHash, e.Hash, e.Seq))
		}
		last := events[len(events)-1]
		d.sql(append(stmts, fmt.Sprintf(`UPDATE audit_head SET hash = '%s'`, last.Hash))...)
		code, out := d.verify()
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "BROKEN at seq 2: MAC does not match: the event was rewritten")
	})

	t.Run("edit a permission row", func(t *testing.T) {
		d := newAuditData(t)
		id := d.usedPermission()
		d.sql(fmt.Sprintf(`UPDATE permissions SET status = 'approved', uses_remaining = 1 WHERE id = '%s'`, id))
		code, out := d.verify()
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "permissions: 1 of 1 DISAGREE with their events:\n")
		require.Contains(t, out, fmt.Sprintf("  permission %s: stored status approved, events say used; stored uses remaining 1, events say 0\n", id))
		require.NotContains(t, out, "BROKEN")
	})
}

// TestAuditKeySources: the key comes from --audit-key-file, else
// AGENTOTP_AUDIT_KEY, else <data>/audit.key (generated, 0600); a wrong key
// fails clearly.
func TestAuditKeySources(t *testing.T) {
	t.Run("generated into the data directory", func(t *testing.T) {
		withEnv(t, nil)
		d := newAuditData(t)
		path := filepath.Join(d.dir, "audit.key")
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Regexp(t, `^[0-9a-f]{64}\n$`, string(b))
		entries, err := os.ReadDir(d.dir)
		require.NoError(t, err)
		for _, e := range entries {
			require.NotContains(t, e.Name(), ".new-", "no temporary file left behind")
		}
		code, out := d.verify()
		require.Equal(t, 0, code, out)

		// Another key in its place is named as the wrong one.
		require.NoError(t, os.WriteFile(path, []byte(strings.Repeat("ab", 32)), 0o600))
		code, out = d.verify()
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "BROKEN at seq 1: wrong audit key: the chain was written with key")
	})

	t.Run("from the environment", func(t *testing.T) {
		key := strings.Repeat("5a", 32)
		withEnv(t, map[string]string{"AGENTOTP_AUDIT_KEY": key})
		d := newAuditData(t)
		_, err := os.Stat(filepath.Join(d.dir, "audit.key"))
		require.ErrorIs(t, err, os.ErrNotExist, "no key file when the environment holds the key")
		d.usedPermission()
		code, out := d.verify()
		require.Equal(t, 0, code, out)

		withEnv(t, map[string]string{"AGENTOTP_AUDIT_KEY": strings.Repeat("6b", 32)})
		code, out = d.verify()
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "wrong audit key")
		code, _, errs := run(t, "agents", "create", "other", "--data", d.dir)
		require.Equal(t, 1, code)
		require.Contains(t, errs, "wrong audit key", "nothing is appended with the wrong key")

		withEnv(t, map[string]string{"AGENTOTP_AUDIT_KEY": "abcd"})
		code, out = d.verify()
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "audit key AGENTOTP_AUDIT_KEY: must hold at least 32 bytes")
	})

	t.Run("from a file outside the data directory", func(t *testing.T) {
		keyFile := filepath.Join(t.TempDir(), "audit.key")
		require.NoError(t, os.WriteFile(keyFile, []byte(hex.EncodeToString([]byte(strings.Repeat("k", 32)))+"\n"), 0o600))
		// The env variable wins over AGENTOTP_AUDIT_KEY.
		withEnv(t, map[string]string{"AGENTOTP_AUDIT_KEY_FILE": keyFile, "AGENTOTP_AUDIT_KEY": strings.Repeat("00", 32)})
		d := newAuditData(t)
		d.service(Config{AuditKeyFile: keyFile}, func(*agentotp.Service, agentotp.Principal) {})
		_, err := os.Stat(filepath.Join(d.dir, "audit.key"))
		require.ErrorIs(t, err, os.ErrNotExist)

		withEnv(t, nil)
		code, out := d.verify("--audit-key-file", keyFile)
		require.Equal(t, 0, code, out)
		code, out = d.verify("--audit-key-file", filepath.Join(t.TempDir(), "missing"))
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "audit-key-file:")
		code, out = d.verify() // falls back to a new <data>/audit.key: not the chain's
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "wrong audit key")
	})
}

// TestAuditCheckpointCommand: `audit checkpoint` prints a signed head that
// `audit verify --checkpoint` (a line or a file) holds history to; it
// catches truncation by someone who holds the key (the default key sits in
// the data directory); forged lines are refused.
func TestAuditCheckpointCommand(t *testing.T) {
	withEnv(t, nil)
	d := newAuditData(t)
	d.usedPermission()
	code, out, errs := run(t, "audit", "checkpoint", "--data", d.dir)
	require.Equal(t, 0, code, errs)
	line := strings.TrimSpace(out)
	require.Regexp(t, `^agentotp-checkpoint v1 seq=\d+ hash=[0-9a-f]{64} at=\S+Z key=[0-9a-f]{16} sig=[0-9a-f]{64}$`, line)
	cp, err := agentotp.ParseCheckpoint(line)
	require.NoError(t, err)

	code, vout := d.verify("--checkpoint", line)
	require.Equal(t, 0, code, vout)
	require.Contains(t, vout, fmt.Sprintf("checkpoint: seq %d of", cp.Seq))
	file := filepath.Join(t.TempDir(), "checkpoints")
	require.NoError(t, os.WriteFile(file, []byte("older lines first\n"+line+"\n"), 0o600))
	code, vout = d.verify("--checkpoint", file)
	require.Equal(t, 0, code, vout)

	// Later events, then someone with the key deletes them and re-signs
	// the head: only the checkpoint shows it.
	d.usedPermission()
	code, out, errs = run(t, "audit", "checkpoint", "--data", d.dir)
	require.Equal(t, 0, code, errs)
	later := strings.TrimSpace(out)
	key, err := auditKey(Config{Data: d.dir})
	require.NoError(t, err)
	var hash string
	d.query(fmt.Sprintf(`SELECT hash FROM audit_events WHERE seq = %d`, cp.Seq), &hash)
	d.sql(fmt.Sprintf(`DELETE FROM audit_events WHERE seq > %d`, cp.Seq),
		`DELETE FROM permissions WHERE id NOT IN (SELECT permission_id FROM audit_events)`,
		fmt.Sprintf(`UPDATE audit_head SET seq = %d, hash = '%s', mac = '%s'`, cp.Seq, hash, key.HeadMAC(cp.Seq, hash)))
	code, vout = d.verify()
	require.Equal(t, 0, code, "invisible without a checkpoint: %s", vout)
	code, vout = d.verify("--checkpoint", later)
	require.Equal(t, 1, code, vout)
	require.Contains(t, vout, fmt.Sprintf("BROKEN at seq %d: missing: the checkpoint taken", cp.Seq+1))
	require.Contains(t, vout, "(truncated)")

	forged := strings.Replace(later, "seq=", "seq=1", 1)
	code, vout = d.verify("--checkpoint", forged)
	require.Equal(t, 1, code, vout)
	require.Contains(t, vout, "audit verify FAILED: checkpoint refused: checkpoint signature does not verify")

	code, vout = d.verify("--checkpoint", "no-such-file")
	require.Equal(t, 2, code, vout)
	withEnv(t, map[string]string{"AGENTOTP_ADMIN_KEY": agentotp.NewUserKey().Reveal()})
	code, _, errs = run(t, "audit", "checkpoint", "--url", "http://127.0.0.1:1")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "--data")
}

// TestServeAuditHead: serve logs a signed checkpoint of the audit head at
// start and at shutdown, and refuses to start with the wrong key.
func TestServeAuditHead(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	_, _, stop, log := startServerLog(t, "--data", dir)
	require.Contains(t, log.String(), `msg="audit head"`)
	require.Contains(t, log.String(), "agentotp-checkpoint v1 seq=")
	stop()
	lines := regexp.MustCompile(`checkpoint="(agentotp-checkpoint[^"]+)"`).FindAllStringSubmatch(log.String(), -1)
	require.GreaterOrEqual(t, len(lines), 2, "at start and at shutdown: %s", log)
	code, out, _ := run(t, "audit", "verify", "--data", dir, "--checkpoint", lines[len(lines)-1][1])
	require.Equal(t, 0, code, out)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "audit.key"), []byte(strings.Repeat("cd", 32)), 0o600))
	code, _, errs := run(t, "serve", "--data", dir, "--addr", "127.0.0.1:0")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "wrong audit key")
}

// A chain written without a key is refused by a store with one until
// `audit adopt` keys it, after checking it by hash.
func TestAuditAdoptCommand(t *testing.T) {
	withEnv(t, nil)
	dir := filepath.Join(t.TempDir(), "data")
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "agentotp.db"), sqlite.Options{})
	require.NoError(t, err)
	svc := agentotp.NewService(st, agentotp.Options{})
	_, _, err = svc.CreateAgent(context.Background(), agentotp.SystemPrincipal, agentotp.AgentInput{Name: "before-the-key"})
	require.NoError(t, err)
	require.NoError(t, st.Close())

	code, out, errs := run(t, "audit", "verify", "--data", dir)
	require.Equal(t, 1, code, out+errs)
	require.Contains(t, out+errs, "no MAC at all although this store has an audit key")
	require.Contains(t, out+errs, "agentotp audit adopt")

	code, out, errs = run(t, "audit", "adopt", "--data", dir)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "adopted: 1 events written before the key")
	code, out, errs = run(t, "audit", "verify", "--data", dir)
	require.Equal(t, 0, code, out+errs)
	code, out, _ = run(t, "audit", "adopt", "--data", dir)
	require.Equal(t, 0, code)
	require.Contains(t, out, "nothing to adopt")
}
