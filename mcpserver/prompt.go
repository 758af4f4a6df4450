package mcpserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/mark3labs/mcp-go/mcp"

	"github.com/agentotp/agentotp"
)

// approvalPrompt answers Claude Code's --permission-prompt-tool call. The
// tool call becomes a permission request (action claude.<tool_name>, scope
// = the input); on approval one use is spent before "allow" goes back, so
// one approval lets exactly one tool call run. The input Claude Code runs
// is the granted scope: an approver's narrowing reaches the tool.
func (s *Server) approvalPrompt(ctx context.Context, a Permissions, req mcp.CallToolRequest) *mcp.CallToolResult {
	in := newArgs(req, "tool_name", "input", "tool_use_id")
	name, input := in.str("tool_name", true), in.obj("input", true)
	_ = in.str("tool_use_id", false)
	if in.err == nil && len(name) > 200 {
		in.fail("tool_name", "must be at most 200 bytes")
	}
	if in.err != nil {
		return invalid("approval_prompt", in.err)
	}
	if input == nil {
		input = map[string]any{}
	}
	bound, _ := agentFrom(ctx)
	guard := s.prompts.of(bound.identity)
	v, err := guard.Ask(ctx, a, promptKey(bound.identity, name, input), name,
		agentotp.PermissionRequest{Action: "claude." + name, Scope: input,
			// A tool call: the approval binds to these exact arguments.
			Tool: &agentotp.ToolCall{Server: "claude-code", Name: name, Args: input}})
	if err != nil {
		return deny("agentotp could not decide: " + resultText(s.errorResult(ctx, "approval_prompt", err)))
	}
	perm := v.Permission
	switch {
	case perm.Status == agentotp.StatusPending:
		return deny(fmt.Sprintf("approval pending (%s): a person must approve at %s. Try the same tool call again to pick up the decision.",
			perm.ID, a.ApprovalURL(perm.ID)))
	case v.Allowed:
		granted := perm.GrantedScope
		if granted == nil {
			granted = input
		}
		ok, msg, err := guard.Spend(ctx, a, v, name, granted)
		switch {
		case err != nil:
			return deny("agentotp could not record the use: " + resultText(s.errorResult(ctx, "approval_prompt", err)))
		case !ok:
			return deny(msg)
		}
		return allow(granted)
	case perm.Status == agentotp.StatusApproved:
		return deny(fmt.Sprintf("approved (%s), but its token was already handed out; try the tool call again to ask anew", perm.ID))
	case perm.Status == agentotp.StatusDenied:
		return deny(fmt.Sprintf("denied by agentotp (%s): %s", perm.ID, orDefault(perm.DecisionReason, "no reason given")))
	}
	return deny(fmt.Sprintf("not approved (%s is %s)", perm.ID, perm.Status))
}

func allow(input map[string]any) *mcp.CallToolResult {
	b, _ := json.Marshal(struct {
		Behavior     string         `json:"behavior"`
		UpdatedInput map[string]any `json:"updatedInput"`
	}{"allow", input})
	return mcp.NewToolResultText(string(b))
}

func deny(msg string) *mcp.CallToolResult {
	b, _ := json.Marshal(struct {
		Behavior string `json:"behavior"`
		Message  string `json:"message"`
	}{"deny", msg})
	return mcp.NewToolResultText(string(b))
}

func resultText(r *mcp.CallToolResult) string {
	for _, c := range r.Content {
		if t, ok := c.(mcp.TextContent); ok {
			return t.Text
		}
	}
	return ""
}

// promptKey identifies one tool call by agent, tool and input. JSON
// encoding sorts object keys, so equal inputs give equal keys.
func promptKey(identity, name string, input map[string]any) string {
	b, _ := json.Marshal(input)
	h := sha256.New()
	h.Write([]byte(identity))
	h.Write([]byte{0})
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}
