// Command downstream is the MCP server the gateway tests put behind
// `agentotp gateway`: written with mcp-go, served over stdio (default) or
// streamable HTTP (-http ADDR, printing "listening on http://ADDR/mcp") or
// the legacy SSE transport (-http ADDR -sse: "listening on http://ADDR/sse").
//
// Every tool call is appended as one JSON line {"tool", "args"} to the file
// named by $DOWNSTREAM_LOG (when set), so a test counts what reached the
// server without asking through the gateway.
//
// Tools: echo (read-only), search (read-only; its input schema uses $schema,
// $defs and anyOf), delete_item (destructive), env (read-only: the process
// environment), crash (exits the process), add_tool (adds the tool "extra",
// which sends notifications/tools/list_changed), slow (read-only; sends
// notifications/progress). Resource mem://readme and prompt greet.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// SearchSchema is search's input schema, exactly as served.
const SearchSchema = `{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","$defs":{"range":{"type":"object","properties":{"from":{"type":"integer"},"to":{"type":"integer"}},"required":["from","to"]}},"properties":{"query":{"anyOf":[{"type":"string","minLength":1},{"type":"array","items":{"type":"string"},"minItems":1}]},"range":{"$ref":"#/$defs/range"}},"required":["query"],"additionalProperties":false}`

var logMu sync.Mutex

// record appends the call to $DOWNSTREAM_LOG.
func record(name string, args map[string]any) {
	path := os.Getenv("DOWNSTREAM_LOG")
	if path == "" {
		return
	}
	b, _ := json.Marshal(map[string]any{"tool": name, "args": args})
	logMu.Lock()
	defer logMu.Unlock()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "downstream: log:", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(b, '\n'))
}

func hints(readOnly, destructive bool) mcp.ToolAnnotation {
	return mcp.ToolAnnotation{ReadOnlyHint: &readOnly, DestructiveHint: &destructive}
}

func tool(name, description, schema string, ann *mcp.ToolAnnotation) mcp.Tool {
	t := mcp.NewToolWithRawSchema(name, description, json.RawMessage(schema))
	if ann != nil {
		t.Annotations = *ann
	}
	return t
}

func newServer() *server.MCPServer {
	s := server.NewMCPServer("downstream", "1.0.0",
		server.WithToolCapabilities(true),
		server.WithResourceCapabilities(false, true),
		server.WithPromptCapabilities(true),
	)
	ro, destructive := hints(true, false), hints(false, true)
	counted := func(h server.ToolHandlerFunc) server.ToolHandlerFunc {
		return func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			record(req.Params.Name, req.GetArguments())
			return h(ctx, req)
		}
	}
	s.AddTool(tool("echo", "Echo the text back.",
		`{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}`, &ro),
		counted(func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText("echo: " + req.GetString("text", "")), nil
		}))
	s.AddTool(tool("search", "Search for things.", SearchSchema, &ro),
		counted(func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			b, _ := json.Marshal(req.GetArguments())
			return mcp.NewToolResultText("searched " + string(b)), nil
		}))
	s.AddTool(tool("delete_item", "Delete an item for good.",
		`{"type":"object","properties":{"id":{"type":"string"},"reason":{"type":"string"}},"required":["id"]}`, &destructive),
		counted(func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText("deleted " + req.GetString("id", "")), nil
		}))
	s.AddTool(tool("env", "Report this process's environment.", `{"type":"object"}`, &ro),
		counted(func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			env := os.Environ()
			sort.Strings(env)
			return mcp.NewToolResultText(strings.Join(env, "\n")), nil
		}))
	s.AddTool(tool("crash", "Exit the server process at once.", `{"type":"object"}`, &destructive),
		counted(func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			os.Exit(3)
			return nil, nil
		}))
	s.AddTool(tool("add_tool", "Add the tool extra (tools/list_changed follows).", `{"type":"object"}`, nil),
		counted(func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			s.AddTool(tool("extra", "A tool added at run time.", `{"type":"object","properties":{"n":{"type":"integer"}}}`, &ro),
				counted(func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
					return mcp.NewToolResultText("extra"), nil
				}))
			return mcp.NewToolResultText("added extra"), nil
		}))
	s.AddTool(tool("slow", "Report progress steps times, then answer.",
		`{"type":"object","properties":{"steps":{"type":"integer","minimum":1,"maximum":20}}}`, &ro),
		counted(func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			steps := req.GetInt("steps", 3)
			var tok mcp.ProgressToken
			if req.Params.Meta != nil {
				tok = req.Params.Meta.ProgressToken
			}
			for i := 1; i <= steps; i++ {
				if tok != nil {
					_ = server.ServerFromContext(ctx).SendNotificationToClient(ctx, "notifications/progress",
						map[string]any{"progressToken": tok, "progress": i, "total": steps, "message": fmt.Sprintf("step %d", i)})
				}
				time.Sleep(5 * time.Millisecond)
			}
			return mcp.NewToolResultText(fmt.Sprintf("done in %d steps", steps)), nil
		}))
	s.AddTool(tool("spray_progress", "Misbehave: report progress on the gateway's first n progress tokens, none of them given to this call.",
		`{"type":"object","properties":{"n":{"type":"integer","minimum":1,"maximum":100}}}`, &ro),
		counted(func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			n := req.GetInt("n", 20)
			for i := 1; i <= n; i++ {
				_ = server.ServerFromContext(ctx).SendNotificationToClient(ctx, "notifications/progress",
					map[string]any{"progressToken": fmt.Sprintf("agentotp-gw-progress-%d", i), "progress": 99, "message": "sprayed"})
			}
			return mcp.NewToolResultText(fmt.Sprintf("sprayed %d", n)), nil
		}))

	s.AddResource(mcp.NewResource("mem://readme", "readme", mcp.WithResourceDescription("A short text."), mcp.WithMIMEType("text/plain")),
		func(_ context.Context, req mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
			record("resources/read", map[string]any{"uri": req.Params.URI})
			return []mcp.ResourceContents{mcp.TextResourceContents{URI: req.Params.URI, MIMEType: "text/plain", Text: "hello from downstream"}}, nil
		})
	if tpl := os.Getenv("DOWNSTREAM_TEMPLATE"); tpl != "" {
		s.AddResourceTemplate(mcp.NewResourceTemplate(tpl, "template"),
			func(_ context.Context, req mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
				record("resources/read", map[string]any{"uri": req.Params.URI})
				return []mcp.ResourceContents{mcp.TextResourceContents{URI: req.Params.URI, Text: "from template " + tpl}}, nil
			})
	}
	s.AddPrompt(mcp.NewPrompt("greet", mcp.WithPromptDescription("Greet someone."), mcp.WithArgument("name", mcp.RequiredArgument())),
		func(_ context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			args := map[string]any{}
			for k, v := range req.Params.Arguments {
				args[k] = v
			}
			record("prompts/get", args)
			return mcp.NewGetPromptResult("greeting", []mcp.PromptMessage{
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent("Say hello to "+req.Params.Arguments["name"]+".")),
			}), nil
		})
	return s
}

func main() {
	addr := flag.String("http", "", "serve streamable HTTP on this address instead of stdio")
	sse := flag.Bool("sse", false, "with -http: serve the legacy SSE transport instead")
	flag.Parse()
	s := newServer()
	if *addr == "" {
		if err := server.ServeStdio(s); err != nil {
			fmt.Fprintln(os.Stderr, "downstream:", err)
			os.Exit(1)
		}
		return
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "downstream:", err)
		os.Exit(1)
	}
	var h http.Handler = server.NewStreamableHTTPServer(s, server.WithStateful(true))
	if *sse {
		h = server.NewSSEServer(s, server.WithBaseURL("http://"+ln.Addr().String()))
		fmt.Printf("listening on http://%s/sse\n", ln.Addr())
	} else {
		fmt.Printf("listening on http://%s/mcp\n", ln.Addr())
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "downstream:", err)
		os.Exit(1)
	}
}
