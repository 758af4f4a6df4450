package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// toolView is the tool call on a permission as clients read it.
type toolView struct {
	Tool *struct {
		Server      string         `json:"server"`
		Name        string         `json:"name"`
		Annotations map[string]any `json:"annotations"`
		ArgsSHA256  string         `json:"argsSha256"`
	} `json:"tool"`
}

func (r resp) tool(t *testing.T) map[string]any {
	t.Helper()
	var v struct {
		Data map[string]any `json:"data"`
	}
	require.NoError(t, json.Unmarshal(r.Body, &v), "body: %s", r.Body)
	tool, _ := v.Data["tool"].(map[string]any)
	return tool
}

func TestToolCallOnTheWire(t *testing.T) {
	e := newTestServer(t)
	a := e.createAgent("gateway")
	approver := e.createUser("tool-approver", "approver")
	args := map[string]any{"path": "/srv/share/a.txt", "mode": 420, "tags": []any{"<b>", "&"}}
	tool := map[string]any{"server": "fs", "name": "write_file", "annotations": map[string]any{"destructiveHint": true}, "args": args}
	want := map[string]any{"server": "fs", "name": "write_file", "annotations": map[string]any{"destructiveHint": true},
		"argsSha256": agentotp.ArgsHash(args)}

	t.Run("returned to the owner and to approvers", func(t *testing.T) {
		r := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "auto.mcp.fs.write_file", "scope": args, "tool": tool})
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		require.Equal(t, want, r.tool(t), "the arguments only by their hash")
		var p permView
		r.data(t, http.StatusCreated, &p)

		for _, key := range []string{a.Key, approver.Key, e.adminKey} {
			r := e.do("GET", "/api/v1/permissions/"+p.ID, key, nil)
			require.Equal(t, http.StatusOK, r.Status)
			require.Equal(t, want, r.tool(t))
		}

		pend := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "mcp.fs.write_file", "scope": args, "tool": tool})
		require.Equal(t, http.StatusAccepted, pend.Status, "body: %s", pend.Body)
		var list struct {
			Data []toolView `json:"data"`
		}
		r = e.do("GET", "/api/v1/approvals?status=pending", approver.Key, nil)
		require.Equal(t, http.StatusOK, r.Status)
		require.NoError(t, json.Unmarshal(r.Body, &list))
		require.Len(t, list.Data, 1)
		require.NotNil(t, list.Data[0].Tool, "approvers see which call they approve: %s", r.Body)
		require.Equal(t, "write_file", list.Data[0].Tool.Name)
		require.Equal(t, want["argsSha256"], list.Data[0].Tool.ArgsSHA256)
	})

	t.Run("defaults and absence", func(t *testing.T) {
		r := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "auto.x", "tool": map[string]any{"name": "ping"}})
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		require.Equal(t, map[string]any{"server": "", "name": "ping", "annotations": map[string]any{},
			"argsSha256": agentotp.ArgsHash(nil)}, r.tool(t))

		for _, body := range []string{`{"action":"auto.x"}`, `{"action":"auto.x","tool":null}`} {
			r := e.do("POST", "/api/v1/permissions/request", a.Key, body)
			require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
			require.NotContains(t, string(r.Body), `"tool"`)
		}
	})

	t.Run("a retry with another tool call is a conflict", func(t *testing.T) {
		body := map[string]any{"action": "auto.x", "idempotencyKey": "tool-retry", "scope": args, "tool": tool}
		first := e.request(a.Key, body, http.StatusCreated)
		// The same call, its arguments in another order and spelling.
		same := map[string]any{"action": "auto.x", "idempotencyKey": "tool-retry", "scope": args,
			"tool": map[string]any{"server": "fs", "name": "write_file", "annotations": map[string]any{"destructiveHint": true},
				"args": map[string]any{"tags": []any{"<b>", "&"}, "mode": 420.0, "path": "/srv/share/a.txt"}}}
		require.Equal(t, first.ID, e.request(a.Key, same, http.StatusCreated).ID)

		other := map[string]any{"action": "auto.x", "idempotencyKey": "tool-retry", "scope": args,
			"tool": map[string]any{"server": "fs", "name": "delete_file", "args": args}}
		e.do("POST", "/api/v1/permissions/request", a.Key, other).fail(t, http.StatusConflict, "CONFLICT")
		other["tool"] = map[string]any{"server": "fs", "name": "write_file", "annotations": map[string]any{"destructiveHint": true},
			"args": map[string]any{"path": "/etc/passwd"}}
		other["scope"] = map[string]any{"path": "/etc/passwd"}
		e.do("POST", "/api/v1/permissions/request", a.Key, other).fail(t, http.StatusConflict, "CONFLICT")
	})

	// The policy judges tool.args and every use is held to the scope: a
	// request whose two differ could be approved for one and spent on the
	// other.
	t.Run("refused: a scope other than the arguments", func(t *testing.T) {
		body := map[string]any{"action": "auto.x", "scope": map[string]any{"path": "/etc/shadow"},
			"tool": map[string]any{"name": "read_file", "args": map[string]any{"path": "/srv/public/readme"}},
			"use":  map[string]any{"actionDetails": map[string]any{"path": "/etc/shadow"}}}
		er := e.do("POST", "/api/v1/permissions/request", a.Key, body).fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
		require.True(t, strings.HasPrefix(er.Message, "scope"), er.Message)
	})

	refused := []struct {
		name  string
		tool  any
		field string
	}{
		{"no name", map[string]any{"server": "fs"}, "tool.name"},
		{"empty name", map[string]any{"name": ""}, "tool.name"},
		{"name not a string", map[string]any{"name": 7}, "tool.name"},
		{"name too long", map[string]any{"name": strings.Repeat("n", 256)}, "tool.name"},
		{"name with a newline", map[string]any{"name": "a\nb"}, "tool.name"},
		{"server too long", map[string]any{"server": strings.Repeat("s", 256), "name": "x"}, "tool.server"},
		{"server with an escape", map[string]any{"server": "\x1b[2J", "name": "x"}, "tool.server"},
		{"annotations not an object", map[string]any{"name": "x", "annotations": []any{"a"}}, "tool.annotations"},
		{"annotations with NUL", map[string]any{"name": "x", "annotations": map[string]any{"title": "a\x00"}}, "tool.annotations"},
		{"args not an object", map[string]any{"name": "x", "args": "rm -rf /"}, "tool.args"},
		{"args nested too deep", map[string]any{"name": "x", "args": nested(18)}, "tool.args"},
		{"args with too many keys", map[string]any{"name": "x", "args": manyKeys(300)}, "tool.args"},
		{"a client's hash", map[string]any{"name": "x", "argsSha256": agentotp.ArgsHash(nil)}, "tool.argsSha256"},
		{"unknown field", map[string]any{"name": "x", "title": "y"}, "tool.title"},
		{"tool not an object", "write_file", "tool"},
	}
	for _, tc := range refused {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			r := e.do("POST", "/api/v1/permissions/request", a.Key, map[string]any{"action": "auto.x", "tool": tc.tool})
			er := r.fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
			require.True(t, strings.HasPrefix(er.Message, tc.field), "message %q names %s", er.Message, tc.field)
		})
	}
}
