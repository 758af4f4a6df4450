package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/agentotp/agentotp"
)

func runAgents(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: agentotp agents create NAME [--description D] | list | rotate ID | disable ID | enable ID | delete ID")
		return 2
	}
	sub, args := args[0], args[1:]
	c := newAdminCmd("agents "+sub, stderr)
	desc := c.fs.String("description", "", "description (create)")
	if c.help([]string{sub}, stdout) {
		return helpShown
	}
	pos, rest := positional(args)
	a, code := c.open(ctx, rest, stderr)
	if code != 0 {
		return code
	}
	defer a.Close()
	need := func(n int) bool {
		if len(pos) != n {
			fmt.Fprintf(stderr, "agentotp agents %s: expected %d argument(s)\n", sub, n)
			return false
		}
		return true
	}
	switch sub {
	case "create":
		if !need(1) {
			return 2
		}
		ag, key, secret, err := a.CreateAgent(ctx, agentotp.AgentInput{Name: pos[0], Description: *desc})
		if err != nil {
			return fail(stderr, "agents create", err)
		}
		fmt.Fprintf(stdout, "agent %s (%s) created\napi key (shown once): %s\n", ag.Name, ag.ID, key.Reveal())
		printCallbackSecret(stdout, secret)
	case "list":
		list, err := a.ListAgents(ctx)
		if err != nil {
			return fail(stderr, "agents list", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tKEY PREFIX\tACTIVE\tCREATED")
		for _, ag := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\n", ag.ID, ag.Name, ag.KeyPrefix, ag.Active, ag.CreatedAt.UTC().Format("2006-01-02 15:04:05"))
		}
		tw.Flush()
	case "rotate":
		if !need(1) {
			return 2
		}
		ag, key, secret, err := a.RotateAgentKey(ctx, pos[0])
		if err != nil {
			return fail(stderr, "agents rotate", err)
		}
		fmt.Fprintf(stdout, "agent %s (%s): new api key (shown once): %s\n", ag.Name, ag.ID, key.Reveal())
		printCallbackSecret(stdout, secret)
	case "disable", "enable":
		if !need(1) {
			return 2
		}
		ag, err := a.SetAgentActive(ctx, pos[0], sub == "enable")
		if err != nil {
			return fail(stderr, "agents "+sub, err)
		}
		fmt.Fprintf(stdout, "agent %s (%s) %sd\n", ag.Name, ag.ID, sub)
	case "delete":
		if !need(1) {
			return 2
		}
		if err := a.DeleteAgent(ctx, pos[0]); err != nil {
			return fail(stderr, "agents delete", err)
		}
		fmt.Fprintf(stdout, "agent %s deleted (its history is kept)\n", pos[0])
	default:
		fmt.Fprintf(stderr, "agentotp agents: unknown subcommand %q\n", sub)
		return 2
	}
	return 0
}

// callbackSecret derives an agent's callback secret with the key of the
// data directory the command works on (creating the key file as serve
// would). A problem with the key is a warning: the API key, shown only
// now, must be printed whatever happens.
func (l *localAdmin) callbackSecret(ag *agentotp.Agent) agentotp.Secret {
	key, err := callbackKey(l.cfg)
	if err != nil {
		fmt.Fprintf(l.stderr, "agentotp: no callback secret: %v (rotate the key once this is fixed to get one)\n", err)
		return ""
	}
	return agentotp.CallbackSecret(key, ag)
}

func printCallbackSecret(w io.Writer, secret agentotp.Secret) {
	if secret != "" {
		fmt.Fprintf(w, "callback secret (shown once, verifies decision callbacks): %s\n", secret.Reveal())
	}
}

func runUsers(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: agentotp users create NAME --role approver|admin [--telegram-id N] | list | rotate ID | delete ID")
		return 2
	}
	sub, args := args[0], args[1:]
	c := newAdminCmd("users "+sub, stderr)
	role := c.fs.String("role", "approver", "role: approver or admin (create)")
	tg := c.fs.Int64("telegram-id", 0, "Telegram user id allowed to press Approve (create)")
	if c.help([]string{sub}, stdout) {
		return helpShown
	}
	pos, rest := positional(args)
	a, code := c.open(ctx, rest, stderr)
	if code != 0 {
		return code
	}
	defer a.Close()
	switch sub {
	case "create":
		if len(pos) != 1 {
			fmt.Fprintln(stderr, "agentotp users create: expected NAME")
			return 2
		}
		u, key, err := a.CreateUser(ctx, agentotp.UserInput{Name: pos[0], Role: agentotp.Role(*role), TelegramID: *tg})
		if err != nil {
			return fail(stderr, "users create", err)
		}
		fmt.Fprintf(stdout, "user %s (%s, %s) created\nuser key (shown once): %s\n", u.Name, u.ID, u.Role, key.Reveal())
	case "list":
		list, err := a.ListUsers(ctx)
		if err != nil {
			return fail(stderr, "users list", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tROLE\tTELEGRAM\tACTIVE")
		for _, u := range list {
			tgID := "-"
			if u.TelegramID != 0 {
				tgID = strconv.FormatInt(u.TelegramID, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\n", u.ID, u.Name, u.Role, tgID, u.Active)
		}
		tw.Flush()
	case "rotate":
		if len(pos) != 1 {
			fmt.Fprintln(stderr, "agentotp users rotate: expected ID")
			return 2
		}
		u, key, err := a.RotateUserKey(ctx, pos[0])
		if err != nil {
			return fail(stderr, "users rotate", err)
		}
		fmt.Fprintf(stdout, "user %s (%s): new key (shown once): %s\n", u.Name, u.ID, key.Reveal())
	case "delete":
		if len(pos) != 1 {
			fmt.Fprintln(stderr, "agentotp users delete: expected ID")
			return 2
		}
		if err := a.DeleteUser(ctx, pos[0]); err != nil {
			return fail(stderr, "users delete", err)
		}
		fmt.Fprintf(stdout, "user %s deleted\n", pos[0])
	default:
		fmt.Fprintf(stderr, "agentotp users: unknown subcommand %q\n", sub)
		return 2
	}
	return 0
}

// positional splits leading positional arguments from flags so that both
// `agents create NAME --data d` and `agents create --data d NAME` work.
func positional(args []string) (pos, flags []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) > 1 && a[0] == '-' {
			flags = append(flags, a)
			if !containsEq(a) && i+1 < len(args) && !isBoolFlag(a) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return pos, flags
}

func containsEq(s string) bool {
	for _, c := range s {
		if c == '=' {
			return true
		}
	}
	return false
}

func isBoolFlag(s string) bool {
	switch s {
	case "--follow", "-follow", "--json", "-json", "-h", "--help", "-help":
		return true
	}
	return false
}

func isHelp(arg string) bool { return arg == "-h" || arg == "--help" || arg == "help" }
