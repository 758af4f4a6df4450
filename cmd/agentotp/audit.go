package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

const auditUsage = `usage: agentotp audit list [--follow] [--limit N]
       agentotp audit verify [--checkpoint LINE|FILE]
       agentotp audit checkpoint
       agentotp audit export [--format jsonl]

verify      checks the keyed hash chain, the recorded head and every
            permission's stored state against its events; exit 1 names the
            first bad seq and each permission that disagrees. --checkpoint (a
            line printed by "audit checkpoint" or logged by serve, or a file of
            them: the last one counts) also proves that history up to that
            event is unchanged.
checkpoint  prints a signed checkpoint of the chain's head: keep it outside
            the data directory.
adopt       keys a chain that has events but no MAC at all (written before
            the audit key existed): it checks the chain by hash, then appends
            an audit_keyed event, the first with a MAC. Until then a store
            with a key refuses to write to such a chain, since it could as
            well be a keyed one whose MACs someone removed: adopt only a
            chain you trust.

The audit key comes from --audit-key-file (AGENTOTP_AUDIT_KEY_FILE), else
AGENTOTP_AUDIT_KEY, else <data>/audit.key (created on first use).
`

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, auditUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("agentotp audit "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if sub == "adopt" {
		return auditAdopt(ctx, fs, args, stdout, stderr)
	}
	c := &adminCmd{fs: fs, load: configFlags(fs, "data", "db", "policies", "url", "log-level", "log-format", "audit-key-file")}
	follow := c.fs.Bool("follow", false, "keep printing new events (list)")
	limit := c.fs.Int("limit", 50, "events to show (list)")
	format := c.fs.String("format", "jsonl", "export format (jsonl)")
	checkpoint := c.fs.String("checkpoint", "", "a checkpoint line, or a file holding checkpoint lines, to verify against (verify)")
	a, code := c.open(ctx, args, stderr)
	if code != 0 {
		return code
	}
	defer a.Close()
	switch sub {
	case "list":
		events, err := a.RecentAudit(ctx, 0, *limit)
		if err != nil {
			return fail(stderr, "audit list", err)
		}
		var last int64
		for _, e := range events {
			printEvent(stdout, e)
			last = max(last, e.Seq)
		}
		for *follow && ctx.Err() == nil {
			select {
			case <-ctx.Done():
				continue
			case <-time.After(500 * time.Millisecond):
			}
			events, err := a.RecentAudit(ctx, last, 1000)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				return fail(stderr, "audit list", err)
			}
			for _, e := range events {
				printEvent(stdout, e)
				last = e.Seq
			}
		}
	case "verify":
		return auditVerify(ctx, a, *checkpoint, stdout, stderr)
	case "checkpoint":
		l, ok := a.(*localAdmin)
		if !ok {
			fmt.Fprintln(stderr, "agentotp audit checkpoint: signing needs the audit key: run it on the data directory (--data), not with --url")
			return 2
		}
		cp, err := l.app.svc.AuditCheckpoint(ctx, l.p)
		if err != nil {
			return fail(stderr, "audit checkpoint", err)
		}
		fmt.Fprintln(stdout, cp.String())
	case "export":
		if *format != "jsonl" {
			fmt.Fprintln(stderr, "agentotp audit export: --format must be jsonl")
			return 2
		}
		if err := a.ExportAudit(ctx, stdout); err != nil {
			return fail(stderr, "audit export", err)
		}
	default:
		fmt.Fprintf(stderr, "agentotp audit: unknown subcommand %q\n", sub)
		return 2
	}
	return 0
}

// auditVerify runs `audit verify` and prints its report.
func auditVerify(ctx context.Context, a admin, checkpoint string, stdout, stderr io.Writer) int {
	var (
		rep agentotp.AuditReport
		err error
	)
	l, local := a.(*localAdmin)
	switch {
	case local:
		var text string
		if text, err = checkpointText(checkpoint); err != nil {
			return fail(stderr, "audit verify", err)
		}
		rep, err = l.app.svc.VerifyAuditWith(ctx, l.p, agentotp.AuditVerifyOptions{Checkpoint: text})
	case checkpoint != "":
		fmt.Fprintln(stderr, "agentotp audit verify: --checkpoint needs the audit key: run it on the data directory (--data), not with --url")
		return 2
	default:
		rep, err = a.VerifyAudit(ctx)
	}
	if err != nil {
		return fail(stderr, "audit verify", err)
	}
	printAuditReport(stdout, rep, local)
	if !rep.OK {
		return 1
	}
	return 0
}

// checkpointText returns the checkpoint to verify against: the flag's value
// when it holds a checkpoint line, else the content of the file it names.
func checkpointText(v string) (string, error) {
	if v == "" || strings.Contains(v, "agentotp-checkpoint") {
		return v, nil
	}
	b, err := os.ReadFile(v)
	if err != nil {
		return "", agentotp.ValidationError("checkpoint", "is neither a checkpoint line nor a readable file: "+err.Error())
	}
	return string(b), nil
}

// printAuditReport prints a report; details are printed for a local one
// (the API's report, through the client, carries the outcome only).
func printAuditReport(w io.Writer, rep agentotp.AuditReport, details bool) {
	switch {
	case rep.BadSeq > 0:
		fmt.Fprintf(w, "audit chain BROKEN at seq %d: %s (%d events verified before it)\n", rep.BadSeq, rep.Reason, rep.Checked)
	case rep.OK || rep.MismatchCount > 0:
		fmt.Fprintf(w, "audit chain OK: %d events, last seq %d, head %s\n", rep.Checked, rep.LastSeq, rep.LastHash)
	default:
		fmt.Fprintf(w, "audit verify FAILED: %s\n", rep.Reason)
	}
	if !details {
		return
	}
	switch {
	case rep.KeyID == "":
		fmt.Fprintln(w, "MACs: not checked (no audit key)")
	case rep.KeyedFrom == 0 && rep.Checked > 0:
		fmt.Fprintf(w, "MACs: none of the %d events carries one, though key %s was given: the chain was never keyed with it, or its MACs were removed\n", rep.Unkeyed, rep.KeyID)
	case rep.Unkeyed > 0:
		fmt.Fprintf(w, "MACs: checked with key %s from seq %d; the %d events before it were written before the audit key existed and are checked by hash only\n", rep.KeyID, rep.KeyedFrom, rep.Unkeyed)
	case rep.KeyedFrom > 0:
		fmt.Fprintf(w, "MACs: checked with key %s from seq %d\n", rep.KeyID, rep.KeyedFrom)
	}
	if cp := rep.Checkpoint; cp != nil && rep.OK {
		fmt.Fprintf(w, "checkpoint: seq %d of %s matches: history up to it is unchanged\n", cp.Seq, cp.At.UTC().Format(time.RFC3339))
	}
	switch {
	case rep.MismatchCount == 0 && (rep.Checked > 0 || rep.Permissions > 0):
		fmt.Fprintf(w, "permissions: %d checked against their events, all consistent\n", rep.Permissions)
	case rep.MismatchCount > 0:
		fmt.Fprintf(w, "permissions: %d of %d DISAGREE with their events:\n", rep.MismatchCount, rep.Permissions)
		for _, m := range rep.Mismatches {
			fmt.Fprintf(w, "  %s\n", m)
		}
		if more := rep.MismatchCount - len(rep.Mismatches); more > 0 {
			fmt.Fprintf(w, "  ... and %d more\n", more)
		}
		if rep.BadSeq == 0 {
			fmt.Fprintln(w, "audit verify FAILED: permissions disagree with their audit events")
		}
	}
	if rep.Head != nil {
		fmt.Fprintf(w, "keep this checkpoint outside the data directory (audit verify --checkpoint):\n%s\n", rep.Head)
	}
}

// auditHeadInterval is how often serve logs a signed checkpoint of the
// audit head.
const auditHeadInterval = 10 * time.Minute

// startAuditHeadLog logs a signed checkpoint of the audit head now, every
// interval and once more when stopped, so the log (shipped elsewhere) keeps
// checkpoints for `audit verify --checkpoint`. The first one also checks
// the audit key and the recorded head: its error (wrong key, altered head)
// is returned, for serve to refuse to start.
func startAuditHeadLog(ctx context.Context, svc *agentotp.Service, logger *slog.Logger, interval time.Duration) (stop func(), err error) {
	logHead := func(ctx context.Context) error {
		cp, err := svc.AuditCheckpoint(ctx, agentotp.SystemPrincipal)
		if err != nil {
			return err
		}
		logger.Info("audit head", "seq", cp.Seq, "hash", cp.Hash, "checkpoint", cp.String())
		return nil
	}
	if err := logHead(ctx); err != nil {
		return nil, fmt.Errorf("audit trail: %s", safeMessage(err))
	}
	loopCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-loopCtx.Done():
				return
			case <-t.C:
				if err := logHead(loopCtx); err != nil && !errors.Is(err, context.Canceled) {
					logger.Error("audit head check failed", "err", err)
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
		final, cancelFinal := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancelFinal()
		if err := logHead(final); err != nil {
			logger.Error("audit head check failed", "err", err)
		}
	}, nil
}

func printEvent(w io.Writer, e *agentotp.AuditEvent) {
	details := string(e.DetailsJSON)
	if len(details) > 160 {
		details = details[:157] + "..."
	}
	fmt.Fprintf(w, "%6d  %s  %-15s %-6s %-30s %-32s %s\n", e.Seq, e.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
		e.Type, e.ActorType, e.ActorID, e.PermissionID, details)
}

// auditAdopt keys an unkeyed chain on the data directory's store, after
// checking it by hash.
func auditAdopt(ctx context.Context, fs *flag.FlagSet, args []string, stdout, stderr io.Writer) int {
	load := configFlags(fs, "data", "db", "audit-key-file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return helpShown
		}
		return 2
	}
	cfg, err := load(env)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp:", err)
		return 2
	}
	key, err := auditKey(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp audit adopt:", err)
		return 1
	}
	// By hash first, with a store that has no key and so writes nothing.
	st, err := openStore(ctx, cfg, nil, false)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp audit adopt:", err)
		return 1
	}
	v := agentotp.NewChainVerifier()
	err = st.ScanAudit(ctx, v.Next)
	st.Close()
	switch {
	case err != nil:
		fmt.Fprintln(stderr, "agentotp audit adopt: the chain does not verify by hash, nothing adopted:", err)
		return 1
	case v.KeyedFrom > 0:
		fmt.Fprintf(stdout, "the audit chain is keyed from seq %d: nothing to adopt\n", v.KeyedFrom)
		return 0
	case v.Checked == 0:
		fmt.Fprintln(stdout, "the audit chain is empty: nothing to adopt")
		return 0
	}
	st, err = openStore(ctx, cfg, key, true)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp audit adopt:", err)
		return 1
	}
	defer st.Close()
	v = agentotp.NewKeyedChainVerifier(key)
	if err := st.ScanAudit(ctx, v.Next); err != nil {
		return fail(stderr, "audit adopt", err)
	}
	fmt.Fprintf(stdout, "adopted: %d events written before the key are checked by hash; from seq %d every event carries a MAC (key %s)\n",
		v.Unkeyed, v.KeyedFrom, key.ID())
	return 0
}
