package policy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/checker"
	"github.com/google/cel-go/common"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/ext"

	"github.com/agentotp/agentotp"
)

// MaxCost bounds every expression: its worst-case cost estimated at load
// (with inputs at their validated maximum sizes) and its actual cost at
// every evaluation. One unit is roughly one CEL operation.
const MaxCost = 1_000_000

// The object types CEL sees. Fields are typed, so a misspelt field
// (request.actoin) or a type error (request.action + 1) fails at load.
var (
	requestType = types.NewObjectType("agentotp.Request")
	agentType   = types.NewObjectType("agentotp.Agent")
	toolType    = types.NewObjectType("agentotp.Tool")
	localType   = types.NewObjectType("agentotp.Local")
	budgetType  = types.NewOpaqueType("agentotp.Budget")
	jsonMapType = types.NewMapType(types.StringType, types.DynType)
)

// reqObj is `request`: server-derived agent attributes plus the agent's
// asserted action, resource, scope and context.
type reqObj struct {
	action, resource lazyStr
	scope, context   jsonObj
	agent            ref.Val // *objVal[agentObj]
	agentPtr         *agentObj
}

type agentObj struct {
	id, name lazyStr
	metadata jsonObj
}

type toolObj struct {
	server, name lazyStr
	annotations  jsonObj
}

// lazyStr boxes a string field as a CEL value once, at its first use
// (not at every field access).
type lazyStr struct {
	s   string
	val ref.Val
}

func (l *lazyStr) get() ref.Val {
	if l.val == nil {
		l.val = types.String(l.s)
	}
	return l.val
}

// jsonObj is a JSON object field. CEL gets the Go map itself: its field
// selection (request.scope.amount, .?amount, has()) looks keys up in a
// map[string]any directly and converts only the value it reaches, where a
// CEL map would be built first; used as a whole value, the map is
// converted as jsonVal does. A nil map is the empty object.
type jsonObj struct {
	raw map[string]any
}

func (m *jsonObj) get() any {
	if m.raw == nil {
		return emptyMap
	}
	return m.raw
}

// localObj is `local`: now in the configured time zone, computed in Go
// (CEL's getHours(tz) loads the zone at every call).
type localObj struct {
	hour, minute, weekday, day, month, year int64
	date, zone                              string
}

// objVal gives the Go objects above the ref.Val methods CEL needs. It is
// used by pointer, so that handing one to CEL does not allocate.
type objVal[T any] struct {
	v   *T
	typ *types.Type
}

func (o *objVal[T]) ConvertToNative(reflect.Type) (any, error) {
	return nil, fmt.Errorf("%s cannot be converted to a native value", o.typ.TypeName())
}

func (o *objVal[T]) ConvertToType(t ref.Type) ref.Val {
	if t == types.TypeType {
		return o.typ
	}
	return types.NewErr("type conversion error from '%s' to '%s'", o.typ.TypeName(), t.TypeName())
}

func (o *objVal[T]) Equal(other ref.Val) ref.Val {
	x, ok := other.(*objVal[T])
	return types.Bool(ok && x.v == o.v)
}

func (o *objVal[T]) Type() ref.Type { return o.typ }
func (o *objVal[T]) Value() any     { return o.v }

type field struct {
	typ *types.Type
	get func(any) any
}

var objectFields = map[string]map[string]field{
	"agentotp.Request": {
		"action":   {types.StringType, func(o any) any { return o.(*reqObj).action.get() }},
		"resource": {types.StringType, func(o any) any { return o.(*reqObj).resource.get() }},
		"scope":    {jsonMapType, func(o any) any { return o.(*reqObj).scope.get() }},
		"context":  {jsonMapType, func(o any) any { return o.(*reqObj).context.get() }},
		"agent":    {agentType, func(o any) any { return o.(*reqObj).agent }},
	},
	"agentotp.Agent": {
		"id":       {types.StringType, func(o any) any { return o.(*agentObj).id.get() }},
		"name":     {types.StringType, func(o any) any { return o.(*agentObj).name.get() }},
		"metadata": {jsonMapType, func(o any) any { return o.(*agentObj).metadata.get() }},
	},
	"agentotp.Tool": {
		"server":      {types.StringType, func(o any) any { return o.(*toolObj).server.get() }},
		"name":        {types.StringType, func(o any) any { return o.(*toolObj).name.get() }},
		"annotations": {jsonMapType, func(o any) any { return o.(*toolObj).annotations.get() }},
	},
	"agentotp.Local": {
		"hour":    {types.IntType, func(o any) any { return o.(*localObj).hour }},
		"minute":  {types.IntType, func(o any) any { return o.(*localObj).minute }},
		"weekday": {types.IntType, func(o any) any { return o.(*localObj).weekday }},
		"day":     {types.IntType, func(o any) any { return o.(*localObj).day }},
		"month":   {types.IntType, func(o any) any { return o.(*localObj).month }},
		"year":    {types.IntType, func(o any) any { return o.(*localObj).year }},
		"date":    {types.StringType, func(o any) any { return o.(*localObj).date }},
		"zone":    {types.StringType, func(o any) any { return o.(*localObj).zone }},
	},
}

// provider adds the object types above to CEL's default registry.
type provider struct {
	types.Provider
	types.Adapter
}

func (p *provider) FindStructType(name string) (*types.Type, bool) {
	if _, ok := objectFields[name]; ok {
		return types.NewTypeTypeWithParam(types.NewObjectType(name)), true
	}
	return p.Provider.FindStructType(name)
}

func (p *provider) FindStructFieldNames(name string) ([]string, bool) {
	if fs, ok := objectFields[name]; ok {
		names := make([]string, 0, len(fs))
		for n := range fs {
			names = append(names, n)
		}
		return names, true
	}
	return p.Provider.FindStructFieldNames(name)
}

func (p *provider) FindStructFieldType(name, fieldName string) (*types.FieldType, bool) {
	fs, ok := objectFields[name]
	if !ok {
		return p.Provider.FindStructFieldType(name, fieldName)
	}
	f, ok := fs[fieldName]
	if !ok {
		return nil, false
	}
	return &types.FieldType{
		Type:    f.typ,
		IsSet:   func(any) bool { return true },
		GetFrom: func(o any) (any, error) { return f.get(o), nil },
	}, true
}

func (p *provider) NewValue(name string, fields map[string]ref.Val) ref.Val {
	if _, ok := objectFields[name]; ok {
		return types.NewErr("%s values cannot be constructed", name)
	}
	return p.Provider.NewValue(name, fields)
}

func (p *provider) NativeToValue(v any) ref.Val {
	switch x := v.(type) {
	case *reqObj:
		return &objVal[reqObj]{x, requestType}
	case *toolObj:
		return &objVal[toolObj]{x, toolType}
	case *localObj:
		return &objVal[localObj]{x, localType}
	}
	return p.Adapter.NativeToValue(v)
}

func objectTypes() cel.EnvOption {
	return func(env *cel.Env) (*cel.Env, error) {
		p := &provider{env.CELTypeProvider(), env.CELTypeAdapter()}
		env, err := cel.CustomTypeAdapter(p)(env)
		if err != nil {
			return nil, err
		}
		return cel.CustomTypeProvider(p)(env)
	}
}

// getPath walks a JSON object along keys; a missing key or a non-object on
// the way gives optional.none(), as undefined does in v0.1.1.
func getPath(root, keys ref.Val) ref.Val {
	l, ok := keys.(traits.Lister)
	if !ok {
		return types.NewErr("path must be a list")
	}
	cur := root
	n := int(l.Size().(types.Int))
	for i := 0; i < n; i++ {
		m, ok := cur.(traits.Mapper)
		if !ok {
			return types.OptionalNone
		}
		v, found := m.Find(l.Get(types.Int(i)))
		if !found {
			return types.OptionalNone
		}
		cur = v
	}
	return types.OptionalOf(cur)
}

// budgetVal is the hidden `__budget` variable behind approvals() and
// friends: it carries the store, the agent and the time of one evaluation.
type budgetVal struct {
	ctx     context.Context
	counter Counter
	agent   agentotp.AgentID
	now     time.Time
	mu      sync.Mutex
	memo    map[string]int
}

func (b *budgetVal) ConvertToNative(reflect.Type) (any, error) {
	return nil, errors.New("budget is not convertible")
}
func (b *budgetVal) ConvertToType(ref.Type) ref.Val { return types.NewErr("budget is not convertible") }
func (b *budgetVal) Equal(o ref.Val) ref.Val        { return types.Bool(o == b) }
func (b *budgetVal) Type() ref.Type                 { return budgetType }
func (b *budgetVal) Value() any                     { return b }

// Statuses counted by approvals(): granted permissions, spent or not.
var approvedStatuses = []agentotp.Status{agentotp.StatusApproved, agentotp.StatusUsed}

func (b *budgetVal) count(pattern string, window time.Duration, statuses []agentotp.Status) ref.Val {
	if b == nil || b.counter == nil {
		return types.NewErr("budget functions need a permission store, and none is configured")
	}
	if window <= 0 {
		return types.NewErr("budget window must be positive")
	}
	if pattern == "" {
		return types.NewErr("budget action pattern must not be empty")
	}
	key := fmt.Sprint(pattern, "\x00", window, "\x00", statuses)
	b.mu.Lock()
	defer b.mu.Unlock()
	if n, ok := b.memo[key]; ok {
		return types.Int(n)
	}
	n, err := b.counter.CountPermissions(b.ctx, b.agent, pattern, b.now.Add(-window), statuses)
	if err != nil {
		return types.NewErr("budget count failed: %v", err)
	}
	if b.memo == nil {
		b.memo = map[string]int{}
	}
	b.memo[key] = n
	return types.Int(n)
}

func budgetStatuses(v ref.Val) ([]agentotp.Status, error) {
	l, ok := v.(traits.Lister)
	if !ok {
		return nil, errors.New("statuses must be a list of strings")
	}
	n := int(l.Size().(types.Int))
	out := make([]agentotp.Status, 0, n)
	for i := 0; i < n; i++ {
		s, ok := l.Get(types.Int(i)).(types.String)
		if !ok || !agentotp.Status(s).Valid() {
			return nil, fmt.Errorf("unknown permission status %v", l.Get(types.Int(i)))
		}
		out = append(out, agentotp.Status(s))
	}
	return out, nil
}

func budgetFunctions() []cel.EnvOption {
	expand := func(fn string) cel.MacroFactory {
		return func(eh cel.MacroExprFactory, _ ast.Expr, args []ast.Expr) (ast.Expr, *common.Error) {
			return eh.NewCall(fn, append([]ast.Expr{eh.NewIdent("__budget")}, args...)...), nil
		}
	}
	return []cel.EnvOption{
		cel.Variable("__budget", budgetType),
		cel.Macros(
			cel.GlobalMacro("approvals", 2, expand("__approvals")),
			cel.GlobalMacro("requests", 2, expand("__requests")),
			cel.GlobalMacro("permissions", 3, expand("__permissions")),
		),
		cel.Function("__approvals", cel.Overload("__approvals_budget_string_duration",
			[]*cel.Type{budgetType, cel.StringType, cel.DurationType}, cel.IntType,
			cel.FunctionBinding(func(a ...ref.Val) ref.Val {
				return a[0].(*budgetVal).count(string(a[1].(types.String)), a[2].(types.Duration).Duration, approvedStatuses)
			}))),
		cel.Function("__requests", cel.Overload("__requests_budget_string_duration",
			[]*cel.Type{budgetType, cel.StringType, cel.DurationType}, cel.IntType,
			cel.FunctionBinding(func(a ...ref.Val) ref.Val {
				return a[0].(*budgetVal).count(string(a[1].(types.String)), a[2].(types.Duration).Duration, nil)
			}))),
		cel.Function("__permissions", cel.Overload("__permissions_budget_string_duration_list",
			[]*cel.Type{budgetType, cel.StringType, cel.DurationType, cel.ListType(cel.StringType)}, cel.IntType,
			cel.FunctionBinding(func(a ...ref.Val) ref.Val {
				st, err := budgetStatuses(a[3])
				if err != nil {
					return types.NewErr("%v", err)
				}
				if len(st) == 0 {
					return types.NewErr("permissions() needs at least one status")
				}
				return a[0].(*budgetVal).count(string(a[1].(types.String)), a[2].(types.Duration).Duration, st)
			}))),
	}
}

func commonOptions() []cel.EnvOption {
	return append(condFunctions(),
		cel.OptionalTypes(),
		cel.CrossTypeNumericComparisons(true),
		ext.Strings(),
		ext.Bindings(),
		cel.Variable("now", cel.TimestampType),
		cel.Variable("local", localType),
		cel.Function("__get", cel.Overload("__get_map_list",
			[]*cel.Type{jsonMapType, cel.ListType(cel.StringType)}, cel.OptionalType(cel.DynType),
			cel.BinaryBinding(getPath))),
		cel.Function("glob", cel.Overload("glob_string_string",
			[]*cel.Type{cel.StringType, cel.StringType}, cel.BoolType,
			cel.BinaryBinding(func(p, s ref.Val) ref.Val {
				return types.Bool(agentotp.MatchPattern(string(p.(types.String)), string(s.(types.String))))
			}))),
	)
}

var (
	envOnce              sync.Once
	decisionEnv, useEnvV *cel.Env
	envErr               error
)

// envs returns the two CEL environments: one for rules (`conditions`,
// `when`) and one for `useWhen`.
func envs() (*cel.Env, *cel.Env, error) {
	envOnce.Do(func() {
		opts := append(commonOptions(),
			cel.Variable("request", requestType),
			cel.Variable("tool", toolType),
			cel.Variable("args", jsonMapType),
		)
		opts = append(opts, budgetFunctions()...)
		decisionEnv, envErr = cel.NewEnv(append(opts, objectTypes())...)
		if envErr != nil {
			return
		}
		useEnvV, envErr = cel.NewEnv(append(commonOptions(),
			cel.Variable("request", requestType),
			cel.Variable("scope", jsonMapType),
			cel.Variable("details", jsonMapType),
			objectTypes(),
		)...)
	})
	return decisionEnv, useEnvV, envErr
}

// sizeEstimator bounds the size of every input-derived value by what the
// service accepts (agentotp.ValidateObject): objects and lists at most 1024
// entries, strings at most 64 KiB.
type sizeEstimator struct{}

func (sizeEstimator) EstimateSize(n checker.AstNode) *checker.SizeEstimate {
	switch n.Type().Kind() {
	case types.StringKind, types.BytesKind, types.DynKind:
		return &checker.SizeEstimate{Min: 0, Max: agentotp.MaxObjectBytes}
	case types.ListKind, types.MapKind:
		return &checker.SizeEstimate{Min: 0, Max: agentotp.MaxObjectKeys * 4}
	}
	return &checker.SizeEstimate{Min: 0, Max: agentotp.MaxObjectBytes}
}

func (sizeEstimator) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}
