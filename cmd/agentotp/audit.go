package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/agentotp/agentotp"
)

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: agentotp audit list [--follow] | verify | export [--format jsonl]")
		return 2
	}
	sub, args := args[0], args[1:]
	c := newAdminCmd("audit "+sub, stderr)
	follow := c.fs.Bool("follow", false, "keep printing new events (list)")
	limit := c.fs.Int("limit", 50, "events to show (list)")
	format := c.fs.String("format", "jsonl", "export format (jsonl)")
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
		rep, err := a.VerifyAudit(ctx)
		if err != nil {
			return fail(stderr, "audit verify", err)
		}
		if !rep.OK {
			fmt.Fprintf(stdout, "audit chain BROKEN at seq %d: %s (%d events verified before it)\n", rep.BadSeq, rep.Reason, rep.Checked)
			return 1
		}
		fmt.Fprintf(stdout, "audit chain OK: %d events, last seq %d, head %s\n", rep.Checked, rep.LastSeq, rep.LastHash)
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

func printEvent(w io.Writer, e *agentotp.AuditEvent) {
	details := string(e.DetailsJSON)
	if len(details) > 160 {
		details = details[:157] + "..."
	}
	fmt.Fprintf(w, "%6d  %s  %-15s %-6s %-30s %-32s %s\n", e.Seq, e.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
		e.Type, e.ActorType, e.ActorID, e.PermissionID, details)
}
