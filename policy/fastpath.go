package policy

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
)

// The Go fast path for the v0.1.1 condition operators.
//
// Every rule's conditions also compile to CEL (condCEL), which is checked
// at load and is the reference semantics. Evaluating them through CEL costs
// an interpreter run per rule, though, so Evaluate uses the matchers below
// instead: paths resolved once at load, literals converted to CEL values
// once, and for JSON values the very same cond.* functions the CEL path
// calls (operators.go) on the very same per-decision values. A rule's
// `when` stays CEL and runs only when its conditions hold; the conditions
// never fail, so `conditions && when` is unchanged (CEL's && gives false
// when one side is false, whatever the other side does).
//
// fastpath_test.go checks the two paths agree on the operator table, on
// every testdata policy and on random conditions and inputs.

// rootKind is where a condition path starts.
type rootKind uint8

const (
	rootAction rootKind = iota
	rootResource
	rootAgentID
	rootAgentName
	rootToolServer
	rootToolName
	rootScope
	rootContext
	rootArgs
	rootMetadata
	rootAnnotations
)

// condMatcher is one condition path with its operators, all ANDed.
type condMatcher struct {
	root rootKind
	keys []string // walk of a JSON root
	ops  []opMatcher
}

type opKind uint8

const (
	opEquals opKind = iota
	opNotEquals
	opStartsWith
	opEndsWith
	opContains
	opMatches
	opIn
	opNotIn
	opExists
	opJSON // JSON roots: fn(v, found, lit)
)

type opMatcher struct {
	kind opKind
	str  string         // string operand (string roots)
	strs []string       // the string elements of an `in` list (string roots)
	re   *regexp.Regexp // matches
	yes  bool           // exists operand
	fn   condFn         // JSON roots
	lit  ref.Val        // JSON roots: the operand as CEL sees it
}

// goRoot maps a resolved path to its root kind.
func goRoot(path string) (rootKind, []string, error) {
	root, keys, err := resolvePath(path)
	if err != nil {
		return 0, nil, err
	}
	switch root.expr {
	case "request.action":
		return rootAction, nil, nil
	case "request.resource":
		return rootResource, nil, nil
	case "request.agent.id":
		return rootAgentID, nil, nil
	case "request.agent.name":
		return rootAgentName, nil, nil
	case "tool.server":
		return rootToolServer, nil, nil
	case "tool.name":
		return rootToolName, nil, nil
	case "request.scope":
		return rootScope, keys, nil
	case "request.context":
		return rootContext, keys, nil
	case "args":
		return rootArgs, keys, nil
	case "request.agent.metadata":
		return rootMetadata, keys, nil
	case "tool.annotations":
		return rootAnnotations, keys, nil
	}
	return 0, nil, fmt.Errorf("condition path %q has no fast path", path)
}

func (k rootKind) isString() bool { return k <= rootToolName }

// hasPresence reports whether an empty string means "undefined" for a
// string root (as resolvePath's presence expression says).
func (k rootKind) hasPresence() bool {
	switch k {
	case rootResource, rootAgentName, rootToolServer, rootToolName:
		return true
	}
	return false
}

// literalVal converts an operand to the CEL value its literal (celLiteral)
// evaluates to.
func literalVal(v any) (ref.Val, error) {
	switch x := v.(type) {
	case nil:
		return types.NullValue, nil
	case bool:
		return types.Bool(x), nil
	case int:
		return types.Int(x), nil
	case int64:
		return types.Int(x), nil
	case float64:
		return types.Double(x), nil
	case string:
		return types.String(x), nil
	case []any:
		out := make([]ref.Val, len(x))
		for i, e := range x {
			ev, err := literalVal(e)
			if err != nil {
				return nil, err
			}
			out[i] = ev
		}
		return types.NewRefValList(types.DefaultTypeAdapter, out), nil
	case map[string]any:
		out := make(map[ref.Val]ref.Val, len(x))
		for k, e := range x {
			ev, err := literalVal(e)
			if err != nil {
				return nil, err
			}
			out[types.String(k)] = ev
		}
		return types.NewRefValMap(types.DefaultTypeAdapter, out), nil
	}
	return nil, fmt.Errorf("unsupported value %T", v)
}

// compileMatcher builds the Go matcher of a condition condCEL accepted.
func compileMatcher(c condSpec) (*condMatcher, error) {
	root, keys, err := goRoot(c.path)
	if err != nil {
		return nil, err
	}
	m := &condMatcher{root: root}
	m.keys = keys
	for _, o := range c.ops {
		var om opMatcher
		if !root.isString() {
			fn := o.op
			if fn == "in" {
				fn = "oneOf"
			}
			om.kind, om.fn = opJSON, condFns[fn]
			if om.fn == nil {
				return nil, fmt.Errorf("unknown operator %q", o.op)
			}
			if o.op == "matches" {
				// condFns' matches with the regexp looked up once, here.
				str, _ := o.value.(string)
				re, err := matchRegexp(str)
				if err != nil {
					return nil, err
				}
				om.fn = func(v ref.Val, found bool, _ ref.Val) bool {
					s, ok := v.(types.String)
					return found && ok && re.MatchString(string(s))
				}
			}
			if om.lit, err = literalVal(o.value); err != nil {
				return nil, err
			}
			m.ops = append(m.ops, om)
			continue
		}
		switch o.op {
		case "equals", "notEquals", "startsWith", "endsWith", "contains", "matches":
			s, ok := o.value.(string)
			if !ok {
				return nil, fmt.Errorf("%s needs a string", o.op)
			}
			om.str = s
			om.kind = map[string]opKind{"equals": opEquals, "notEquals": opNotEquals, "startsWith": opStartsWith,
				"endsWith": opEndsWith, "contains": opContains, "matches": opMatches}[o.op]
			if o.op == "matches" {
				if om.re, err = matchRegexp(s); err != nil {
					return nil, err
				}
			}
		case "in", "notIn":
			l, ok := o.value.([]any)
			if !ok {
				return nil, fmt.Errorf("%s needs a list", o.op)
			}
			// A string equals only a string (heterogeneous equality).
			for _, e := range l {
				if s, ok := e.(string); ok {
					om.strs = append(om.strs, s)
				}
			}
			om.kind = opIn
			if o.op == "notIn" {
				om.kind = opNotIn
			}
		case "exists":
			b, ok := o.value.(bool)
			if !ok {
				return nil, fmt.Errorf("exists needs a bool")
			}
			om.kind, om.yes = opExists, b
		default:
			return nil, fmt.Errorf("unknown operator %q", o.op)
		}
		m.ops = append(m.ops, om)
	}
	return m, nil
}

// match reports whether every operator holds for the request.
func (m *condMatcher) match(a *activation) bool {
	if m.root.isString() {
		s := a.stringRoot(m.root)
		defined := !m.root.hasPresence() || s != ""
		for i := range m.ops {
			if !m.ops[i].matchString(s, defined) {
				return false
			}
		}
		return true
	}
	v, found := lookupKeys(a.jsonRoot(m.root), m.keys)
	for i := range m.ops {
		o := &m.ops[i]
		if !o.fn(v, found, o.lit) {
			return false
		}
	}
	return true
}

func (o *opMatcher) matchString(s string, defined bool) bool {
	switch o.kind {
	case opEquals:
		return defined && s == o.str
	case opNotEquals:
		return !defined || s != o.str
	case opStartsWith:
		return defined && strings.HasPrefix(s, o.str)
	case opEndsWith:
		return defined && strings.HasSuffix(s, o.str)
	case opContains:
		return defined && strings.Contains(s, o.str)
	case opMatches:
		return defined && o.re.MatchString(s)
	case opIn, opNotIn:
		in := false
		if defined {
			for _, e := range o.strs {
				if e == s {
					in = true
					break
				}
			}
		}
		return in == (o.kind == opIn)
	case opExists:
		return defined == o.yes
	}
	return false
}

// matchRegexp compiles a `matches` pattern for match/no-match tests only.
// A leading `.*` is dropped: it can match the empty string, so an
// unanchored search for `.*X` succeeds exactly when one for `X` does, and
// without it the regexp can use X's literal prefix instead of backtracking
// from every position (the `'.*@mycompany\.com$'` form of the v0.1.1
// examples). The shorter pattern is used only if it parses back to the
// same syntax tree.
func matchRegexp(p string) (*regexp.Regexp, error) {
	re, err := cachedRegexp(p)
	if err != nil {
		return nil, err
	}
	tree, err := syntax.Parse(p, syntax.Perl)
	if err != nil {
		return re, nil
	}
	changed := false
	for tree.Op == syntax.OpConcat && len(tree.Sub) > 1 && isAnyStar(tree.Sub[0]) {
		tree.Sub = tree.Sub[1:]
		changed = true
		if len(tree.Sub) == 1 {
			tree = tree.Sub[0]
		}
	}
	if !changed {
		return re, nil
	}
	src := tree.String()
	back, err := syntax.Parse(src, syntax.Perl)
	if err != nil || !back.Equal(tree) {
		return re, nil
	}
	short, err := regexp.Compile(src)
	if err != nil {
		return re, nil
	}
	return short, nil
}

func isAnyStar(r *syntax.Regexp) bool {
	return r.Op == syntax.OpStar && len(r.Sub) == 1 && (r.Sub[0].Op == syntax.OpAnyCharNotNL || r.Sub[0].Op == syntax.OpAnyChar)
}

// lookupKeys is lookup (operators.go) on the Go values: it walks
// map[string]any directly and converts only the value it reaches. Any
// other value on the way is converted to CEL and walked as lookup does.
func lookupKeys(root any, keys []string) (ref.Val, bool) {
	cur := root
	for _, k := range keys {
		if m, ok := cur.(map[string]any); ok {
			v, found := m[k]
			if !found {
				return nil, false
			}
			cur = v
			continue
		}
		m, ok := types.DefaultTypeAdapter.NativeToValue(cur).(traits.Mapper)
		if !ok {
			return nil, false
		}
		v, found := m.Find(types.String(k))
		if !found {
			return nil, false
		}
		cur = v
	}
	return types.DefaultTypeAdapter.NativeToValue(cur), true
}

// stringRoot is the value of a string root for this request.
func (a *activation) stringRoot(k rootKind) string {
	in := a.in
	switch k {
	case rootAction:
		return in.Action
	case rootResource:
		return in.Resource
	case rootAgentID:
		if in.Agent != nil {
			return string(in.Agent.ID)
		}
	case rootAgentName:
		if in.Agent != nil {
			return in.Agent.Name
		}
	case rootToolServer:
		if in.Tool != nil {
			return in.Tool.Server
		}
	case rootToolName:
		if in.Tool != nil {
			return in.Tool.Name
		}
	}
	return ""
}

// jsonRoot is a JSON root as the CEL path sees it (see jsonObj).
func (a *activation) jsonRoot(k rootKind) any {
	switch k {
	case rootScope:
		return a.request().scope.get()
	case rootContext:
		return a.request().context.get()
	case rootMetadata:
		return a.request().agentObj().metadata.get()
	case rootArgs:
		v, _ := a.ResolveName("args")
		return v
	case rootAnnotations:
		a.ResolveName("tool")
		return a.tool.annotations.get()
	}
	return emptyMap
}
