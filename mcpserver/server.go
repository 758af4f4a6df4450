// Package mcpserver serves agentotp's permission tools over the Model
// Context Protocol (github.com/mark3labs/mcp-go): request_permission,
// get_permission, verify_permission, use_permission, revoke_permission and
// approval_prompt (Claude Code's --permission-prompt-tool contract), over
// stdio, streamable HTTP and the legacy SSE transport.
//
// Every call acts as one agent. Which agent is decided by the transport:
// the key given to the process for stdio, the bearer key of each HTTP
// request otherwise. Approval never happens inside MCP, where the agent's
// own client could answer for the person: a person decides out of band
// (Telegram, agentotp approve, or POST /decide), and the tools report pending until
// then.
package mcpserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/agentotp/agentotp"
)

// Permissions is one agent's view of agentotp: what the tools need.
// *agentotp.AgentSession (in process) and *otpclient.Client (over HTTP)
// implement it.
type Permissions interface {
	// Authorize and Spend: asking and spending, as a Guard does.
	agentotp.GuardAuthorizer
	// Await reads a permission, waiting up to wait while it is pending.
	Await(ctx context.Context, id agentotp.PermissionID, wait time.Duration) (*agentotp.Permission, agentotp.Secret, error)
	VerifyToken(ctx context.Context, id agentotp.PermissionID, token agentotp.Secret) (agentotp.VerifyResult, error)
	// UseToken spends one use; a refusal is a result with Reason set.
	UseToken(ctx context.Context, id agentotp.PermissionID, token agentotp.Secret, details map[string]any) (agentotp.UseResult, error)
	RevokePermission(ctx context.Context, id agentotp.PermissionID, reason string) (*agentotp.Permission, error)
	ApprovalURL(id agentotp.PermissionID) string
	// RecordOutcome audits how the action under a spent permission went.
	RecordOutcome(ctx context.Context, id agentotp.PermissionID, o agentotp.Outcome) error
}

var (
	_ Permissions = (*agentotp.AgentSession)(nil)
)

// MaxWait bounds how long one tool call waits for a person, under the
// 60 s that common MCP clients allow a call.
const MaxWait = 55 * time.Second

// Options configures a Server.
type Options struct {
	// Version is reported to clients in serverInfo.
	Version string
	Logger  *slog.Logger
	// PromptWait is how long approval_prompt waits for a person before
	// answering deny-for-now (default and maximum MaxWait).
	PromptWait time.Duration
}

// Server is agentotp's MCP server: the tools, ready for any transport.
type Server struct {
	mcp        *server.MCPServer
	log        *slog.Logger
	promptWait time.Duration
	prompts    *guards // approval_prompt's calls
}

// New returns the server with its tools registered.
func New(opts Options) *Server {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PromptWait <= 0 || opts.PromptWait > MaxWait {
		opts.PromptWait = MaxWait
	}
	s := &Server{log: opts.Logger, promptWait: opts.PromptWait, prompts: newGuards(opts.PromptWait)}
	s.mcp = server.NewMCPServer("agentotp", opts.Version,
		server.WithToolCapabilities(false),
		server.WithLogging(),
		server.WithRecovery(),
		// The library logs every request at info; keep its warnings only.
		server.WithLogger(slog.New(minLevel{opts.Logger.Handler(), slog.LevelWarn})),
		server.WithInstructions(instructions),
	)
	for _, t := range s.tools() {
		s.mcp.AddTool(t.Tool, s.withAgent(t.Handler))
	}
	return s
}

const instructions = `agentotp gives one-time permissions for sensitive actions. Before such an action, call request_permission; ` +
	`if it is approved you get an id and a token: call use_permission with both right before you act, once per action. ` +
	`Pending means a person must decide: tell the user the approval link and call get_permission to wait. ` +
	`Denied or expired means do not act.`

// MCP returns the underlying mcp-go server, for tests and custom transports.
func (s *Server) MCP() *server.MCPServer { return s.mcp }

type agentKey struct{}

type boundAgent struct {
	perms Permissions
	// identity names the agent for session binding (agent id, or a hash
	// of its key for remote sessions).
	identity string
}

// WithAgent returns ctx carrying the agent that calls made under it act as.
// identity must be stable for that agent and differ between agents.
func WithAgent(ctx context.Context, perms Permissions, identity string) context.Context {
	return context.WithValue(ctx, agentKey{}, boundAgent{perms: perms, identity: identity})
}

func agentFrom(ctx context.Context) (boundAgent, bool) {
	a, ok := ctx.Value(agentKey{}).(boundAgent)
	return a, ok && a.perms != nil
}

type agentHandler func(ctx context.Context, a Permissions, req mcp.CallToolRequest) *mcp.CallToolResult

// withAgent resolves the calling agent and the channel for the audit. A
// call without an agent fails closed.
func (s *Server) withAgent(h agentHandler) server.ToolHandlerFunc {
	return func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		a, ok := agentFrom(ctx)
		if !ok {
			return nil, errors.New("no agent is bound to this session")
		}
		ctx = agentotp.WithChannel(ctx, channelOf(ctx))
		return h(ctx, a.perms, req), nil
	}
}

type transportKey struct{}

func withTransport(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, transportKey{}, name)
}

// channelOf names the transport and the client for the audit. The client's
// name and version are what it told us at initialize: agent-asserted.
func channelOf(ctx context.Context) agentotp.Channel {
	ch := agentotp.Channel{Via: "mcp"}
	ch.Transport, _ = ctx.Value(transportKey{}).(string)
	if info := server.RequestProtocolInfoFromContext(ctx); info != nil && info.ClientInfo != nil {
		ch.Client, ch.ClientVersion = info.ClientInfo.Name, info.ClientInfo.Version
	}
	if ch.Client == "" {
		if sess, ok := server.ClientSessionFromContext(ctx).(server.SessionWithClientInfo); ok {
			info := sess.GetClientInfo()
			ch.Client, ch.ClientVersion = info.Name, info.Version
		}
	}
	return ch
}

// ServeStdio serves one client on in/out as the agent perms until in ends
// or ctx is cancelled. Nothing but protocol is written to out.
func (s *Server) ServeStdio(ctx context.Context, perms Permissions, identity string, in io.Reader, out io.Writer) error {
	stdio := server.NewStdioServer(s.mcp)
	stdio.SetErrorLogger(slog.NewLogLogger(s.log.Handler(), slog.LevelError))
	ctx = withTransport(WithAgent(ctx, perms, identity), "stdio")
	// Calls that wait for a person hold a worker each; the default pool
	// of 5 would stall a client that waits on several at once.
	server.WithWorkerPoolSize(32)(stdio)
	err := stdio.Listen(ctx, in, out)
	if errors.Is(err, context.Canceled) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// minLevel drops records below its level.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.level && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(as), m.level}
}

func (m minLevel) WithGroup(name string) slog.Handler {
	return minLevel{m.Handler.WithGroup(name), m.level}
}
