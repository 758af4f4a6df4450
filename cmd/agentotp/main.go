// Command agentotp is the agentotp server, CLI, MCP server and gateway.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Main runs one subcommand and returns the process exit code. Tests call it
// in process.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	code := dispatch(ctx, args, stdin, stdout, stderr)
	if code == helpShown {
		return 0
	}
	return code
}

func dispatch(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, stdout, stderr)
	case "mcp":
		return runMCP(ctx, rest, stdin, stdout, stderr)
	case "gateway":
		return runGateway(ctx, rest, stdin, stdout, stderr)
	case "agents":
		return runAgents(ctx, rest, stdout, stderr)
	case "users":
		return runUsers(ctx, rest, stdout, stderr)
	case "pending":
		return runPending(ctx, rest, stdout, stderr)
	case "show":
		return runShow(ctx, rest, stdout, stderr)
	case "approve":
		return runDecide(ctx, true, rest, stdout, stderr)
	case "deny":
		return runDecide(ctx, false, rest, stdout, stderr)
	case "audit":
		return runAudit(ctx, rest, stdout, stderr)
	case "prune":
		return runPrune(ctx, rest, stdout, stderr)
	case "policy":
		return runPolicy(ctx, rest, stdout, stderr)
	case "bench":
		return runBench(ctx, rest, stdout, stderr)
	case "version", "--version":
		return runVersion(stdout)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "agentotp: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: agentotp <command> [flags]

commands:
  serve                     run the HTTP API and the MCP endpoints (/mcp, /mcp/sse)
  mcp                       MCP server for one agent over stdio (or --transport http|sse)
  gateway --config FILE     MCP gateway gating every tool call of the MCP servers in FILE
  agents create|list|rotate|disable
  users create|list
  pending | show ID | approve ID | deny ID
  policy check FILE... | policy test DIR
  audit list|verify|checkpoint|export
  prune [--older-than 30d]  delete decided and expired permissions past retention (audit events stay)
  bench                     load-test a running server
  version
`)
}
