package agentotp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"math"
	"slices"
	"strconv"
)

// ToolCall describes an MCP tool call made through the gateway: what a
// policy sees as `tool` and `args`, and — kept on the Permission — which
// call a permission was asked for.
type ToolCall struct {
	// Server is the gateway's name for the MCP server; may be empty.
	Server string
	// Name is the tool's name on that server.
	Name string
	// Annotations are the tool's MCP annotations (readOnlyHint, …) as the
	// gateway read them from the server.
	Annotations map[string]any
	// Args are the call's arguments. They reach the policy at request time
	// and are not stored: for a gateway call the permission's scope holds
	// them. On a Permission, Args is nil.
	Args map[string]any
	// ArgsHash is ArgsHash(Args). The service computes it when it
	// validates a request; a value set by the caller is replaced.
	ArgsHash string
}

// validated checks t at the edge and returns a copy with empty objects for
// missing annotations and arguments and ArgsHash computed from Args. t
// itself is not modified.
func (t *ToolCall) validated() (*ToolCall, error) {
	switch {
	case t.Name == "":
		return nil, ValidationError("tool.name", "is required")
	case len(t.Name) > MaxToolNameLen:
		return nil, ValidationError("tool.name", "must be at most 255 bytes")
	case !validText(t.Name):
		return nil, ValidationError("tool.name", "must be printable UTF-8 without control characters")
	case len(t.Server) > MaxToolNameLen:
		return nil, ValidationError("tool.server", "must be at most 255 bytes")
	case !validText(t.Server):
		return nil, ValidationError("tool.server", "must be printable UTF-8 without control characters")
	}
	c := *t
	if c.Annotations == nil {
		c.Annotations = map[string]any{}
	}
	if c.Args == nil {
		c.Args = map[string]any{}
	}
	if err := ValidateObject("tool.annotations", c.Annotations); err != nil {
		return nil, err
	}
	if _, err := canonicalJSON(c.Annotations); err != nil {
		return nil, ValidationError("tool.annotations", "must hold only JSON values (no NaN or infinity)")
	}
	if err := ValidateObject("tool.args", c.Args); err != nil {
		return nil, err
	}
	b, err := canonicalJSON(c.Args)
	if err != nil {
		return nil, ValidationError("tool.args", "must hold only JSON values (no NaN or infinity)")
	}
	c.ArgsHash = hashHex(b)
	return &c, nil
}

// sameTool reports whether a retried request names the same tool call as
// the stored permission: server, name, annotations (compared canonically)
// and the arguments' hash.
func sameTool(stored, req *ToolCall) bool {
	if stored == nil || req == nil {
		return stored == nil && req == nil
	}
	return stored.Server == req.Server && stored.Name == req.Name && stored.ArgsHash == req.ArgsHash &&
		ArgsHash(stored.Annotations) == ArgsHash(req.Annotations)
}

// useTool is the tool call a permission was granted for, as the policy sees
// it again at use. The arguments are not stored; for a gateway call they
// are the scope, which is recognised by its hash. Any other scope leaves
// Args nil, so that a rule reading `args` fails (and refuses the use)
// instead of reading arguments the permission was not asked with.
func useTool(p *Permission) *ToolCall {
	t := p.Tool
	if t == nil {
		return nil
	}
	c := &ToolCall{Server: t.Server, Name: t.Name, Annotations: t.Annotations, ArgsHash: t.ArgsHash}
	if t.ArgsHash != "" && ArgsHash(p.Scope) == t.ArgsHash {
		c.Args = p.Scope
	}
	return c
}

// ArgsHash returns the SHA-256, in lower-case hex, of the canonical JSON
// encoding of a tool call's arguments, so that equal arguments hash alike
// however they were decoded or ordered. The encoding is:
//
//   - an object: '{', its members sorted by key (byte-wise, as Go
//     compares strings), each "key":value, separated by ',', then '}';
//     a nil map at the top is the empty object {}, a nil map or slice
//     inside is null (as encoding/json writes them);
//   - an array: '[', its elements in order separated by ',', then ']';
//   - no whitespace anywhere between tokens;
//   - a string or key: as encoding/json's Encoder writes it with HTML
//     escaping off: ", \ and the control characters escaped (\n, \r, \t,
//     \b, \f, otherwise \u00XX), U+2028 and U+2029 as \u2028 and \u2029,
//     each invalid UTF-8 byte as \ufffd, everything else (<, >, &, DEL,
//     non-ASCII) literal;
//   - true, false, null;
//   - a number (float64, json.Number, Go integers): its value as an
//     IEEE-754 double — the value encoding/json decodes it to — written as
//     encoding/json writes a float64 (the ECMAScript form, as in RFC 8785):
//     an integral value below 1e21 without fraction or exponent (1, 1.0,
//     1e0 and json.Number("1.00") are all 1), -0 as 0, other values in
//     the shortest form that reads back to the same double, with an
//     exponent (1e-7, 1e+21) below 1e-6 or from 1e21 on. Integers beyond
//     2^53 are thus identified with their nearest double, as the service
//     treats numbers everywhere else;
//   - any other value: as encoding/json marshals it, read back as above.
//
// Hashing the arguments, encoding them with encoding/json, decoding that and
// hashing again gives the same hash. ArgsHash returns "" when the arguments
// hold a value JSON cannot represent (NaN, an infinity, a json.Number that
// is not a JSON number, a channel, …); requests with such arguments are
// refused.
func ArgsHash(args map[string]any) string {
	b, err := canonicalJSON(args)
	if err != nil {
		return ""
	}
	return hashHex(b)
}

func hashHex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// maxCanonicalDepth bounds nesting (encoding/json's decoder stops at the
// same depth), so a map that contains itself ends in an error, not a
// stack overflow.
const maxCanonicalDepth = 10000

var errNotJSON = errors.New("value has no JSON representation")

// canonicalJSON returns the encoding ArgsHash hashes.
func canonicalJSON(m map[string]any) ([]byte, error) {
	c := &canonical{}
	c.str = json.NewEncoder(&c.buf)
	c.str.SetEscapeHTML(false)
	if m == nil {
		m = map[string]any{}
	}
	if err := c.value(m, 0); err != nil {
		return nil, err
	}
	return c.buf.Bytes(), nil
}

type canonical struct {
	buf bytes.Buffer
	str *json.Encoder // writes into buf
	num []byte
}

func (c *canonical) value(v any, depth int) error {
	if depth > maxCanonicalDepth {
		return errNotJSON
	}
	switch x := v.(type) {
	case nil:
		c.buf.WriteString("null")
	case bool:
		c.buf.WriteString(strconv.FormatBool(x))
	case string:
		c.string(x)
	case float64:
		return c.number(x)
	case json.Number:
		if !validNumber(string(x)) {
			return errNotJSON
		}
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return errNotJSON // beyond the range of a double
		}
		return c.number(f)
	case int:
		return c.number(float64(x))
	case int8:
		return c.number(float64(x))
	case int16:
		return c.number(float64(x))
	case int32:
		return c.number(float64(x))
	case int64:
		return c.number(float64(x))
	case uint:
		return c.number(float64(x))
	case uint8:
		return c.number(float64(x))
	case uint16:
		return c.number(float64(x))
	case uint32:
		return c.number(float64(x))
	case uint64:
		return c.number(float64(x))
	case map[string]any:
		if x == nil {
			c.buf.WriteString("null")
			return nil
		}
		c.buf.WriteByte('{')
		for i, k := range slices.Sorted(maps.Keys(x)) {
			if i > 0 {
				c.buf.WriteByte(',')
			}
			c.string(k)
			c.buf.WriteByte(':')
			if err := c.value(x[k], depth+1); err != nil {
				return err
			}
		}
		c.buf.WriteByte('}')
	case []any:
		if x == nil {
			c.buf.WriteString("null")
			return nil
		}
		c.buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				c.buf.WriteByte(',')
			}
			if err := c.value(e, depth+1); err != nil {
				return err
			}
		}
		c.buf.WriteByte(']')
	default:
		// float32, typed maps and slices, structs, json.RawMessage, …:
		// what encoding/json makes of them, read back as JSON.
		b, err := json.Marshal(x)
		if err != nil {
			return errNotJSON
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var back any
		if err := dec.Decode(&back); err != nil {
			return errNotJSON
		}
		return c.value(back, depth)
	}
	return nil
}

// string writes s as encoding/json's Encoder does with HTML escaping off.
func (c *canonical) string(s string) {
	_ = c.str.Encode(s) // a string always encodes
	c.buf.Truncate(c.buf.Len() - 1)
}

// number writes f as encoding/json writes a float64, with -0 as 0.
func (c *canonical) number(f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return errNotJSON
	}
	if f == 0 {
		f = 0 // -0 is 0
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b := strconv.AppendFloat(c.num[:0], f, format, -1, 64)
	if format == 'e' {
		// 1e-07 → 1e-7, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	c.buf.Write(b)
	c.num = b
	return nil
}

// validNumber reports whether s is a JSON number literal:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func validNumber(s string) bool {
	i := 0
	digits := func() bool {
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case !digits():
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	return i == len(s)
}

// storedTool is what a permission keeps of a validated request's tool call:
// everything but the arguments themselves.
func storedTool(t *ToolCall) *ToolCall {
	if t == nil {
		return nil
	}
	return &ToolCall{Server: t.Server, Name: t.Name, Annotations: t.Annotations, ArgsHash: t.ArgsHash}
}
