package agentotp_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/policy"
)

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestArgsHashVectors(t *testing.T) {
	// Pinned: computed outside Go from the canonical text.
	require.Equal(t, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", agentotp.ArgsHash(nil))
	require.Equal(t, "01d53b9ae56c76a31ce26aae4dac64f9aa282475fb9abf029ceecd88ea82bf4e",
		agentotp.ArgsHash(map[string]any{"recursive": false, "path": "/srv/share/a.txt"}))
	require.Equal(t, "fa42c681172c9deafd4790b264700122ad42c69dc517c0c5dd72021cec954821",
		agentotp.ArgsHash(map[string]any{
			"b": map[string]any{"\u2028": "é\n"},
			"a": []any{json.Number("1.0"), "<x&y>", nil, true, 1.5, 1e21, json.Number("0.0000001")},
		}))

	cases := []struct {
		name      string
		args      map[string]any
		canonical string
	}{
		{"nil", nil, `{}`},
		{"empty", map[string]any{}, `{}`},
		{"keys sorted", map[string]any{"b": 1.0, "a": 2.0, "B": 3.0}, `{"B":3,"a":2,"b":1}`},
		{"keys sorted byte-wise", map[string]any{"é": 1.0, "z": 2.0, "A": 3.0, "": 4.0}, `{"":4,"A":3,"z":2,"é":1}`},
		{"nested and arrays", map[string]any{"a": map[string]any{"z": []any{1.0, "x", nil, true, map[string]any{"k": false}}, "b": map[string]any{}}},
			`{"a":{"b":{},"z":[1,"x",null,true,{"k":false}]}}`},
		{"nil inside", map[string]any{"m": map[string]any(nil), "l": []any(nil), "e": []any{}}, `{"e":[],"l":null,"m":null}`},
		{"float integral", map[string]any{"n": 1.0}, `{"n":1}`},
		{"json.Number integral with fraction", map[string]any{"n": json.Number("1.00")}, `{"n":1}`},
		{"json.Number with exponent", map[string]any{"n": json.Number("100e-2")}, `{"n":1}`},
		{"Go int", map[string]any{"n": 1}, `{"n":1}`},
		{"Go uint8", map[string]any{"n": uint8(1)}, `{"n":1}`},
		{"negative zero", map[string]any{"n": math.Copysign(0, -1), "m": json.Number("-0.0")}, `{"m":0,"n":0}`},
		{"fraction", map[string]any{"n": 0.1, "m": json.Number("-1.50")}, `{"m":-1.5,"n":0.1}`},
		{"large integral", map[string]any{"n": 1e20, "m": json.Number("1e21")}, `{"m":1e+21,"n":100000000000000000000}`},
		{"small", map[string]any{"n": 1e-7, "m": 0.000001}, `{"m":0.000001,"n":1e-7}`},
		{"beyond 2^53 as its double", map[string]any{"n": json.Number("12345678901234567890")}, `{"n":12345678901234567000}`},
		{"float32 as encoding/json writes it", map[string]any{"n": float32(0.1)}, `{"n":0.1}`},
		{"html not escaped", map[string]any{"s": "<a href='x'>&amp;</a>"}, `{"s":"<a href='x'>&amp;</a>"}`},
		{"escapes", map[string]any{"s": "q\"b\\n\n\r\t\x01\x7f"}, `{"s":"q\"b\\n\n\r\t\u0001` + "\x7f" + `"}`},
		{"line separators escaped", map[string]any{"s": "a\u2028b\u2029"}, `{"s":"a\u2028b\u2029"}`},
		{"non-ASCII literal", map[string]any{"s": "日本 🔑"}, `{"s":"日本 🔑"}`},
		{"invalid UTF-8 as \\ufffd", map[string]any{"s": "a\xffb"}, `{"s":"a\ufffdb"}`},
		{"escaped key", map[string]any{"a\"b": true}, `{"a\"b":true}`},
		{"typed map and slice", map[string]any{"m": map[string]string{"y": "1", "x": "2"}, "l": []string{"a"}}, `{"l":["a"],"m":{"x":"2","y":"1"}}`},
		{"struct", map[string]any{"s": struct {
			B int    `json:"b"`
			A string `json:"a"`
		}{1, "<"}}, `{"s":{"a":"<","b":1}}`},
		{"raw message", map[string]any{"r": json.RawMessage(`{"z": 1.0, "a": [ 2 ]}`)}, `{"r":{"a":[2],"z":1}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, sha(tc.canonical), agentotp.ArgsHash(tc.args))
		})
	}

	t.Run("equal values hash alike", func(t *testing.T) {
		groups := [][]map[string]any{
			{{"n": 1.0}, {"n": json.Number("1")}, {"n": json.Number("1.0")}, {"n": json.Number("1e0")}, {"n": 1}, {"n": int64(1)}, {"n": uint(1)}},
			{{"n": 0.5}, {"n": json.Number("5e-1")}, {"n": json.Number("0.50")}, {"n": float32(0.5)}},
			{{"a": 1.0, "b": []any{"x"}}, {"b": []any{"x"}, "a": json.Number("1")}, {"b": []string{"x"}, "a": 1}},
			{nil, {}},
		}
		for _, g := range groups {
			for _, m := range g[1:] {
				require.Equal(t, agentotp.ArgsHash(g[0]), agentotp.ArgsHash(m), "%v vs %v", g[0], m)
			}
		}
		require.NotEqual(t, agentotp.ArgsHash(map[string]any{"n": 1.0}), agentotp.ArgsHash(map[string]any{"n": "1"}))
		require.NotEqual(t, agentotp.ArgsHash(map[string]any{"n": nil}), agentotp.ArgsHash(map[string]any{}))
		require.NotEqual(t, agentotp.ArgsHash(map[string]any{"l": []any{}}), agentotp.ArgsHash(map[string]any{"l": map[string]any{}}))
	})

	t.Run("values JSON cannot hold hash to nothing", func(t *testing.T) {
		self := map[string]any{}
		self["self"] = self
		for name, v := range map[string]any{
			"NaN": math.NaN(), "+Inf": math.Inf(1), "-Inf in a list": []any{math.Inf(-1)},
			"number out of range": json.Number("1e400"), "not a number": json.Number("abc"),
			"Go hex literal": json.Number("0x10"), "leading zero": json.Number("01"), "empty number": json.Number(""),
			"channel": make(chan int), "function": func() {}, "cycle": self,
		} {
			require.Empty(t, agentotp.ArgsHash(map[string]any{"v": v}), name)
		}
	})
}

// FuzzArgsHash: for any JSON value, the hash never panics and survives
// encoding/json's round trip (with HTML escaping on and off), and numbers
// decoded as float64 and as json.Number hash alike.
func FuzzArgsHash(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"a":1}`, `{"a":1.0,"b":[1e0,10e-1,"x"]}`, `{"b":2,"a":{"d":null,"c":[true,false]}}`,
		`{"s":"<&>\u2028\u2029\u0000\ud800"}`, `{"n":-0,"m":-0.0,"k":1e21,"j":1e-7,"i":123456789012345678901234567890}`,
		`{"n":1e400}`, `{"n":1e-400}`, `{"é":1,"e":2,"\u00e9\u0301":3}`, `[1,2]`, `"str"`, `{"a":{"a":{"a":[[[[]]]]}}}`,
		"{\"k\":\"\xff\xfe\"}", `{"dup":1,"dup":2}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		decode := func(b []byte, useNumber bool) (map[string]any, bool) {
			dec := json.NewDecoder(bytes.NewReader(b))
			if useNumber {
				dec.UseNumber()
			}
			var v any
			if dec.Decode(&v) != nil {
				return nil, false
			}
			if m, ok := v.(map[string]any); ok {
				return m, true
			}
			return map[string]any{"v": v}, true
		}
		asNumbers, ok := decode(data, true)
		if !ok {
			return
		}
		h := agentotp.ArgsHash(asNumbers)
		if asFloats, ok := decode(data, false); ok {
			require.Equal(t, agentotp.ArgsHash(asFloats), h, "float64 and json.Number decodings differ")
		}
		if h == "" {
			return // a number beyond a double's range
		}
		again, err := json.Marshal(asNumbers)
		require.NoError(t, err)
		back, ok := decode(again, false)
		require.True(t, ok, "%s", again)
		require.Equal(t, h, agentotp.ArgsHash(back), "after the encoding/json round trip %s", again)

		var plain bytes.Buffer
		enc := json.NewEncoder(&plain)
		enc.SetEscapeHTML(false)
		require.NoError(t, enc.Encode(asNumbers))
		back, ok = decode(plain.Bytes(), true)
		require.True(t, ok, "%s", plain.Bytes())
		require.Equal(t, h, agentotp.ArgsHash(back), "after a round trip without HTML escaping %s", plain.Bytes())
	})
}

func TestToolCallValidation(t *testing.T) {
	long := strings.Repeat("n", 256)
	max := strings.Repeat("n", 255)
	deep := map[string]any{}
	for range 20 {
		deep = map[string]any{"d": deep}
	}
	many := map[string]any{}
	for i := range 257 {
		many[strings.Repeat("k", i+1)] = 1.0
	}
	cases := []struct {
		name  string
		tool  agentotp.ToolCall
		field string // "" = valid
	}{
		{"name only", agentotp.ToolCall{Name: "read_file"}, ""},
		{"everything", agentotp.ToolCall{Server: "fs", Name: "read_file", Annotations: map[string]any{"readOnlyHint": true},
			Args: map[string]any{"path": "/x"}}, ""},
		{"255-byte names", agentotp.ToolCall{Server: max, Name: max}, ""},
		{"tab is printable", agentotp.ToolCall{Server: "a\tb", Name: "c\td"}, ""},
		{"missing name", agentotp.ToolCall{Server: "fs"}, "tool.name"},
		{"name too long", agentotp.ToolCall{Name: long}, "tool.name"},
		{"name with newline", agentotp.ToolCall{Name: "a\nb"}, "tool.name"},
		{"name with NUL", agentotp.ToolCall{Name: "a\x00b"}, "tool.name"},
		{"name with C1 control", agentotp.ToolCall{Name: "a\u0085b"}, "tool.name"},
		{"name invalid UTF-8", agentotp.ToolCall{Name: "a\xffb"}, "tool.name"},
		{"server too long", agentotp.ToolCall{Server: long, Name: "x"}, "tool.server"},
		{"server with escape", agentotp.ToolCall{Server: "\x1b[31m", Name: "x"}, "tool.server"},
		{"annotations too many keys", agentotp.ToolCall{Name: "x", Annotations: many}, "tool.annotations"},
		{"annotations with NUL", agentotp.ToolCall{Name: "x", Annotations: map[string]any{"title": "a\x00"}}, "tool.annotations.title"},
		{"annotations with NaN", agentotp.ToolCall{Name: "x", Annotations: map[string]any{"n": math.NaN()}}, "tool.annotations"},
		{"args too deep", agentotp.ToolCall{Name: "x", Args: deep}, "tool.args"},
		{"args too many keys", agentotp.ToolCall{Name: "x", Args: many}, "tool.args"},
		{"args empty key", agentotp.ToolCall{Name: "x", Args: map[string]any{"": 1.0}}, "tool.args"},
		{"args with infinity", agentotp.ToolCall{Name: "x", Args: map[string]any{"n": math.Inf(1)}}, "tool.args"},
		{"args too large", agentotp.ToolCall{Name: "x", Args: map[string]any{"blob": strings.Repeat("a", 65<<10)}}, "tool.args"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tool := tc.tool
			req := agentotp.PermissionRequest{Action: "mcp.call", Tool: &tool}
			if tc.field == "" {
				req.Scope = tool.Args // a tool call's scope is its arguments
			}
			err := req.Validate()
			if tc.field == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			var e *agentotp.Error
			require.True(t, errors.As(err, &e))
			require.Equal(t, agentotp.CodeValidation, e.Code)
			require.Len(t, e.Details, 1)
			for field := range e.Details {
				require.True(t, field == tc.field || strings.HasPrefix(field, tc.field+"."), "%s names %s", e.Message, field)
			}
		})
	}

	t.Run("fills the hash and defaults on a copy", func(t *testing.T) {
		args := map[string]any{"path": "/x", "n": 2.0}
		in := &agentotp.ToolCall{Server: "fs", Name: "read_file", Args: args, ArgsHash: "from the caller"}
		req := agentotp.PermissionRequest{Action: "mcp.call", Scope: args, Tool: in}
		require.NoError(t, req.Validate())
		require.Equal(t, agentotp.ArgsHash(args), req.Tool.ArgsHash, "the hash is computed, never taken")
		require.Equal(t, map[string]any{}, req.Tool.Annotations)
		require.Equal(t, "from the caller", in.ArgsHash, "the caller's ToolCall is not modified")
		require.Nil(t, in.Annotations)

		req = agentotp.PermissionRequest{Action: "mcp.call", Tool: &agentotp.ToolCall{Name: "t"}}
		require.NoError(t, req.Validate())
		require.Equal(t, map[string]any{}, req.Tool.Args)
		require.Equal(t, agentotp.ArgsHash(nil), req.Tool.ArgsHash)
	})

	// The policy judges the arguments and every use is held to the scope:
	// a call approved for one set of arguments must not be spent on
	// another.
	t.Run("the scope must be the arguments", func(t *testing.T) {
		req := agentotp.PermissionRequest{Action: "mcp.call", Scope: map[string]any{"path": "/etc/shadow"},
			Tool: &agentotp.ToolCall{Name: "read_file", Args: map[string]any{"path": "/srv/public/readme"}}}
		err := req.Validate()
		require.ErrorIs(t, err, agentotp.ErrValidation)
		require.ErrorContains(t, err, "tool.args")
		req = agentotp.PermissionRequest{Action: "mcp.call", Tool: &agentotp.ToolCall{Name: "read_file", Args: map[string]any{"path": "/x"}}}
		require.ErrorIs(t, req.Validate(), agentotp.ErrValidation, "no scope is not the arguments either")
	})
}

func gatewayRequest(key string, args map[string]any) agentotp.PermissionRequest {
	return agentotp.PermissionRequest{
		Action: "mcp.fs.write_file", Resource: "mcp://fs/write_file", Scope: args, IdempotencyKey: key,
		Tool: &agentotp.ToolCall{Server: "fs", Name: "write_file", Annotations: map[string]any{"destructiveHint": true}, Args: args},
	}
}

func TestPermissionRemembersToolCall(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []agentotp.EvalInput
	)
	f := newFixture(t, func(o *agentotp.Options) {
		o.Evaluator = agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
			mu.Lock()
			seen = append(seen, in)
			mu.Unlock()
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "tools"}, nil
		})
	})
	last := func() agentotp.EvalInput {
		mu.Lock()
		defer mu.Unlock()
		return seen[len(seen)-1]
	}
	a := f.agent("gw")
	args := map[string]any{"path": "/srv/share/a.txt", "mode": 420.0}
	want := &agentotp.ToolCall{Server: "fs", Name: "write_file", Annotations: map[string]any{"destructiveHint": true},
		ArgsHash: agentotp.ArgsHash(args)}

	perm, tok, err := f.svc.RequestPermission(f.ctx, a, gatewayRequest("", args))
	require.NoError(t, err)
	require.Equal(t, want, perm.Tool, "kept without the arguments")
	require.Equal(t, args, last().Tool.Args, "the policy saw the arguments at request time")

	t.Run("stored and read back", func(t *testing.T) {
		got, err := f.store.Permission(f.ctx, perm.ID)
		require.NoError(t, err)
		require.Equal(t, want, got.Tool)
		got, _, err = f.svc.GetPermission(f.ctx, f.admin, perm.ID, 0)
		require.NoError(t, err)
		require.Equal(t, want, got.Tool)
	})

	t.Run("audited with the request", func(t *testing.T) {
		list, err := f.svc.ListAudit(f.ctx, f.admin, agentotp.AuditFilter{PermissionID: perm.ID, Ascending: true})
		require.NoError(t, err)
		require.Equal(t, agentotp.EventRequest, list[0].Type)
		require.Equal(t, map[string]any{"server": "fs", "name": "write_file",
			"annotations": map[string]any{"destructiveHint": true}, "argsSha256": want.ArgsHash}, list[0].Details["tool"])
	})

	t.Run("reaches the re-check at use with the scope as arguments", func(t *testing.T) {
		res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), perm.GrantedScope) // a tool call spends with its exact arguments
		require.NoError(t, err)
		require.True(t, res.Success, res.Reason)
		in := last()
		require.Equal(t, &agentotp.ToolCall{Server: "fs", Name: "write_file", Annotations: want.Annotations,
			Args: args, ArgsHash: want.ArgsHash}, in.Tool)
	})

	t.Run("arguments other than the scope are refused, not asked", func(t *testing.T) {
		req := gatewayRequest("", args)
		req.Scope = map[string]any{"path": "/srv/share/a.txt"}
		before := len(seen)
		_, _, err := f.svc.RequestPermission(f.ctx, a, req)
		require.ErrorIs(t, err, agentotp.ErrValidation)
		require.Len(t, seen, before, "the policy never saw it")
	})

	t.Run("no tool call, no tool at use", func(t *testing.T) {
		perm, tok, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "gmail.send"})
		require.NoError(t, err)
		require.Nil(t, perm.Tool)
		res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), nil)
		require.NoError(t, err)
		require.True(t, res.Success, res.Reason)
		require.Nil(t, last().Tool)
	})
}

func TestIdempotentReplayComparesTool(t *testing.T) {
	f := newFixture(t)
	a := f.agent("gw")
	args := map[string]any{"path": "/srv/a", "n": 1.0}
	first, _, err := f.svc.RequestPermission(f.ctx, a, gatewayRequest("k-tool", args))
	require.NoError(t, err)

	// Equal arguments decoded otherwise are the same call.
	again := gatewayRequest("k-tool", map[string]any{"n": json.Number("1.0"), "path": "/srv/a"})
	again.Scope = args
	p, _, err := f.svc.RequestPermission(f.ctx, a, again)
	require.NoError(t, err)
	require.Equal(t, first.ID, p.ID)

	for name, mod := range map[string]func(r *agentotp.PermissionRequest){
		"another tool name": func(r *agentotp.PermissionRequest) { r.Tool.Name = "read_file" },
		"another server":    func(r *agentotp.PermissionRequest) { r.Tool.Server = "fs2" },
		"other annotations": func(r *agentotp.PermissionRequest) { r.Tool.Annotations = map[string]any{"destructiveHint": false} },
		"other arguments": func(r *agentotp.PermissionRequest) {
			r.Scope = map[string]any{"path": "/etc/passwd", "n": 1.0}
			r.Tool.Args = r.Scope
		},
		"no tool call at all": func(r *agentotp.PermissionRequest) { r.Tool = nil },
	} {
		t.Run(name, func(t *testing.T) {
			req := gatewayRequest("k-tool", args)
			mod(&req)
			_, _, err := f.svc.RequestPermission(f.ctx, a, req)
			require.ErrorIs(t, err, agentotp.ErrConflict)
		})
	}

	t.Run("a tool call where there was none", func(t *testing.T) {
		_, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "mcp.fs.write_file", IdempotencyKey: "k-plain"})
		require.NoError(t, err)
		req := gatewayRequest("k-plain", nil)
		req.Resource, req.Scope = "", nil
		_, _, err = f.svc.RequestPermission(f.ctx, a, req)
		require.ErrorIs(t, err, agentotp.ErrConflict)
	})
}

// TestPolicyUpdateStopsToolTokens: with the real policy engine, a deny rule
// on tool.name or on args written after the approval stops the token at
// use (gateway calls).
func TestPolicyUpdateStopsToolTokens(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.yaml")
	write := func(s string) { require.NoError(t, os.WriteFile(file, []byte(s), 0o600)) }
	const allow = `
- name: gateway calls
  conditions: {action: {starts_with: mcp.}}
  action: auto_approve
`
	write(allow)
	engine, err := policy.New(context.Background(), policy.Options{Paths: []string{dir}})
	require.NoError(t, err)
	f := newFixture(t, func(o *agentotp.Options) { o.Evaluator = engine })
	a := f.agent("gw")

	grant := func(req agentotp.PermissionRequest) (*agentotp.Permission, string) {
		t.Helper()
		req.Uses = 2
		perm, tok, err := f.svc.RequestPermission(f.ctx, a, req)
		require.NoError(t, err)
		require.Equal(t, agentotp.StatusApproved, perm.Status, perm.DecisionReason)
		return perm, tok.Reveal()
	}
	use := func(perm *agentotp.Permission, tok string) agentotp.UseResult {
		t.Helper()
		res, err := f.svc.Use(f.ctx, a, perm.ID, tok, perm.GrantedScope)
		require.NoError(t, err)
		return res
	}
	reload := func(rules string) {
		t.Helper()
		write(allow + rules)
		require.NoError(t, engine.Reload(f.ctx))
	}

	t.Run("deny on tool.name", func(t *testing.T) {
		reload("")
		wReq := gatewayRequest("", map[string]any{"path": "/srv/a"})
		rReq := gatewayRequest("", map[string]any{"path": "/srv/a"})
		rReq.Tool.Name = "read_file"
		wPerm, wTok := grant(wReq)
		rPerm, rTok := grant(rReq)
		require.True(t, use(wPerm, wTok).Success)

		reload(`
- name: no more writes
  conditions: {tool.name: {equals: write_file}}
  action: deny
  description: writes are switched off
  priority: 100
`)
		res := use(wPerm, wTok)
		require.False(t, res.Success)
		require.Equal(t, "refused by policy: writes are switched off", res.Reason)
		got, err := f.store.Permission(f.ctx, wPerm.ID)
		require.NoError(t, err)
		require.Equal(t, 1, got.UsesRemaining, "a refused use spends nothing")
		require.True(t, use(rPerm, rTok).Success, "other tools are not affected")
	})

	t.Run("deny on args", func(t *testing.T) {
		reload("")
		etc, etcTok := grant(gatewayRequest("", map[string]any{"path": "/etc/passwd"}))
		srv, srvTok := grant(gatewayRequest("", map[string]any{"path": "/srv/a"}))

		reload(`
- name: nothing under /etc
  conditions: {tool.server: {equals: fs}}
  when: args.path.startsWith("/etc/")
  action: deny
  priority: 100
`)
		res := use(etc, etcTok)
		require.False(t, res.Success)
		require.Contains(t, res.Reason, "refused by policy")
		require.True(t, use(srv, srvTok).Success, "arguments the rule does not match pass")
	})
}

// A tool call's permission is spent only with the exact arguments approved:
// the tool's own argument names are not scope rules, and other arguments
// are refused.
func TestToolCallUseBindsTheArguments(t *testing.T) {
	f := newFixture(t)
	f.eff.Store(int32(agentotp.EffectAutoApprove))
	a := f.agent("gw")
	args := map[string]any{"pattern": "TODO", "file_pattern": "*.go", "max_results": 10.0}
	perm, tok, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "mcp.fs.search", Scope: args,
		Tool: &agentotp.ToolCall{Server: "fs", Name: "search", Args: args}})
	require.NoError(t, err)
	for _, other := range []map[string]any{nil, {}, {"pattern": "TODO", "file_pattern": "*", "max_results": 10.0},
		{"pattern": "TODO", "file_pattern": "*.go", "max_results": 10.0, "extra": true}} {
		res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), other)
		require.NoError(t, err)
		require.False(t, res.Success, "%v", other)
		require.Contains(t, res.Reason, "not the ones approved")
	}
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), map[string]any{"max_results": 10, "file_pattern": "*.go", "pattern": "TODO"})
	require.NoError(t, err)
	require.True(t, res.Success, res.Reason)
}
