package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/mcpserver"
	"github.com/agentotp/agentotp/notify"
)

// runMCP is `agentotp mcp`: the permission tools for one agent, over stdio
// (what Claude Desktop, Claude Code and Cursor start) or over HTTP.
func runMCP(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentotp mcp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	transport := fs.String("transport", "stdio", "stdio, http (streamable HTTP at /mcp) or sse (legacy SSE at /mcp/sse)")
	apiKey := fs.String("api-key", "", "the agent's ak_ key ($AGENTOTP_API_KEY; prefer the environment: flags show in process lists)")
	load := configFlags(fs, "addr", "data", "db", "policies", "public-url", "url", "log-level", "log-format")
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: agentotp mcp [--transport stdio|http|sse] [--addr HOST:PORT] (--url URL | --data DIR) [--api-key KEY]

Serves agentotp's MCP tools for one agent. With --url (or $AGENTOTP_URL) it
talks to that agentotp server; otherwise it runs embedded on the data
directory, with the same store and policies 'agentotp serve' uses. Over HTTP
clients must send the same key as Authorization: Bearer <key>.

flags:
`)
		fs.PrintDefaults()
	}
	addrSet := false
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fs.Visit(func(f *flag.Flag) { addrSet = addrSet || f.Name == "addr" })
	cfg, err := load(env)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp mcp:", err)
		return 2
	}
	key, err := agentKey(*apiKey)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp mcp:", err, "(set AGENTOTP_API_KEY; create one with: agentotp agents create NAME)")
		return 2
	}
	switch *transport {
	case "stdio", "http", "sse":
	default:
		fmt.Fprintf(stderr, "agentotp mcp: --transport must be stdio, http or sse, not %q\n", *transport)
		return 2
	}
	if *transport != "stdio" && !addrSet && env("AGENTOTP_ADDR") == "" {
		cfg.Addr = "127.0.0.1:8788" // beside a local `agentotp serve` on 8787
	}

	logger := newLogger(cfg, stderr) // stdout carries the protocol only
	var (
		perms    mcpserver.Permissions
		identity string
	)
	if cfg.URL != "" {
		perms = otpclient.New(cfg.URL, key.Reveal(), otpclient.WithUserAgent("agentotp-mcp/"+version), otpclient.WithLogger(logger))
		identity = "key:" + key.Hash()
	} else {
		var stop func()
		perms, identity, stop, err = embeddedAgent(ctx, cfg, logger, key)
		if err != nil {
			fmt.Fprintln(stderr, "agentotp mcp:", err)
			return 1
		}
		defer stop()
	}

	srv := mcpserver.New(mcpserver.Options{Version: version, Logger: logger})
	if *transport == "stdio" {
		if err := srv.ServeStdio(ctx, perms, identity, stdin, stdout); err != nil {
			fmt.Fprintln(stderr, "agentotp mcp:", err)
			return 1
		}
		return 0
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp mcp: listen:", err)
		return 1
	}
	base := "http://" + ln.Addr().String()
	var origins []string
	if cfg.PublicURL != "" {
		origins = append(origins, cfg.PublicURL)
	}
	h := mcpserver.SingleAgent(key.Reveal(), perms, identity, srv.HTTP(mcpserver.HTTPOptions{AllowedOrigins: origins}))
	if *transport == "sse" {
		fmt.Fprintf(stderr, "agentotp mcp: SSE transport at %s/mcp/sse\n", base)
	} else {
		fmt.Fprintf(stderr, "agentotp mcp: streamable HTTP at %s/mcp\n", base)
	}
	if err := runHTTP(ctx, ln, h, logger); err != nil {
		fmt.Fprintln(stderr, "agentotp mcp:", err)
		return 1
	}
	return 0
}

// mountMCP puts the MCP transports on the API server: streamable HTTP at
// /mcp, SSE at /mcp/sse, each request acting as the agent whose key it
// carries, with the API's authentication and rate limits.
func mountMCP(api *httpapi.Server, svc *agentotp.Service, publicURL string) {
	srv := mcpserver.New(mcpserver.Options{Version: version})
	h := srv.HTTP(mcpserver.HTTPOptions{Path: "/mcp", AllowedOrigins: []string{publicURL}})
	bound := api.AgentOnly(mcpserver.ServiceAgents(svc, h))
	api.Handle("/mcp", bound)
	api.Handle("/mcp/", bound)
}

// embeddedAgent runs the service on cfg's data for the agent of key, as
// `agentotp mcp` and `agentotp gateway` do without a server: pending
// requests are logged with the command that approves them, and due ones
// are expired. stop releases it all.
func embeddedAgent(ctx context.Context, cfg Config, logger *slog.Logger, key agentotp.Secret) (mcpserver.Permissions, string, func(), error) {
	// Approval links point at the console of `agentotp serve` on the same
	// data directory: its public URL, or its default address.
	public := cfg.PublicURL
	if public == "" {
		public = "http://" + DefaultConfig().Addr
	}
	a, err := openApp(ctx, cfg, logger, public, func(_ agentotp.Store, o *agentotp.Options) error {
		o.Notifier = &notify.Log{Logger: logger, Approve: func(id agentotp.PermissionID) string {
			return fmt.Sprintf("%s approve %s %s", self(), id, dataFlag(cfg))
		}}
		return nil
	})
	if err != nil {
		return nil, "", nil, err
	}
	// Held for the process's life: the session authenticates the key at
	// every call, so disabling, deleting or re-keying the agent (from the
	// CLI, say) stops it within a second.
	session, err := a.svc.AgentSessionForKey(ctx, key)
	if err != nil {
		a.Close()
		return nil, "", nil, fmt.Errorf("agent key: %w", err)
	}
	sweepCtx, stopSweep := context.WithCancel(ctx)
	go a.svc.RunSweeper(sweepCtx, time.Second)
	return session, "agent:" + string(session.Agent().ID), func() { stopSweep(); a.Close() }, nil
}

// agentKey is the first of keys that is set, else AGENTOTP_API_KEY (or
// its _FILE), and must be an agent key.
func agentKey(keys ...string) (agentotp.Secret, error) {
	var key agentotp.Secret
	for _, k := range keys {
		if key == "" {
			key = agentotp.Secret(k)
		}
	}
	if key == "" {
		var err error
		if key, err = secretFromEnv(env, "AGENTOTP_API_KEY"); err != nil {
			return "", err
		}
	}
	if !agentotp.ValidKeyFormat(key.Reveal()) || !strings.HasPrefix(key.Reveal(), agentotp.AgentKeyPrefix) {
		return "", fmt.Errorf("an agent key (ak_…) is required")
	}
	return key, nil
}
