package policy

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/google/cel-go/cel"
	"gopkg.in/yaml.v3"

	"github.com/agentotp/agentotp"
)

// pathRoot describes how a condition path's first segments map to CEL.
type pathRoot struct {
	expr     string // CEL for the value (string roots) or the object to walk
	str      bool   // a string field: value is expr itself
	presence string // CEL that is true when the value is defined ("" = always)
	walk     bool   // expr is a map(string, dyn) walked by the remaining keys
}

// resolvePath maps a v0.1.1 condition path to CEL. Roots as in v0.1.1:
// action, resource, agentId, scope.*, context.*; plus agent.{id,name,
// metadata.*}, tool.{server,name,annotations.*} and args.* for gateway calls.
func resolvePath(path string) (pathRoot, []string, error) {
	segs := strings.Split(path, ".")
	for _, s := range segs {
		if s == "" {
			return pathRoot{}, nil, fmt.Errorf("condition path %q has an empty segment", path)
		}
	}
	one := func(r pathRoot) (pathRoot, []string, error) {
		if len(segs) != 1 {
			return pathRoot{}, nil, fmt.Errorf("condition path %q: %s is a string and has no fields", path, segs[0])
		}
		return r, nil, nil
	}
	switch segs[0] {
	case "action":
		return one(pathRoot{expr: "request.action", str: true})
	case "resource":
		return one(pathRoot{expr: "request.resource", str: true, presence: `request.resource != ""`})
	case "agentId":
		return one(pathRoot{expr: "request.agent.id", str: true})
	case "scope", "context":
		return pathRoot{expr: "request." + segs[0], walk: true}, segs[1:], nil
	case "args":
		return pathRoot{expr: "args", walk: true}, segs[1:], nil
	case "agent", "tool":
		if len(segs) < 2 {
			break
		}
		switch segs[0] + "." + segs[1] {
		case "agent.id":
			segs = segs[1:]
			return one(pathRoot{expr: "request.agent.id", str: true})
		case "agent.name":
			segs = segs[1:]
			return one(pathRoot{expr: "request.agent.name", str: true, presence: `request.agent.name != ""`})
		case "tool.server", "tool.name":
			expr := "tool." + segs[1]
			segs = segs[1:]
			return one(pathRoot{expr: expr, str: true, presence: expr + ` != ""`})
		case "agent.metadata":
			return pathRoot{expr: "request.agent.metadata", walk: true}, segs[2:], nil
		case "tool.annotations":
			return pathRoot{expr: "tool.annotations", walk: true}, segs[2:], nil
		}
	}
	return pathRoot{}, nil, fmt.Errorf("unknown condition path %q: it must start with action, resource, agentId, scope, context, agent.{id,name,metadata}, tool.{server,name,annotations} or args", path)
}

// celLiteral renders a JSON-like value as a CEL literal.
func celLiteral(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "null", nil
	case bool:
		return strconv.FormatBool(x), nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return "", fmt.Errorf("%v is not a finite number", x)
		}
		s := strconv.FormatFloat(x, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eE") {
			s += ".0"
		}
		return s, nil
	case string:
		return strconv.Quote(x), nil
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			s, err := celLiteral(e)
			if err != nil {
				return "", err
			}
			parts[i] = s
		}
		return "[" + strings.Join(parts, ", ") + "]", nil
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			s, err := celLiteral(x[k])
			if err != nil {
				return "", err
			}
			parts[i] = strconv.Quote(k) + ": " + s
		}
		return "{" + strings.Join(parts, ", ") + "}", nil
	}
	return "", fmt.Errorf("unsupported value %T", v)
}

func isNumber(v any) bool {
	switch v.(type) {
	case int, int64, float64:
		return true
	}
	return false
}

// condCEL compiles one condition path with its operators to CEL with the
// exact v0.1.1 semantics (as in Agent OTP v0.1.1):
//
//   - equals: strict (no coercion: "100" != 100; 100 == 100.0 as in JS);
//     a missing value never equals. notEquals passes on a missing value.
//   - lessThan & co: only numbers compare; anything else fails.
//   - startsWith, endsWith, contains, matches: only strings; matches is an
//     unanchored RE2 search.
//   - in: a missing value fails; notIn: a missing value passes.
//   - exists: (value defined and not null) == the operand.
func condCEL(c condSpec) (string, error) {
	root, keys, err := resolvePath(c.path)
	if err != nil {
		return "", err
	}
	ks := make([]any, len(keys))
	for i, k := range keys {
		ks[i] = k
	}
	keyList, _ := celLiteral(ks)
	val, has := root.expr, root.presence
	guard := func(e string) string {
		if has == "" {
			return e
		}
		return "(" + has + " && " + e + ")"
	}
	var parts []string
	for _, o := range c.ops {
		lit, err := celLiteral(o.value)
		if err != nil {
			return "", opErr(c, o, err.Error())
		}
		switch o.op {
		case "equals", "notEquals":
			if _, ok := o.value.(string); root.str && !ok {
				return "", opErr(c, o, fmt.Sprintf("%s is a string, so comparing it with %s never matches", c.path, lit))
			}
		case "lessThan", "greaterThan", "lessThanOrEqual", "greaterThanOrEqual":
			if !isNumber(o.value) {
				return "", opErr(c, o, "needs a number")
			}
			if root.str {
				return "", opErr(c, o, fmt.Sprintf("%s is a string, so a numeric comparison never matches", c.path))
			}
		case "startsWith", "endsWith", "contains", "matches":
			str, ok := o.value.(string)
			if !ok {
				return "", opErr(c, o, "needs a string")
			}
			if o.op == "matches" {
				if _, err := cachedRegexp(str); err != nil {
					return "", opErr(c, o, "invalid regular expression (RE2 syntax): "+strings.TrimPrefix(err.Error(), "error parsing regexp: "))
				}
			}
		case "in", "notIn":
			if _, ok := o.value.([]any); !ok {
				return "", opErr(c, o, "needs a list")
			}
		case "exists":
			if _, ok := o.value.(bool); !ok {
				return "", opErr(c, o, "needs true or false")
			}
		default:
			return "", opErr(c, o, "unknown operator")
		}
		if !root.str {
			// JSON values: the cond.* functions implement the v0.1.1
			// semantics in Go (see operators.go).
			fn := o.op
			if fn == "in" {
				fn = "oneOf" // `in` is a CEL keyword
			}
			parts = append(parts, fmt.Sprintf("cond.%s(%s, %s, %s)", fn, root.expr, keyList, lit))
			continue
		}
		var e string
		switch o.op {
		case "equals":
			e = guard(val + " == " + lit)
		case "notEquals":
			e = "!" + guard(val+" == "+lit)
			if has == "" {
				e = val + " != " + lit
			}
		case "startsWith", "endsWith", "contains", "matches":
			e = guard(val + "." + o.op + "(" + lit + ")")
		case "in":
			e = guard(val + " in " + lit)
		case "notIn":
			e = "!(" + guard(val+" in "+lit) + ")"
		case "exists":
			e = "true"
			if has != "" {
				e = has
			}
			if !o.value.(bool) {
				e = "!(" + e + ")"
			}
		}
		parts = append(parts, e)
	}
	body := strings.Join(parts, " && ")
	if len(parts) > 1 {
		body = "(" + body + ")"
	}
	return body, nil
}

type condError struct {
	c   condSpec
	o   opSpec
	msg string
}

func (e *condError) Error() string { return e.msg }

func opErr(c condSpec, o opSpec, msg string) error {
	return &condError{c: c, o: o, msg: fmt.Sprintf("condition %q %s: %s", c.path, o.op, msg)}
}

// filePos maps a CEL (line, column) inside an expression written at p to
// a file position.
func filePos(p position, line, col int) (int, int) {
	if p.line == 0 {
		return 0, 0
	}
	switch {
	case p.style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0:
		return p.line + line, p.indent + col + 1
	case line <= 1:
		off := 0
		if p.style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			off = 1
		}
		return p.line, p.col + off + col
	default:
		return p.line + line - 1, col + 1
	}
}

// compileExpr compiles a `when` or `useWhen` expression: type-checked,
// boolean, within MaxCost, with regex literals compiled.
func compileExpr(env *cel.Env, src string) (*cel.Ast, []exprIssue) {
	a, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		var out []exprIssue
		for _, e := range iss.Errors() {
			loc := e.Location
			out = append(out, exprIssue{line: loc.Line(), col: loc.Column(), msg: e.Message})
		}
		return nil, out
	}
	if !a.OutputType().IsExactType(cel.BoolType) {
		return nil, []exprIssue{{msg: fmt.Sprintf("expression must be a bool, but it is %s", a.OutputType())}}
	}
	if err := checkCost(env, a); err != nil {
		return nil, []exprIssue{{msg: err.Error()}}
	}
	return a, nil
}

type exprIssue struct {
	line, col int
	msg       string
}

func checkCost(env *cel.Env, a *cel.Ast) error {
	est, err := env.EstimateCost(a, sizeEstimator{})
	if err != nil {
		return fmt.Errorf("cannot estimate cost: %v", err)
	}
	if est.Max > MaxCost {
		return fmt.Errorf("worst-case cost %d exceeds the limit %d (bound comprehensions and string sizes)", est.Max, MaxCost)
	}
	return nil
}

// runtimeCostLimit is MaxCost; tests lower it to reach the runtime check.
var runtimeCostLimit uint64 = MaxCost

// trackedCost is the estimated worst case above which a program also
// tracks its actual cost at run time. Below it the estimate (computed with
// every input at its maximum accepted size) already bounds the work, and
// tracking would cost more than the expression itself (about 2x).
var trackedCost uint64 = 10_000

func program(env *cel.Env, a *cel.Ast) (cel.Program, error) {
	return programCost(env, a, a)
}

// programCost builds the program of a; whether it tracks its cost at run
// time depends on the estimate of costAst (a rule's when: with its
// conditions).
func programCost(env *cel.Env, a, costAst *cel.Ast) (cel.Program, error) {
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
	est, err := env.EstimateCost(costAst, sizeEstimator{})
	if err != nil || est.Max > trackedCost || runtimeCostLimit < trackedCost {
		opts = append(opts, cel.CostLimit(runtimeCostLimit))
	}
	return env.Program(a, opts...)
}

// actionKey is how the index finds a rule: exact actions, one prefix, or
// any action.
type actionKey struct {
	exact  []string
	prefix string
	any    bool
}

// indexKey derives the index entry from the rule's action condition.
func indexKey(conds []condSpec) actionKey {
	for _, c := range conds {
		if c.path != "action" {
			continue
		}
		var k actionKey
		for _, o := range c.ops {
			switch o.op {
			case "equals":
				if s, ok := o.value.(string); ok {
					return actionKey{exact: []string{s}}
				}
			case "in":
				var ex []string
				all := true
				for _, e := range o.value.([]any) {
					s, ok := e.(string)
					if !ok {
						all = false
						continue
					}
					ex = append(ex, s)
				}
				_ = all
				return actionKey{exact: ex}
			case "startsWith":
				if s, ok := o.value.(string); ok && len(s) > len(k.prefix) {
					k.prefix = s
				}
			}
		}
		if k.prefix != "" {
			return k
		}
	}
	return actionKey{any: true}
}

// compileRule turns a spec into a rule; errors carry file positions.
func compileRule(s *ruleSpec) (*rule, ErrorList) {
	env, _, err := envs()
	if err != nil {
		return nil, ErrorList{{File: s.file, Rule: s.name, Msg: "CEL environment: " + err.Error()}}
	}
	var errs ErrorList
	at := func(p position, format string, args ...any) {
		errs = append(errs, &Error{File: s.file, Line: p.line, Column: p.col, Rule: s.name, Msg: fmt.Sprintf(format, args...)})
	}
	if s.name == "" {
		at(s.pos, "rule has no name")
	} else if len(s.name) > agentotp.MaxNameLen {
		at(s.fieldPos["name"], "name is longer than %d bytes", agentotp.MaxNameLen)
	}
	if s.effect != agentotp.EffectRequireApproval {
		if len(s.approvers) > 0 {
			at(s.fieldPos["approvers"], "approvers apply only to require_approval rules")
		}
		if s.quorum != 0 {
			at(s.fieldPos["quorum"], "quorum applies only to require_approval rules")
		}
	}
	if s.effect == agentotp.EffectDeny {
		for _, f := range []string{"scopeTemplate", "token", "useWhen"} {
			if p, ok := s.fieldPos[f]; ok {
				at(p, "%s has no effect on a deny rule", f)
			}
		}
	}
	if s.scopeTemplate != nil {
		if err := agentotp.ValidateObject("scopeTemplate", s.scopeTemplate); err != nil {
			at(s.fieldPos["scopeTemplate"], "%v", err)
		}
	}

	r := &rule{
		name: s.name, description: s.description, priority: s.priority, agent: s.agent,
		effect: s.effect, scopeTemplate: s.scopeTemplate, approvers: s.approvers, quorum: s.quorum,
		ttl: s.ttl, uses: s.uses, useWhen: s.useWhen, file: s.file, policyID: s.policyID,
		line: s.pos.line, key: indexKey(s.conds),
	}
	var condParts []string
	for _, c := range s.conds {
		e, err := condCEL(c)
		if err != nil {
			p := c.pos
			if ce, ok := err.(*condError); ok {
				p = ce.o.pos
			}
			at(p, "%v", err)
			continue
		}
		condParts = append(condParts, e)
		m, err := compileMatcher(c)
		if err != nil {
			at(c.pos, "internal error compiling condition %q: %v", c.path, err)
			continue
		}
		r.conds = append(r.conds, m)
	}
	r.conditionsCEL = strings.Join(condParts, " && ")

	var whenAst *cel.Ast
	if s.when != "" {
		a, iss := compileExpr(env, s.when)
		for _, is := range iss {
			l, c := filePos(s.whenPos, is.line, is.col)
			errs = append(errs, &Error{File: s.file, Line: l, Column: c, Rule: s.name, Msg: "when: " + is.msg})
		}
		whenAst = a
	}
	if s.useWhen != "" {
		_, useEnv, _ := envs()
		a, iss := compileExpr(useEnv, s.useWhen)
		for _, is := range iss {
			l, c := filePos(s.useWhenPos, is.line, is.col)
			errs = append(errs, &Error{File: s.file, Line: l, Column: c, Rule: s.name, Msg: "useWhen: " + is.msg})
		}
		if a != nil {
			if _, err := program(useEnv, a); err != nil {
				at(s.useWhenPos, "useWhen: %v", err)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}

	costAst := whenAst
	if r.conditionsCEL != "" {
		// The conditions run in Go (fastpath.go); their CEL form is still
		// compiled and cost-checked with the `when`, as one expression.
		src := r.conditionsCEL
		if s.when != "" {
			src += " && (\n" + s.when + "\n)"
		}
		a, iss := env.Compile(src)
		if iss != nil && iss.Err() != nil {
			at(s.pos, "internal error compiling conditions: %v", iss.Err())
			return nil, errs
		}
		if err := checkCost(env, a); err != nil {
			at(s.pos, "%v", err)
			return nil, errs
		}
		costAst = a
	}
	if whenAst == nil {
		return r, nil // conditions only, or matches every request for its agent
	}
	prg, err := programCost(env, whenAst, costAst)
	if err != nil {
		p := s.whenPos
		if p.line == 0 {
			p = s.pos
		}
		at(p, "%v", err)
		return nil, errs
	}
	r.prg = prg
	return r, nil
}

// specFromPolicy converts an API-managed policy to a spec. Conditions use
// the same operators as files; errors name the field.
func specFromPolicy(p *agentotp.Policy) (*ruleSpec, ErrorList) {
	s := &ruleSpec{
		file: "api:" + string(p.ID), policyID: p.ID, name: p.Name, description: p.Description,
		priority: p.Priority, agent: string(p.AgentID), effect: p.Effect, hasEffect: true,
		when: p.When, scopeTemplate: p.ScopeTemplate, approvers: p.Approvers, quorum: p.Quorum,
		ttl: p.TokenTTL, uses: p.TokenUses, useWhen: p.UseWhen, fieldPos: map[string]position{},
	}
	if len(p.Approvers) > 0 {
		s.fieldPos["approvers"] = position{}
	}
	if p.ScopeTemplate != nil {
		s.fieldPos["scopeTemplate"] = position{}
	}
	if p.TokenTTL != 0 || p.TokenUses != 0 {
		s.fieldPos["token"] = position{}
	}
	if p.UseWhen != "" {
		s.fieldPos["useWhen"] = position{}
	}
	var errs ErrorList
	paths := make([]string, 0, len(p.Conditions))
	for k := range p.Conditions {
		paths = append(paths, k)
	}
	sort.Strings(paths)
	for _, path := range paths {
		ops, ok := p.Conditions[path].(map[string]any)
		if !ok {
			errs = append(errs, &Error{File: s.file, Rule: s.name, Msg: fmt.Sprintf("condition %q must be an object of operators", path)})
			continue
		}
		if len(ops) == 0 {
			errs = append(errs, &Error{File: s.file, Rule: s.name, Msg: fmt.Sprintf("condition %q has no operator (it would match everything)", path)})
			continue
		}
		c := condSpec{path: path}
		names := make([]string, 0, len(ops))
		for k := range ops {
			names = append(names, k)
		}
		sort.Strings(names)
		seen := map[string]bool{}
		for _, name := range names {
			canon, ok := operators[name]
			if !ok {
				errs = append(errs, &Error{File: s.file, Rule: s.name, Msg: fmt.Sprintf("condition %q: unknown operator %q", path, name)})
				continue
			}
			if seen[canon] {
				errs = append(errs, &Error{File: s.file, Rule: s.name, Msg: fmt.Sprintf("condition %q: operator %q given twice", path, canon)})
				continue
			}
			seen[canon] = true
			c.ops = append(c.ops, opSpec{op: canon, value: normalizeJSON(ops[name])})
		}
		s.conds = append(s.conds, c)
	}
	return s, errs
}

// normalizeJSON turns float64 integers from JSON into int64 so literals
// render as CEL ints (equality across int and double holds either way).
func normalizeJSON(v any) any {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int64(x)
		}
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalizeJSON(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = normalizeJSON(e)
		}
		return out
	}
	return v
}
