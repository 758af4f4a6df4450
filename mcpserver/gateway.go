package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// Downstream transports.
const (
	TransportStdio          = "stdio"
	TransportStreamableHTTP = "streamable-http"
	TransportSSE            = "sse"
)

// DefaultGatewayWait is how long a gateway call waits for a person by
// default before answering "approval pending".
const DefaultGatewayWait = 50 * time.Second

// Downstream is one MCP server behind the gateway: a command started over
// stdio, or a URL reached over streamable HTTP or SSE.
type Downstream struct {
	// Name prefixes its tools and prompts (<name>__<tool>) and names its
	// actions (mcp.<name>.<tool>). Letters, digits, '-' and single '_'
	// between them; at most 64 bytes.
	Name string

	// Command, Args, Env and Dir start a stdio server. The child's
	// environment is Env plus PATH and HOME from the gateway's (Env wins);
	// nothing else of the gateway's environment reaches it. A bare Command
	// is looked up in Env's PATH when it sets one, else in the gateway's.
	Command string
	Args    []string
	Env     map[string]string
	Dir     string

	// URL and Headers reach a server over HTTP.
	URL     string
	Headers map[string]string

	// Transport is TransportStdio (the default with Command),
	// TransportStreamableHTTP (the default with URL) or TransportSSE.
	Transport string
}

// GatewayOptions configures a Gateway.
type GatewayOptions struct {
	// Version is reported to clients and downstream servers.
	Version string
	Logger  *slog.Logger
	// Servers are the downstream servers; names must be unique.
	Servers []Downstream
	// Wait is how long one call waits for a person before it answers
	// "approval pending" (0: DefaultGatewayWait; at most MaxWait; negative:
	// answer at once).
	Wait time.Duration
	// Stderr receives the stdio children's stderr (default os.Stderr).
	Stderr io.Writer
	// StartTimeout bounds how long Start waits for the downstream servers'
	// first connection (default 30 s); slower ones join later, announced by
	// notifications/tools/list_changed.
	StartTimeout time.Duration
	// RestartDelay is the first pause before reconnecting a downstream
	// server that died or could not start (default 500 ms); it doubles on
	// each failure up to MaxRestartDelay (default 30 s) and starts over
	// once a connection has lasted a minute.
	RestartDelay, MaxRestartDelay time.Duration
}

// Gateway is an MCP server in front of downstream MCP servers: it
// re-exposes their tools as <server>__<tool> (their schemas unchanged),
// their prompts as <server>__<prompt> and their resources as they are, and
// puts every tools/call, resources/read and prompts/get behind an agentotp
// permission through an agentotp.Guard: the policy decides, a person
// approves when it asks for one, the gateway spends the permission, then
// calls downstream with exactly the approved arguments, at most once.
type Gateway struct {
	log     *slog.Logger
	version string
	mcp     *server.MCPServer
	shell   *Server // the transports and error wording of Server
	guard   *guards // pending calls, per agent
	stderr  io.Writer
	opts    GatewayOptions
	down    []*downstream
	seq     atomic.Uint64 // request ids and progress tokens

	pubMu     sync.Mutex
	published [4]string                       // fingerprints of the lists last set on mcp
	templates atomic.Pointer[[]templateOwner] // the published templates, by server

	progress sync.Map // gateway progress token → progressRoute

	runMu   sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

var serverNameRE = regexp.MustCompile(`^[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*$`)

// ValidServerName reports whether name may name a downstream server: it
// must keep <server>__<tool> unambiguous and mcp.<server>.<tool> readable.
func ValidServerName(name string) bool {
	return len(name) <= 64 && serverNameRE.MatchString(name)
}

// NewGateway checks opts and returns the gateway, not yet connected to its
// downstream servers (see Start).
func NewGateway(opts GatewayOptions) (*Gateway, error) {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case opts.Wait == 0:
		opts.Wait = DefaultGatewayWait
	case opts.Wait < 0:
		opts.Wait = 0
	case opts.Wait > MaxWait:
		opts.Wait = MaxWait
	}
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	if opts.RestartDelay <= 0 {
		opts.RestartDelay = 500 * time.Millisecond
	}
	if opts.MaxRestartDelay < opts.RestartDelay {
		opts.MaxRestartDelay = max(30*time.Second, opts.RestartDelay)
	}
	if len(opts.Servers) == 0 {
		return nil, errors.New("gateway: no downstream servers")
	}
	g := &Gateway{
		log: opts.Logger, version: opts.Version, guard: newGuards(opts.Wait),
		stderr: opts.Stderr, opts: opts,
	}
	seen := map[string]bool{}
	for _, d := range opts.Servers {
		if err := checkDownstream(&d); err != nil {
			return nil, err
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("gateway: server %q is configured twice", d.Name)
		}
		seen[d.Name] = true
		g.down = append(g.down, &downstream{g: g, o: d, refresh: make(chan struct{}, 1)})
	}
	g.mcp = server.NewMCPServer("agentotp-gateway", opts.Version,
		server.WithToolCapabilities(true),
		server.WithResourceCapabilities(false, true),
		server.WithPromptCapabilities(true),
		server.WithRecovery(),
		server.WithLogger(slog.New(minLevel{opts.Logger.Handler(), slog.LevelWarn})),
		server.WithInstructions(gatewayInstructions),
	)
	g.shell = &Server{mcp: g.mcp, log: opts.Logger}
	return g, nil
}

const gatewayInstructions = `agentotp gateway: the tools of other MCP servers, named <server>__<tool>. ` +
	`Every call is checked by agentotp's policy first and may wait for a person to approve it. ` +
	`"approval pending (perm_…)" means a person has not decided yet: the tool did not run; call it again later with exactly the same arguments to pick up the decision. ` +
	`Denied means do not retry the same call.`

// checkDownstream validates d and fills in its transport.
func checkDownstream(d *Downstream) error {
	if !ValidServerName(d.Name) {
		return fmt.Errorf("gateway: server name %q: use letters, digits, '-' and single '_' between them (at most 64 bytes)", d.Name)
	}
	switch {
	case d.Command != "" && d.URL != "":
		return fmt.Errorf("gateway: server %s: set command or url, not both", d.Name)
	case d.Command == "" && d.URL == "":
		return fmt.Errorf("gateway: server %s: set command (stdio) or url (HTTP)", d.Name)
	case d.Command != "":
		if d.Transport == "" {
			d.Transport = TransportStdio
		}
		if d.Transport != TransportStdio {
			return fmt.Errorf("gateway: server %s: a command is served over stdio, not %q", d.Name, d.Transport)
		}
		if len(d.Headers) > 0 {
			return fmt.Errorf("gateway: server %s: headers need a url", d.Name)
		}
		for k := range d.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return fmt.Errorf("gateway: server %s: invalid environment variable name %q", d.Name, k)
			}
		}
	default:
		if d.Transport == "" {
			d.Transport = TransportStreamableHTTP
		}
		if d.Transport != TransportStreamableHTTP && d.Transport != TransportSSE {
			return fmt.Errorf("gateway: server %s: transport must be %s or %s for a url, not %q", d.Name, TransportStreamableHTTP, TransportSSE, d.Transport)
		}
		u, err := url.Parse(d.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("gateway: server %s: url must be http:// or https://, not %q", d.Name, d.URL)
		}
		if len(d.Args) > 0 || len(d.Env) > 0 || d.Dir != "" {
			return fmt.Errorf("gateway: server %s: args, env and cwd need a command", d.Name)
		}
	}
	return nil
}

// MCP returns the underlying mcp-go server, for tests and custom transports.
func (g *Gateway) MCP() *server.MCPServer { return g.mcp }

// Start connects to every downstream server and keeps each connected
// (restarting stdio children that die) until ctx ends or Close. It returns
// once every server has connected or failed once, or after StartTimeout:
// the tools of servers that are still starting appear when they are up.
func (g *Gateway) Start(ctx context.Context) error {
	g.runMu.Lock()
	if g.started || g.closed {
		g.runMu.Unlock()
		return errors.New("gateway: already started")
	}
	g.started = true
	ctx, g.cancel = context.WithCancel(ctx)
	firsts := make([]chan struct{}, len(g.down))
	for i, d := range g.down {
		firsts[i] = make(chan struct{})
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			d.supervise(ctx, firsts[i])
		}()
	}
	g.runMu.Unlock()

	timeout := time.NewTimer(g.opts.StartTimeout)
	defer timeout.Stop()
	for i, first := range firsts {
		select {
		case <-first:
		case <-timeout.C:
			g.log.Warn("gateway: downstream servers still starting; serving without them for now", "first_pending", g.down[i].o.Name)
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Close disconnects from the downstream servers and stops their children.
func (g *Gateway) Close() error {
	g.runMu.Lock()
	g.closed = true
	cancel := g.cancel
	g.runMu.Unlock()
	if cancel != nil {
		cancel()
	}
	g.wg.Wait()
	return nil
}

// ServeStdio serves one client on in/out as the agent perms until in ends
// or ctx is cancelled, as Server.ServeStdio does.
func (g *Gateway) ServeStdio(ctx context.Context, perms Permissions, identity string, in io.Reader, out io.Writer) error {
	return g.shell.ServeStdio(ctx, perms, identity, in, out)
}

// HTTP serves the gateway over streamable HTTP (and SSE), as Server.HTTP
// does: every request must carry its agent (SingleAgent).
func (g *Gateway) HTTP(opts HTTPOptions) http.Handler {
	return g.shell.HTTP(opts)
}

// publish sets the union of the downstream servers' lists on the MCP
// server, each list only when it changed (setting one notifies clients).
func (g *Gateway) publish() {
	g.pubMu.Lock()
	defer g.pubMu.Unlock()
	var (
		tools     []server.ServerTool
		resources []server.ServerResource
		resOwners []string // the server of each resource
		templates []server.ServerResourceTemplate
		owners    []templateOwner
		prompts   []server.ServerPrompt
		uris      = map[string]string{}
		tpls      = map[string]string{}
	)
	for _, d := range g.down {
		l := d.snapshot()
		tools = append(tools, l.tools...)
		prompts = append(prompts, l.prompts...)
		for _, r := range l.resources {
			if owner, dup := uris[r.Resource.URI]; dup {
				g.log.Warn("gateway: resource listed by two servers; the first keeps it", "uri", r.Resource.URI, "kept", owner, "server", d.o.Name)
				continue
			}
			uris[r.Resource.URI] = d.o.Name
			resources = append(resources, r)
			resOwners = append(resOwners, d.o.Name)
		}
		for _, t := range l.templates {
			raw := t.Template.URITemplate.Raw()
			if owner, dup := tpls[raw]; dup {
				g.log.Warn("gateway: resource template listed by two servers; the first keeps it", "template", raw, "kept", owner, "server", d.o.Name)
				continue
			}
			tpls[raw] = d.o.Name
			templates = append(templates, t)
			owners = append(owners, templateOwner{tpl: t.Template.URITemplate, d: d})
		}
	}
	g.templates.Store(&owners)
	changed := func(i int, v any) bool {
		b, err := json.Marshal(v)
		if err != nil {
			return true
		}
		if g.published[i] == string(b) {
			return false
		}
		g.published[i] = string(b)
		return true
	}
	if changed(0, defs(tools, func(t server.ServerTool) any { return t.Tool })) {
		g.mcp.SetTools(tools...)
	}
	// A resource's or template's server is part of its fingerprint: two
	// servers may list the same one, and which of them answers it changes
	// when the first comes or goes, though the list does not.
	if changed(1, []any{defs(resources, func(r server.ServerResource) any { return r.Resource }), resOwners}) {
		g.mcp.SetResources(resources...)
	}
	if changed(2, []any{defs(templates, func(t server.ServerResourceTemplate) any { return t.Template }),
		defs(owners, func(o templateOwner) any { return o.d.o.Name })}) {
		g.mcp.SetResourceTemplates(templates...)
	}
	if changed(3, defs(prompts, func(p server.ServerPrompt) any { return p.Prompt })) {
		g.mcp.SetPrompts(prompts...)
	}
}

// templateOwner is a published resource template and its server.
type templateOwner struct {
	tpl *mcp.URITemplate
	d   *downstream
}

// templateRivals names the servers other than d with a published template
// that uri matches. The MCP server answers a read that no listed resource
// names with the first matching template it meets, in no fixed order, so
// when two servers' templates both match, which one is asked (and learns
// the URI, and answers it) would be chance.
func (g *Gateway) templateRivals(d *downstream, uri string) []string {
	owners := g.templates.Load()
	if owners == nil {
		return nil
	}
	var names []string
	for _, o := range *owners {
		if o.d != d && !slices.Contains(names, o.d.o.Name) && o.tpl.Regexp().MatchString(uri) {
			names = append(names, o.d.o.Name)
		}
	}
	return names
}

func defs[T any](items []T, f func(T) any) []any {
	out := make([]any, len(items))
	for i, it := range items {
		out[i] = f(it)
	}
	return out
}

// progressRoute is where a downstream progress notification goes: the
// upstream call's context (its session) and its own token; only the
// server the call went to may report on it.
type progressRoute struct {
	ctx   context.Context
	token mcp.ProgressToken
	from  *downstream
}

// downstreamMeta returns the _meta to send downstream d for an upstream
// call: the same fields, with the client's progress token replaced by one
// of the gateway's, routed back to the caller until done is called.
// (Tokens from different clients may be equal; the gateway's are not.)
func (g *Gateway) downstreamMeta(ctx context.Context, d *downstream, meta *mcp.Meta) (out *mcp.Meta, done func()) {
	if meta == nil {
		return nil, func() {}
	}
	out = &mcp.Meta{AdditionalFields: meta.AdditionalFields}
	if meta.ProgressToken == nil {
		return out, func() {}
	}
	tok := fmt.Sprintf("agentotp-gw-progress-%d", g.seq.Add(1))
	g.progress.Store(tok, progressRoute{ctx: ctx, token: meta.ProgressToken, from: d})
	out.ProgressToken = tok
	return out, func() { g.progress.Delete(tok) }
}

// relayProgress forwards a notifications/progress from downstream d to
// the call it belongs to, with that caller's token. A token of a call to
// another server is dropped: the gateway's tokens are easy to guess, and
// one server must not speak in another's calls.
func (g *Gateway) relayProgress(d *downstream, params map[string]any) {
	tok, ok := params["progressToken"].(string)
	if !ok {
		return
	}
	v, ok := g.progress.Load(tok)
	if !ok {
		return
	}
	route := v.(progressRoute)
	if route.from != d {
		g.log.Warn("gateway: progress for another server's call dropped", "server", d.o.Name, "call_server", route.from.o.Name)
		return
	}
	out := make(map[string]any, len(params))
	for k, v := range params {
		out[k] = v
	}
	out["progressToken"] = route.token
	if err := g.mcp.SendNotificationToClient(route.ctx, string(mcp.MethodNotificationProgress), out); err != nil {
		g.log.Debug("gateway: progress not relayed", "err", err)
	}
}
