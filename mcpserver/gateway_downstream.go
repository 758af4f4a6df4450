package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

const (
	// connectTimeout bounds starting, initializing and listing one
	// downstream server.
	connectTimeout = time.Minute
	// stableAfter is how long a connection must last for the restart
	// delay to start over from RestartDelay.
	stableAfter = time.Minute
	// stopGrace is how long a stdio child gets to exit after its stdin
	// closes, and again after SIGTERM, before it is killed.
	stopGrace = 2 * time.Second
	// maxListPages bounds the pages of one paginated list.
	maxListPages = 1000
)

// downstream is one server behind the gateway: its configuration, its
// live connection (nil while down) and what it listed last.
type downstream struct {
	g       *Gateway
	o       Downstream
	refresh chan struct{} // a list changed: list again

	mu    sync.Mutex
	conn  *dsConn
	lists dsLists
}

// dsLists is what one downstream server offers, ready for the MCP server.
// A server that is down keeps its last lists: its tools answer that it is
// unavailable rather than vanish.
type dsLists struct {
	tools     []server.ServerTool
	resources []server.ServerResource
	templates []server.ServerResourceTemplate
	prompts   []server.ServerPrompt
}

func (d *downstream) snapshot() dsLists {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lists
}

// current returns the live connection, or nil while the server is down.
func (d *downstream) current() *dsConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn
}

// markDown takes conn out of service (once a call saw it fail); the
// supervisor notices and reconnects.
func (d *downstream) markDown(conn *dsConn) {
	conn.fail()
	d.mu.Lock()
	if d.conn == conn {
		d.conn = nil
	}
	d.mu.Unlock()
}

// dsConn is one connection to a downstream server.
type dsConn struct {
	c      *client.Client
	caps   mcp.ServerCapabilities
	proc   *process // stdio only
	cancel context.CancelFunc
	dead   chan struct{}
	once   sync.Once
}

func (c *dsConn) fail() { c.once.Do(func() { close(c.dead) }) }

// close ends the connection and, for stdio, stops the child.
func (c *dsConn) close() {
	c.fail()
	if c.c != nil {
		_ = c.c.Close()
	}
	if c.proc != nil {
		c.proc.stop()
	}
	c.cancel()
}

// supervise keeps d connected until ctx ends: it connects, serves list
// refreshes until the connection dies, and reconnects after a delay that
// doubles on each failure. first is closed after the first attempt.
func (d *downstream) supervise(ctx context.Context, first chan struct{}) {
	log := d.g.log.With("server", d.o.Name)
	delay := d.g.opts.RestartDelay
	for {
		conn, err := d.connect(ctx)
		if first != nil {
			close(first)
			first = nil
		}
		if ctx.Err() != nil {
			if conn != nil {
				d.markDown(conn)
				conn.close()
			}
			return
		}
		if err != nil {
			log.Warn("gateway: downstream server failed to start", "err", err, "retry_in", delay)
		} else {
			up := time.Now()
			log.Info("gateway: downstream server ready", "tools", len(d.snapshot().tools))
			d.serve(ctx, conn)
			d.markDown(conn)
			conn.close()
			if ctx.Err() != nil {
				return
			}
			if time.Since(up) > stableAfter {
				delay = d.g.opts.RestartDelay
			}
			log.Warn("gateway: downstream server stopped; restarting", "retry_in", delay)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, d.g.opts.MaxRestartDelay)
	}
}

// serve lists again whenever the server says a list changed, until the
// connection dies or ctx ends.
func (d *downstream) serve(ctx context.Context, conn *dsConn) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-conn.dead:
			return
		case <-d.refresh:
			lctx, cancel := context.WithTimeout(ctx, connectTimeout)
			lists, err := d.list(lctx, conn)
			cancel()
			switch {
			case err != nil && connectionError(err) && ctx.Err() == nil:
				d.g.log.Warn("gateway: downstream server failed while listing", "server", d.o.Name, "err", err)
				return
			case err != nil:
				d.g.log.Warn("gateway: listing again failed; keeping the previous lists", "server", d.o.Name, "err", err)
			default:
				d.mu.Lock()
				d.lists = lists
				d.mu.Unlock()
				d.g.publish()
			}
		}
	}
}

// connect starts (stdio) or reaches (HTTP) the server, initializes it,
// lists what it offers and publishes that.
func (d *downstream) connect(ctx context.Context) (*dsConn, error) {
	cctx, cancel := context.WithCancel(ctx)
	conn := &dsConn{cancel: cancel, dead: make(chan struct{})}
	quiet := slog.New(minLevel{d.g.log.Handler(), slog.LevelWarn}).With("server", d.o.Name)
	var tr transport.Interface
	switch d.o.Transport {
	case TransportStdio:
		p, err := startProcess(d.o, d.g.stderr)
		if err != nil {
			cancel()
			return nil, err
		}
		conn.proc = p
		go func() {
			select {
			case <-p.exited:
				conn.fail()
			case <-cctx.Done():
			}
		}()
		tr = transport.NewIO(p.stdout, p.stdin, io.NopCloser(strings.NewReader("")))
	case TransportStreamableHTTP:
		t, err := transport.NewStreamableHTTP(d.o.URL, transport.WithHTTPHeaders(d.o.Headers),
			//lint:ignore SA1019 the connection is pinned to 2025-11-25, where the GET stream carries list_changed
			transport.WithContinuousListening(), transport.WithHTTPLogger(quiet))
		if err != nil {
			cancel()
			return nil, err
		}
		tr = t
	case TransportSSE:
		t, err := transport.NewSSE(d.o.URL, transport.WithHeaders(d.o.Headers))
		if err != nil {
			cancel()
			return nil, err
		}
		tr = t
	default:
		cancel()
		return nil, fmt.Errorf("unknown transport %q", d.o.Transport)
	}
	conn.c = client.NewClient(tr, client.WithProtocolVersion(mcp.ProtocolVersion20251125))
	conn.c.OnNotification(func(n mcp.JSONRPCNotification) { d.onNotification(n) })
	conn.c.OnConnectionLost(func(error) { conn.fail() })
	// Start's context is the connection's lifetime: a stdio child or an
	// SSE stream lives as long as it does.
	if err := conn.c.Start(cctx); err != nil {
		conn.close()
		return nil, fmt.Errorf("start: %w", err)
	}
	ictx, icancel := context.WithTimeout(cctx, connectTimeout)
	defer icancel()
	var init mcp.InitializeRequest
	init.Params.ProtocolVersion = mcp.ProtocolVersion20251125
	init.Params.ClientInfo = mcp.Implementation{Name: "agentotp-gateway", Version: d.g.version}
	res, err := conn.c.Initialize(ictx, init)
	if err != nil {
		conn.close()
		return nil, fmt.Errorf("initialize: %w", err)
	}
	conn.caps = res.Capabilities
	lists, err := d.list(ictx, conn)
	if err != nil {
		conn.close()
		return nil, err
	}
	d.mu.Lock()
	d.conn, d.lists = conn, lists
	d.mu.Unlock()
	d.g.publish()
	return conn, nil
}

// onNotification runs on the transport's reading goroutine: it must not
// wait for the server.
func (d *downstream) onNotification(n mcp.JSONRPCNotification) {
	switch n.Method {
	case string(mcp.MethodNotificationToolsListChanged), mcp.MethodNotificationResourcesListChanged,
		mcp.MethodNotificationPromptsListChanged:
		select {
		case d.refresh <- struct{}{}:
		default: // a refresh is already due
		}
	case string(mcp.MethodNotificationProgress):
		d.g.relayProgress(d, n.Params.AdditionalFields)
	}
}

// connectionError reports whether err means the connection itself failed
// (rather than the server answering with an error).
func connectionError(err error) bool {
	var te *transport.Error
	return errors.Is(err, transport.ErrTransportClosed) || errors.As(err, &te)
}

// list reads the server's tools (raw, so their schemas stay as written),
// resources, resource templates and prompts.
func (d *downstream) list(ctx context.Context, conn *dsConn) (dsLists, error) {
	var l dsLists
	raws, err := d.listRaw(ctx, conn, "tools/list", "tools")
	if err != nil {
		return l, fmt.Errorf("tools/list: %w", err)
	}
	seen := map[string]bool{}
	for _, raw := range raws {
		t, info, err := d.exposeTool(raw)
		if err != nil {
			d.g.log.Warn("gateway: tool not exposed", "server", d.o.Name, "err", err)
			continue
		}
		if seen[t.Name] {
			d.g.log.Warn("gateway: tool listed twice; the first is exposed", "server", d.o.Name, "tool", info.name)
			continue
		}
		seen[t.Name] = true
		l.tools = append(l.tools, server.ServerTool{Tool: t, Handler: d.g.toolHandler(d, info)})
	}
	if conn.caps.Resources != nil {
		res, err := conn.c.ListResources(ctx, mcp.ListResourcesRequest{})
		if err != nil {
			if connectionError(err) {
				return l, fmt.Errorf("resources/list: %w", err)
			}
			d.g.log.Warn("gateway: resources/list failed", "server", d.o.Name, "err", err)
		} else {
			for _, r := range res.Resources {
				l.resources = append(l.resources, server.ServerResource{Resource: r, Handler: d.g.resourceHandler(d)})
			}
		}
		tpl, err := conn.c.ListResourceTemplates(ctx, mcp.ListResourceTemplatesRequest{})
		if err != nil {
			if connectionError(err) {
				return l, fmt.Errorf("resources/templates/list: %w", err)
			}
			d.g.log.Debug("gateway: resources/templates/list failed", "server", d.o.Name, "err", err)
		} else {
			for _, t := range tpl.ResourceTemplates {
				if t.URITemplate == nil || t.URITemplate.Template == nil {
					continue
				}
				l.templates = append(l.templates, server.ServerResourceTemplate{Template: t, Handler: d.g.templateHandler(d)})
			}
		}
	}
	if conn.caps.Prompts != nil {
		res, err := conn.c.ListPrompts(ctx, mcp.ListPromptsRequest{})
		if err != nil {
			if connectionError(err) {
				return l, fmt.Errorf("prompts/list: %w", err)
			}
			d.g.log.Warn("gateway: prompts/list failed", "server", d.o.Name, "err", err)
		} else {
			for _, p := range res.Prompts {
				if p.Name == "" {
					continue
				}
				orig := p.Name
				p.Name = d.o.Name + "__" + orig
				l.prompts = append(l.prompts, server.ServerPrompt{Prompt: p, Handler: d.g.promptHandler(d, orig)})
			}
		}
	}
	return l, nil
}

// listRaw sends method and collects field of every page, following
// nextCursor, without decoding the items.
func (d *downstream) listRaw(ctx context.Context, conn *dsConn, method, field string) ([]json.RawMessage, error) {
	var out []json.RawMessage
	cursor := ""
	seen := map[string]bool{}
	for range maxListPages {
		req := transport.JSONRPCRequest{
			JSONRPC: mcp.JSONRPC_VERSION,
			ID:      mcp.NewRequestId(fmt.Sprintf("agentotp-gw-list-%d", d.g.seq.Add(1))),
			Method:  method,
		}
		if cursor != "" {
			req.Params = map[string]any{"cursor": cursor}
		}
		resp, err := conn.c.GetTransport().SendRequest(ctx, req)
		if err != nil {
			return nil, transport.NewError(err)
		}
		if resp.Error != nil {
			return nil, resp.Error.AsError()
		}
		var page map[string]json.RawMessage
		if err := json.Unmarshal(resp.Result, &page); err != nil {
			return nil, fmt.Errorf("undecodable result: %w", err)
		}
		var items []json.RawMessage
		if raw, ok := page[field]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &items); err != nil {
				return nil, fmt.Errorf("undecodable %s: %w", field, err)
			}
		}
		out = append(out, items...)
		var next string
		if raw, ok := page["nextCursor"]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &next); err != nil {
				return nil, fmt.Errorf("undecodable nextCursor: %w", err)
			}
		}
		if next == "" {
			return out, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("nextCursor %q repeats", next)
		}
		seen[next] = true
		cursor = next
	}
	return nil, fmt.Errorf("more than %d pages", maxListPages)
}

// toolNameRE is the MCP tool-name alphabet (SEP-986).
var toolNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// reservedTools would make a tool's action read like the gateway's
// resources/prompts actions (mcp.<server>.resources.read).
var reservedTools = map[string]bool{"resources.read": true, "prompts.get": true}

// gwTool is what a tool's handler knows of it.
type gwTool struct {
	name        string         // on the downstream server
	exposed     string         // <server>__<name>
	annotations map[string]any // as the server declared them
}

// exposeTool turns one raw tools/list entry into the gateway's tool: the
// name prefixed, input and output schemas byte for byte, title,
// description, annotations, icons and _meta as the server wrote them.
func (d *downstream) exposeTool(raw json.RawMessage) (mcp.Tool, gwTool, error) {
	var in struct {
		Name         string          `json:"name"`
		Title        string          `json:"title"`
		Description  string          `json:"description"`
		InputSchema  json.RawMessage `json:"inputSchema"`
		OutputSchema json.RawMessage `json:"outputSchema"`
		Annotations  json.RawMessage `json:"annotations"`
		Icons        []mcp.Icon      `json:"icons"`
		Meta         *mcp.Meta       `json:"_meta"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return mcp.Tool{}, gwTool{}, fmt.Errorf("undecodable tool: %w", err)
	}
	info := gwTool{name: in.Name, exposed: d.o.Name + "__" + in.Name, annotations: map[string]any{}}
	switch {
	case in.Name == "":
		return mcp.Tool{}, info, errors.New("a tool without a name")
	case !toolNameRE.MatchString(info.exposed):
		return mcp.Tool{}, info, fmt.Errorf("tool %q: %s is not a valid MCP tool name (1-128 of A-Z a-z 0-9 _ . -)", in.Name, info.exposed)
	case reservedTools[in.Name]:
		return mcp.Tool{}, info, fmt.Errorf("tool %q: the name is reserved for the gateway's resource and prompt actions", in.Name)
	case !isJSONObject(in.InputSchema):
		return mcp.Tool{}, info, fmt.Errorf("tool %q: inputSchema is not a JSON object", in.Name)
	}
	t := mcp.NewToolWithRawSchema(info.exposed, in.Description, in.InputSchema)
	t.Title, t.Icons, t.Meta = in.Title, in.Icons, in.Meta
	if isJSONObject(in.OutputSchema) {
		t.RawOutputSchema = in.OutputSchema
	}
	if len(in.Annotations) > 0 && string(in.Annotations) != "null" {
		if err := json.Unmarshal(in.Annotations, &info.annotations); err != nil || info.annotations == nil {
			return mcp.Tool{}, info, fmt.Errorf("tool %q: annotations are not a JSON object", in.Name)
		}
		if err := json.Unmarshal(in.Annotations, &t.Annotations); err != nil {
			return mcp.Tool{}, info, fmt.Errorf("tool %q: annotations: %w", in.Name, err)
		}
	}
	if err := mcp.ValidateParamHeaderAnnotations(&t); err != nil {
		return mcp.Tool{}, info, fmt.Errorf("tool %q: %w", in.Name, err)
	}
	return t, info, nil
}

func isJSONObject(b json.RawMessage) bool {
	s := strings.TrimLeft(string(b), " \t\r\n")
	return strings.HasPrefix(s, "{") && json.Valid(b)
}

// process is a stdio child: the gateway owns its pipes and waits for it.
type process struct {
	cmd    *exec.Cmd
	stdin  *os.File // our end
	stdout *os.File // our end
	exited chan struct{}
}

// childEnv is the environment of a stdio child: PATH and HOME from the
// gateway's, then the configured variables (which win). Nothing else of
// the gateway's environment (its API key, bot tokens) is passed on.
func childEnv(cfg map[string]string) []string {
	m := map[string]string{}
	for _, k := range []string{"PATH", "HOME"} {
		if v, ok := os.LookupEnv(k); ok {
			m[k] = v
		}
	}
	for k, v := range cfg {
		m[k] = v
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// lookPath resolves a bare command name in the PATH configured for the
// child, when there is one (the child's PATH is where its author expects
// its tools); otherwise exec looks in the gateway's PATH.
func lookPath(command, path string) string {
	if path == "" || strings.ContainsRune(command, filepath.Separator) || strings.ContainsRune(command, '/') {
		return command
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, command)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return command
}

// startProcess starts o.Command with its own pipes (not exec's: the
// gateway reads stdout until the child and everything it spawned close
// it, while Wait only tells that the child exited).
func startProcess(o Downstream, stderr io.Writer) (*process, error) {
	cmd := exec.Command(lookPath(o.Command, o.Env["PATH"]), o.Args...)
	cmd.Dir = o.Dir
	cmd.Env = childEnv(o.Env)
	cmd.Stderr = stderr
	cmd.WaitDelay = stopGrace
	setProcessGroup(cmd)
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	if err := cmd.Start(); err != nil {
		for _, f := range []*os.File{inR, inW, outR, outW} {
			f.Close()
		}
		return nil, fmt.Errorf("start %s: %w", o.Command, err)
	}
	inR.Close()
	outW.Close()
	p := &process{cmd: cmd, stdin: inW, stdout: outR, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// stop asks the child to end (stdin closed), then terminates and kills
// its process group if it lingers, and closes the gateway's pipe ends.
func (p *process) stop() {
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		terminate(p.cmd.Process)
		select {
		case <-p.exited:
		case <-time.After(stopGrace):
			kill(p.cmd.Process)
			<-p.exited
		}
	}
	// Grandchildren may still hold stdout; closing our end ends the read.
	kill(p.cmd.Process)
	p.stdout.Close()
}
