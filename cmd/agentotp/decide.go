package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"text/tabwriter"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify"
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
	names := agentNames(ctx, a)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGENT\tACTION\tRESOURCE\tAGENT'S REASON\tEXPIRES")
	for _, perm := range list {
		fmt.Fprintf(tw, "%s\t%s\t%q\t%q\t%q\t%s\n", perm.ID, names(perm.AgentID), perm.Action, perm.Resource,
			clip(notify.AgentReason(perm), 60), perm.ApprovalExpiresAt.UTC().Format("2006-01-02 15:04:05Z"))
	}
	tw.Flush()
	fmt.Fprintln(stdout, "\nsee one in full: agentotp show ID · decide: agentotp approve ID | agentotp deny ID --reason R")
	return 0
}

// agentNames returns a lookup from agent id to "name (id)", falling back
// to the id when the list cannot be read.
func agentNames(ctx context.Context, a admin) func(agentotp.AgentID) string {
	byID := map[agentotp.AgentID]string{}
	if agents, err := a.ListAgents(ctx); err == nil {
		for _, ag := range agents {
			byID[ag.ID] = ag.Name
		}
	}
	return func(id agentotp.AgentID) string {
		if n, ok := byID[id]; ok {
			return n
		}
		return string(id)
	}
}

// clip shortens agent-supplied text for a table cell.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// runShow prints one request in full, so a person sees exactly what they
// are deciding: the action, the scope as granted so far, and the agent's
// own words marked as such.
func runShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newAdminCmd("show", stderr)
	if c.help(args, stdout) {
		return helpShown
	}
	pos, rest := positional(args)
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: agentotp show ID [--data DIR | --url URL]")
		return 2
	}
	a, code := c.open(ctx, rest, stderr)
	if code != 0 {
		return code
	}
	defer a.Close()
	p, err := a.Permission(ctx, pos[0])
	if err != nil {
		return fail(stderr, "show", err)
	}
	pretty := func(m map[string]any) string {
		if len(m) == 0 {
			return "{}"
		}
		b, _ := json.MarshalIndent(m, "  ", "  ")
		return string(b)
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	}
	w := stdout
	fmt.Fprintf(w, "id:         %s\n", p.ID)
	fmt.Fprintf(w, "status:     %s\n", p.Status)
	fmt.Fprintf(w, "agent:      %s (%s)\n", agentNames(ctx, a)(p.AgentID), p.AgentID)
	fmt.Fprintf(w, "action:     %q\n", p.Action)
	fmt.Fprintf(w, "resource:   %q\n", p.Resource)
	fmt.Fprintf(w, "scope:      %s\n", pretty(p.GrantedScope))
	if !reflect.DeepEqual(p.Scope, p.GrantedScope) && p.Scope != nil {
		fmt.Fprintf(w, "requested:  %s\n", pretty(p.Scope))
	}
	fmt.Fprintf(w, "context (the agent's own words, unverified):\n  %s\n", pretty(p.Context))
	if p.Decision.Rule != "" {
		fmt.Fprintf(w, "rule:       %s\n", p.Decision.Rule)
	}
	if p.Decision.Quorum > 1 {
		fmt.Fprintf(w, "quorum:     %d distinct approvers\n", p.Decision.Quorum)
	}
	fmt.Fprintf(w, "created:    %s\n", ts(p.CreatedAt))
	fmt.Fprintf(w, "expires:    %s\n", ts(p.ExpiresAt()))
	if p.Status != agentotp.StatusPending {
		fmt.Fprintf(w, "decided:    %s by %s (%s)\n", ts(p.DecidedAt), p.DecidedBy, p.DecisionReason)
	}
	if p.Uses > 0 {
		fmt.Fprintf(w, "uses:       %d of %d left\n", p.UsesRemaining, p.Uses)
	}
	if p.Status == agentotp.StatusPending {
		fmt.Fprintf(w, "\napprove: agentotp approve %s [--scope JSON] · deny: agentotp deny %s --reason R\n", p.ID, p.ID)
	}
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
	if c.help(args, stdout) {
		return helpShown
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
