package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/agentotp/agentotp"
)

func runPending(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newAdminCmd("pending", stderr)
	a, code := c.open(ctx, args, stderr)
	if code != 0 {
		return code
	}
	defer a.Close()
	list, err := a.Pending(ctx)
	if err != nil {
		return fail(stderr, "pending", err)
	}
	if len(list) == 0 {
		fmt.Fprintln(stdout, "nothing is waiting for approval")
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGENT\tACTION\tRESOURCE\tSCOPE\tEXPIRES")
	for _, perm := range list {
		scope, _ := json.Marshal(perm.GrantedScope)
		fmt.Fprintf(tw, "%s\t%s\t%q\t%q\t%s\t%s\n", perm.ID, perm.AgentID, perm.Action, perm.Resource, scope,
			perm.ApprovalExpiresAt.UTC().Format("2006-01-02 15:04:05Z"))
	}
	tw.Flush()
	return 0
}

func runDecide(ctx context.Context, approve bool, args []string, stdout, stderr io.Writer) int {
	name := "deny"
	if approve {
		name = "approve"
	}
	c := newAdminCmd(name, stderr)
	reason := c.fs.String("reason", "", "reason, recorded in the audit")
	scope := ""
	if approve {
		c.fs.StringVar(&scope, "scope", "", "JSON object narrowing the granted scope")
	}
	pos, rest := positional(args)
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "usage: agentotp %s ID [--reason R]\n", name)
		return 2
	}
	a, code := c.open(ctx, rest, stderr)
	if code != 0 {
		return code
	}
	defer a.Close()
	in := agentotp.DecideInput{Approved: approve, Reason: *reason}
	if scope != "" {
		if err := json.Unmarshal([]byte(scope), &in.ScopeModifications); err != nil {
			fmt.Fprintf(stderr, "agentotp approve: --scope must be a JSON object: %v\n", err)
			return 2
		}
	}
	perm, err := a.Decide(ctx, pos[0], in)
	if err != nil {
		return fail(stderr, name, err)
	}
	fmt.Fprintf(stdout, "%s: %s\n", perm.ID, perm.Status)
	return 0
}
