package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/mcpserver"
)

// runGateway is `agentotp gateway`: an MCP server in front of the MCP
// servers of gateway.yaml, gating every tool call with agentotp.
func runGateway(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentotp gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "gateway config file (YAML): the downstream servers ($AGENTOTP_GATEWAY_CONFIG)")
	transport := fs.String("transport", "stdio", "stdio, or http (streamable HTTP at /mcp, clients send the agent key as a bearer token)")
	apiKey := fs.String("api-key", "", "the gateway's agent key ($AGENTOTP_API_KEY or apiKey in the config; prefer those: flags show in process lists)")
	// The server settings (--data, --policies, …) as every command has
	// them, but not their --config, which here names gateway.yaml.
	core := flag.NewFlagSet("core", flag.ContinueOnError)
	load := configFlags(core, "addr", "data", "db", "policies", "public-url", "log-level", "log-format")
	core.VisitAll(func(f *flag.Flag) {
		if f.Name != "config" {
			fs.Var(f.Value, f.Name, f.Usage)
		}
	})
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: agentotp gateway --config gateway.yaml [--transport stdio|http] [--addr HOST:PORT] [--data DIR --policies FILE]

An MCP server in front of the MCP servers listed in gateway.yaml. Their tools
appear as <server>__<tool>; every call is a permission request (action
mcp.<server>.<tool>, scope = the arguments) that agentotp's policy decides,
asking a person when it says so, before the call reaches the server.

With server: in gateway.yaml it asks that agentotp server; otherwise it runs
embedded on the data directory with its policies. The agent key comes from
apiKey: in gateway.yaml or $AGENTOTP_API_KEY (create one with: agentotp
agents create gateway). Children get only the environment gateway.yaml gives
them, plus PATH and HOME.

flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "agentotp gateway: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	addrSet := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "config" && core.Lookup(f.Name) != nil {
			_ = core.Set(f.Name, f.Value.String()) // marks it set for load
		}
		addrSet = addrSet || f.Name == "addr"
	})
	cfg, err := load(env)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp gateway:", err)
		return 2
	}
	if *configPath == "" {
		*configPath = env("AGENTOTP_GATEWAY_CONFIG")
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "agentotp gateway: --config gateway.yaml is required")
		return 2
	}
	gw, err := loadGatewayConfig(*configPath, env)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp gateway:", err)
		return 2
	}
	key, err := agentKey(*apiKey, gw.APIKey)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp gateway:", err, "(set AGENTOTP_API_KEY or apiKey: ${AGENTOTP_API_KEY}; create one with: agentotp agents create gateway)")
		return 2
	}
	switch *transport {
	case "stdio", "http":
	default:
		fmt.Fprintf(stderr, "agentotp gateway: --transport must be stdio or http, not %q\n", *transport)
		return 2
	}
	if *transport == "http" && !addrSet && env("AGENTOTP_ADDR") == "" {
		cfg.Addr = "127.0.0.1:8789" // beside `agentotp serve` (8787) and `agentotp mcp` (8788)
	}

	logger := newLogger(cfg, stderr) // stdout carries the protocol only
	var (
		perms    mcpserver.Permissions
		identity string
	)
	if gw.Server != "" {
		perms = otpclient.New(gw.Server, key.Reveal(), otpclient.WithUserAgent("agentotp-gateway/"+version), otpclient.WithLogger(logger))
		identity = "key:" + key.Hash()
	} else {
		var stop func()
		var err error
		perms, identity, stop, err = embeddedAgent(ctx, cfg, logger, key)
		if err != nil {
			fmt.Fprintln(stderr, "agentotp gateway:", err)
			return 1
		}
		defer stop()
	}

	g, err := mcpserver.NewGateway(mcpserver.GatewayOptions{
		Version: version, Logger: logger, Servers: gw.Servers, Wait: gw.Wait, Stderr: stderr,
	})
	if err != nil {
		fmt.Fprintln(stderr, "agentotp gateway:", err)
		return 2
	}
	if err := g.Start(ctx); err != nil {
		fmt.Fprintln(stderr, "agentotp gateway:", err)
		return 1
	}
	defer g.Close()

	if *transport == "stdio" {
		if err := g.ServeStdio(ctx, perms, identity, stdin, stdout); err != nil {
			fmt.Fprintln(stderr, "agentotp gateway:", err)
			return 1
		}
		return 0
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp gateway: listen:", err)
		return 1
	}
	var origins []string
	if cfg.PublicURL != "" {
		origins = append(origins, cfg.PublicURL)
	}
	h := mcpserver.SingleAgent(key.Reveal(), perms, identity, g.HTTP(mcpserver.HTTPOptions{AllowedOrigins: origins}))
	fmt.Fprintf(stderr, "agentotp gateway: streamable HTTP at http://%s/mcp\n", ln.Addr())
	if err := runHTTP(ctx, ln, h, logger); err != nil {
		fmt.Fprintln(stderr, "agentotp gateway:", err)
		return 1
	}
	return 0
}

// gatewayFile is gateway.yaml.
type gatewayFile struct {
	// Server is the agentotp server to ask; empty: embedded on --data.
	Server string `yaml:"server"`
	// APIKey is the gateway's agent key, normally ${AGENTOTP_API_KEY}.
	APIKey string `yaml:"apiKey"`
	// Wait is how long a call waits for a person: a Go duration or
	// seconds (default 50s, at most 55s; 0 answers "pending" at once).
	Wait    string                       `yaml:"wait"`
	Servers map[string]gatewayServerFile `yaml:"servers"`
}

// gatewayServerFile is one downstream server of gateway.yaml.
type gatewayServerFile struct {
	Command   string            `yaml:"command"`
	Args      []string          `yaml:"args"`
	Env       map[string]string `yaml:"env"`
	Cwd       string            `yaml:"cwd"`
	URL       string            `yaml:"url"`
	Transport string            `yaml:"transport"`
	Headers   map[string]string `yaml:"headers"`
}

// gatewayConfig is gateway.yaml checked and ready for mcpserver.
type gatewayConfig struct {
	Server  string
	APIKey  string
	Wait    time.Duration // as mcpserver.GatewayOptions.Wait
	Servers []mcpserver.Downstream
}

// loadGatewayConfig reads gateway.yaml: unknown keys are errors (with
// their line), ${VAR} in any value is replaced by the environment variable
// (an unset one is an error; ${VAR:-default} gives a default; $$ is a
// literal $), and relative cwd paths are relative to the file.
func loadGatewayConfig(path string, env func(string) string) (*gatewayConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	fail := func(err error) (*gatewayConfig, error) { return nil, fmt.Errorf("%s: %w", path, err) }
	// First pass, as written: unknown keys and wrong types, with lines.
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var strict gatewayFile
	if err := dec.Decode(&strict); err != nil && err != io.EOF {
		return fail(yamlError(err))
	}
	// Second pass: the same document with ${VAR} expanded.
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return fail(yamlError(err))
	}
	if err := expandNode(&root, env); err != nil {
		return fail(err)
	}
	var f gatewayFile
	if len(root.Content) > 0 {
		if err := root.Decode(&f); err != nil {
			return fail(yamlError(err))
		}
	}
	lines := serverLines(&root)
	at := func(name string) string {
		if l := lines[name]; l > 0 {
			return fmt.Sprintf("line %d: ", l)
		}
		return ""
	}

	c := &gatewayConfig{Server: strings.TrimRight(f.Server, "/"), APIKey: strings.TrimSpace(f.APIKey)}
	if c.Server != "" {
		u, err := url.Parse(c.Server)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fail(fmt.Errorf("server: must be the agentotp server's http(s) URL, not %q", f.Server))
		}
	}
	if c.Wait, err = parseGatewayWait(f.Wait); err != nil {
		return fail(err)
	}
	if len(f.Servers) == 0 {
		return fail(errors.New("servers: list at least one downstream MCP server"))
	}
	names := make([]string, 0, len(f.Servers))
	for name := range f.Servers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s := f.Servers[name]
		if !mcpserver.ValidServerName(name) {
			return fail(fmt.Errorf("%sservers: %q: a server name uses letters, digits, '-' and single '_' between them (at most 64 bytes): tools become <server>__<tool>", at(name), name))
		}
		d := mcpserver.Downstream{Name: name, Command: s.Command, Args: s.Args, Env: s.Env, Dir: s.Cwd,
			URL: s.URL, Headers: s.Headers, Transport: s.Transport}
		if d.Dir != "" && !filepath.IsAbs(d.Dir) {
			d.Dir = filepath.Join(filepath.Dir(path), d.Dir)
		}
		switch {
		case s.Command == "" && s.URL == "":
			return fail(fmt.Errorf("%sservers: %s: set command (a stdio server) or url (an HTTP server)", at(name), name))
		case s.Command != "" && s.URL != "":
			return fail(fmt.Errorf("%sservers: %s: set command or url, not both", at(name), name))
		case s.Command != "" && (s.Transport != "" && s.Transport != mcpserver.TransportStdio):
			return fail(fmt.Errorf("%sservers: %s: a command is served over stdio; transport %q needs a url", at(name), name, s.Transport))
		case s.Command != "" && len(s.Headers) > 0:
			return fail(fmt.Errorf("%sservers: %s: headers need a url", at(name), name))
		case s.URL != "" && s.Transport != "" && s.Transport != mcpserver.TransportStreamableHTTP && s.Transport != mcpserver.TransportSSE:
			return fail(fmt.Errorf("%sservers: %s: transport must be streamable-http or sse, not %q", at(name), name, s.Transport))
		case s.URL != "" && (len(s.Args) > 0 || len(s.Env) > 0 || s.Cwd != ""):
			return fail(fmt.Errorf("%sservers: %s: args, env and cwd need a command", at(name), name))
		}
		if s.URL != "" {
			u, err := url.Parse(s.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fail(fmt.Errorf("%sservers: %s: url must be http:// or https://, not %q", at(name), name, s.URL))
			}
		}
		c.Servers = append(c.Servers, d)
	}
	return c, nil
}

// parseGatewayWait reads wait: "" is the default, 0 answers at once.
func parseGatewayWait(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.Atoi(s)
		if nerr != nil {
			return 0, fmt.Errorf("wait: %q is not a duration (50s, 1m) or a number of seconds", s)
		}
		d = time.Duration(n) * time.Second
	}
	switch {
	case d < 0 || d > mcpserver.MaxWait:
		return 0, fmt.Errorf("wait: must be between 0 and %s, not %s", mcpserver.MaxWait, d)
	case d == 0:
		return -1, nil // answer "approval pending" at once
	}
	return d, nil
}

var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)

// yamlError words yaml.v3's errors for people: "line 4: unknown key
// "comand"" rather than Go type names.
func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			msgs[i] = unknownFieldRE.ReplaceAllString(m, `unknown key "$1"`)
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return err
}

// expandNode replaces ${VAR} in every scalar value (not in keys) of n.
func expandNode(n *yaml.Node, env func(string) string) error {
	switch n.Kind {
	case yaml.ScalarNode:
		v, err := expandVars(n.Value, env)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		n.Value = v
	case yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 {
			if err := expandNode(n.Content[i], env); err != nil {
				return err
			}
		}
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if err := expandNode(c, env); err != nil {
				return err
			}
		}
	}
	return nil
}

var varNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandVars replaces ${NAME} and ${NAME:-default} in s; $$ is a literal
// $, and any other $ stays as it is.
func expandVars(s string, env func(string) string) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", fmt.Errorf("unclosed ${ in %q", s)
			}
			expr := s[i+2 : i+2+end]
			name, def, hasDef := strings.Cut(expr, ":-")
			if !varNameRE.MatchString(name) {
				return "", fmt.Errorf("${%s}: not an environment variable name", expr)
			}
			v := env(name)
			if v == "" {
				if !hasDef {
					return "", fmt.Errorf("${%s}: environment variable %s is not set (write ${%s:-} to allow empty, $$ for a literal $)", name, name, name)
				}
				v = def
			}
			b.WriteString(v)
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

// serverLines maps each server name under servers: to its line.
func serverLines(root *yaml.Node) map[string]int {
	out := map[string]int{}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return out
	}
	top := root.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "servers" || top.Content[i+1].Kind != yaml.MappingNode {
			continue
		}
		m := top.Content[i+1]
		for j := 0; j+1 < len(m.Content); j += 2 {
			out[m.Content[j].Value] = m.Content[j].Line
		}
	}
	return out
}
