package mcpserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/agentotp/agentotp"
)

// gatewayCall is one gated downstream call, as the gateway asks for it.
type gatewayCall struct {
	d    *downstream
	kind string // "tool", "resource", "prompt": part of the Guard key
	name string // what messages call it: fs__write_file, mem://x, fs__greet
	req  agentotp.PermissionRequest
	// args are the canonical JSON of what runs downstream; they are
	// hashed into the Guard key and sent as they are.
	args []byte
}

// unavailable is the refusal while the downstream server is down.
func (d *downstream) unavailable() string {
	return fmt.Sprintf("downstream %s is unavailable (restarting); nothing was asked or run. Try again in a little while.", d.o.Name)
}

// gate asks for permission for call and spends it. It returns the live
// connection to run the call on, or the words for the model (the call must
// not run). Nothing is spent unless a connection is returned.
func (g *Gateway) gate(ctx context.Context, call gatewayCall) (*dsConn, *agentotp.Permission, string) {
	a, ok := agentFrom(ctx)
	if !ok {
		return nil, nil, "no agent is bound to this session"
	}
	if call.d.current() == nil {
		return nil, nil, call.d.unavailable()
	}
	key := guardKey(a.identity, call)
	var details map[string]any
	if err := json.Unmarshal(call.args, &details); err != nil {
		return nil, nil, "internal error: the arguments could not be read back"
	}
	// Asked and, when allowed at once, spent in the same step (one durable
	// commit in process): the call runs right after, at most once.
	v, ok, msg, err := g.guard.of(a.identity).AskAndSpend(ctx, a.perms, key, call.name, call.req, details)
	if err != nil {
		return nil, nil, "agentotp could not decide, so " + call.name + " did not run: " + resultText(g.shell.errorResult(ctx, call.name, err))
	}
	perm := v.Permission
	if !v.Allowed {
		if perm.Status == agentotp.StatusPending {
			return nil, perm, fmt.Sprintf("approval pending (%s): ask again with the same arguments. %s did not run: a person must approve it at %s. "+
				"Calling it again with exactly the same arguments picks up the decision; different arguments ask anew.",
				perm.ID, call.name, a.perms.ApprovalURL(perm.ID))
		}
		return nil, perm, v.Message
	}
	if !ok {
		return nil, perm, msg
	}
	conn := call.d.current()
	if conn == nil {
		return nil, perm, call.d.unavailable() + fmt.Sprintf(" (Permission %s was used; the call did not run.)", perm.ID)
	}
	return conn, perm, ""
}

// guardKey identifies one call: agent, kind, server, name, canonical
// arguments and the request's context (the tool's annotations and the
// calling client). A call is picked up again only if its request would be
// the same one: the server refuses an idempotency key reused for anything
// else, so a tool whose hints changed, or the same call from another
// client, is asked anew.
func guardKey(identity string, call gatewayCall) string {
	h := sha256.New()
	for _, s := range []string{identity, call.kind, call.d.o.Name, call.name} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	h.Write(call.args)
	h.Write([]byte{0})
	c, _ := json.Marshal(call.req.Context) // object keys sorted
	h.Write(c)
	return hex.EncodeToString(h.Sum(nil))
}

// clientContext is the calling client as it named itself at initialize
// (agent-asserted).
func clientContext(ctx context.Context) map[string]any {
	ch := channelOf(ctx)
	m := map[string]any{}
	if ch.Client != "" {
		m["name"] = ch.Client
	}
	if ch.ClientVersion != "" {
		m["version"] = ch.ClientVersion
	}
	return m
}

// gatewayContext is the audit channel of gateway calls.
func gatewayContext(ctx context.Context) context.Context {
	ch := channelOf(ctx)
	ch.Via = "mcp-gateway"
	return agentotp.WithChannel(ctx, ch)
}

// toolHandler gates one downstream tool: action mcp.<server>.<tool>,
// scope = the arguments, context = {annotations, client}.
func (g *Gateway) toolHandler(d *downstream, t gwTool) server.ToolHandlerFunc {
	return func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		if _, ok := agentFrom(ctx); !ok {
			return nil, errors.New("no agent is bound to this session")
		}
		ctx = gatewayContext(ctx)
		args := req.GetArguments()
		if args == nil {
			if req.Params.Arguments != nil && string(req.Params.RawArguments) != "null" {
				return mcp.NewToolResultError(t.exposed + ": arguments must be a JSON object"), nil
			}
			args = map[string]any{}
		}
		canon, err := json.Marshal(args) // object keys sorted
		if err != nil {
			return mcp.NewToolResultError(t.exposed + ": arguments are not valid JSON values"), nil
		}
		call := gatewayCall{d: d, kind: "tool", name: t.exposed, args: canon, req: agentotp.PermissionRequest{
			Action:  "mcp." + d.o.Name + "." + t.name,
			Scope:   args,
			Context: map[string]any{"annotations": t.annotations, "client": clientContext(ctx)},
			Tool:    &agentotp.ToolCall{Server: d.o.Name, Name: t.name, Annotations: t.annotations, Args: args},
		}}
		conn, perm, refusal := g.gate(ctx, call)
		if conn == nil {
			return mcp.NewToolResultError(refusal), nil
		}

		start := time.Now()
		meta, done := g.downstreamMeta(ctx, d, req.Params.Meta)
		defer done()
		var dreq mcp.CallToolRequest
		dreq.Params.Name = t.name
		dreq.Params.Arguments = json.RawMessage(canon)
		dreq.Params.Meta = meta
		res, err := conn.c.CallTool(ctx, dreq)
		if err != nil {
			g.outcome(ctx, d, call.name, perm, start, "failed", 0, err)
			return mcp.NewToolResultError(g.downstreamFailure(ctx, d, conn, call.name, perm, err)), nil
		}
		outcome := "ok"
		if res.IsError {
			outcome = "tool_error"
		}
		g.outcome(ctx, d, call.name, perm, start, outcome, resultSize(res), nil)
		return res, nil
	}
}

// downstreamFailure words a call that was approved and spent but failed on
// the way to the server (and takes a broken connection out of service).
func (g *Gateway) downstreamFailure(ctx context.Context, d *downstream, conn *dsConn, name string, perm *agentotp.Permission, err error) string {
	if ctx.Err() != nil {
		return fmt.Sprintf("%s was cancelled after permission %s was used; it may or may not have run downstream.", name, perm.ID)
	}
	if connectionError(err) {
		d.markDown(conn)
		return fmt.Sprintf("downstream %s failed during the call (%v); it is restarting. Permission %s was used; %s may or may not have run. Call it again to ask anew.",
			d.o.Name, errors.Unwrap(err), perm.ID, name)
	}
	return fmt.Sprintf("downstream %s answered with an error: %v (permission %s was used).", d.o.Name, err, perm.ID)
}

// outcome logs how a gated call ended: never its arguments or content.
func (g *Gateway) outcome(ctx context.Context, d *downstream, name string, perm *agentotp.Permission, start time.Time, outcome string, size int, err error) {
	took := time.Since(start)
	attrs := []any{"server", d.o.Name, "call", name, "permission", perm.ID, "outcome", outcome,
		"duration", took.Round(time.Microsecond), "result_bytes", size}
	// The audit records how the call went, beside its use: shape only,
	// never the content.
	if a, ok := agentFrom(ctx); ok {
		o := agentotp.Outcome{Success: outcome == "ok", Duration: took, ResultBytes: size}
		if outcome != "ok" {
			o.Error = outcome
		}
		// Off the call's path: the answer does not wait for this write.
		go func(ctx context.Context) {
			if rerr := a.perms.RecordOutcome(ctx, perm.ID, o); rerr != nil {
				g.log.Warn("gateway: outcome not audited", "permission", perm.ID, "err", rerr)
			}
		}(context.WithoutCancel(ctx))
	}
	if err != nil {
		g.log.Warn("gateway call", append(attrs, "err", err)...)
		return
	}
	g.log.Info("gateway call", attrs...)
}

// resultSize is the size of a downstream answer as JSON, for the audit.
func resultSize(v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return 0
	}
	return len(b)
}

// resourceHandler gates resources/read on d: action
// mcp.<server>.resources.read, scope {uri}.
func (g *Gateway) resourceHandler(d *downstream) server.ResourceHandlerFunc {
	return func(ctx context.Context, req mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
		if _, ok := agentFrom(ctx); !ok {
			return nil, errors.New("no agent is bound to this session")
		}
		ctx = gatewayContext(ctx)
		uri := req.Params.URI
		scope := map[string]any{"uri": uri}
		canon, _ := json.Marshal(scope)
		call := gatewayCall{d: d, kind: "resource", name: uri, args: canon, req: agentotp.PermissionRequest{
			Action:  "mcp." + d.o.Name + ".resources.read",
			Scope:   scope,
			Context: map[string]any{"client": clientContext(ctx)},
		}}
		conn, perm, refusal := g.gate(ctx, call)
		if conn == nil {
			return nil, errors.New(refusal)
		}
		start := time.Now()
		var dreq mcp.ReadResourceRequest
		dreq.Params.URI = uri
		res, err := conn.c.ReadResource(ctx, dreq)
		if err != nil {
			g.outcome(ctx, d, "resources/read", perm, start, "failed", 0, err)
			return nil, errors.New(g.downstreamFailure(ctx, d, conn, uri, perm, err))
		}
		g.outcome(ctx, d, "resources/read", perm, start, "ok", resultSize(res), nil)
		return res.Contents, nil
	}
}

// templateHandler reads, through resourceHandler, a URI that matched one
// of d's resource templates, unless it matches another server's template
// too: then nothing is asked or read, whatever the order the templates
// were tried in.
func (g *Gateway) templateHandler(d *downstream) server.ResourceTemplateHandlerFunc {
	read := g.resourceHandler(d)
	return func(ctx context.Context, req mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
		if rivals := g.templateRivals(d, req.Params.URI); len(rivals) > 0 {
			return nil, fmt.Errorf("resource %s matches resource templates of more than one server (%s, %s); nothing was asked or read. Ask the gateway's operator to give the servers' templates distinct URI schemes",
				req.Params.URI, d.o.Name, strings.Join(rivals, ", "))
		}
		return read(ctx, req)
	}
}

// promptHandler gates prompts/get of d's prompt name: action
// mcp.<server>.prompts.get, scope {name, arguments}.
func (g *Gateway) promptHandler(d *downstream, name string) server.PromptHandlerFunc {
	return func(ctx context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		if _, ok := agentFrom(ctx); !ok {
			return nil, errors.New("no agent is bound to this session")
		}
		ctx = gatewayContext(ctx)
		args := map[string]any{}
		for k, v := range req.Params.Arguments {
			args[k] = v
		}
		scope := map[string]any{"name": name, "arguments": args}
		canon, _ := json.Marshal(scope)
		call := gatewayCall{d: d, kind: "prompt", name: d.o.Name + "__" + name, args: canon, req: agentotp.PermissionRequest{
			Action:  "mcp." + d.o.Name + ".prompts.get",
			Scope:   scope,
			Context: map[string]any{"client": clientContext(ctx)},
		}}
		conn, perm, refusal := g.gate(ctx, call)
		if conn == nil {
			return nil, errors.New(refusal)
		}
		start := time.Now()
		meta, done := g.downstreamMeta(ctx, d, req.Params.Meta)
		defer done()
		var dreq mcp.GetPromptRequest
		dreq.Params.Name = name
		dreq.Params.Arguments = req.Params.Arguments
		dreq.Params.Meta = meta
		res, err := conn.c.GetPrompt(ctx, dreq)
		if err != nil {
			g.outcome(ctx, d, "prompts/get", perm, start, "failed", 0, err)
			return nil, errors.New(g.downstreamFailure(ctx, d, conn, call.name, perm, err))
		}
		g.outcome(ctx, d, "prompts/get", perm, start, "ok", resultSize(res), nil)
		return res, nil
	}
}
