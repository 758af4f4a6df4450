package policy

import (
	"regexp"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
)

// The v0.1.1 condition operators on JSON values (scope, context, agent
// metadata, tool annotations, args), exactly as Agent OTP v0.1.1 defines them:
//
//	equals           value defined and strictly equal (no coercion: "100" != 100;
//	                 100 == 100.0 as in JS, where both are numbers)
//	notEquals        not equals (so a missing value passes)
//	lessThan & co.   value is a number and compares
//	startsWith, endsWith, contains
//	                 value is a string (contains is a substring test)
//	matches          value is a string and the RE2 pattern matches somewhere
//	                 in it (unanchored)
//	in               value defined and equal to an element
//	notIn            not in (so a missing value passes)
//	exists           (value defined and not null) == operand
//
// A path walks objects key by key; a missing key or a non-object on the
// way is undefined. Each is a CEL function cond.<op>(object, path, operand)
// (`in` is a CEL keyword, so its function is cond.oneOf).

var regexCache sync.Map // pattern -> *regexp.Regexp

func cachedRegexp(p string) (*regexp.Regexp, error) {
	if re, ok := regexCache.Load(p); ok {
		return re.(*regexp.Regexp), nil
	}
	re, err := regexp.Compile(p)
	if err != nil {
		return nil, err
	}
	regexCache.Store(p, re)
	return re, nil
}

func lookup(root, keys ref.Val) (ref.Val, bool) {
	l, ok := keys.(traits.Lister)
	if !ok {
		return nil, false
	}
	cur := root
	n := int(l.Size().(types.Int))
	for i := 0; i < n; i++ {
		m, ok := cur.(traits.Mapper)
		if !ok {
			return nil, false
		}
		v, found := m.Find(l.Get(types.Int(i)))
		if !found {
			return nil, false
		}
		cur = v
	}
	return cur, true
}

func number(v ref.Val) (float64, bool) {
	switch x := v.(type) {
	case types.Int:
		return float64(x), true
	case types.Uint:
		return float64(x), true
	case types.Double:
		return float64(x), true
	}
	return 0, false
}

func condEquals(v, lit ref.Val) bool { return v.Equal(lit) == types.True }

func condIn(v, lit ref.Val) bool {
	l := lit.(traits.Lister)
	n := int(l.Size().(types.Int))
	for i := 0; i < n; i++ {
		if v.Equal(l.Get(types.Int(i))) == types.True {
			return true
		}
	}
	return false
}

type condFn func(v ref.Val, found bool, lit ref.Val) bool

func numCmp(cmp func(a, b float64) bool) condFn {
	return func(v ref.Val, found bool, lit ref.Val) bool {
		if !found {
			return false
		}
		a, ok := number(v)
		b, ok2 := number(lit)
		return ok && ok2 && cmp(a, b)
	}
}

func strOp(op func(s, lit string) bool) condFn {
	return func(v ref.Val, found bool, lit ref.Val) bool {
		if !found {
			return false
		}
		s, ok := v.(types.String)
		l, ok2 := lit.(types.String)
		return ok && ok2 && op(string(s), string(l))
	}
}

var condFns = map[string]condFn{
	"equals":             func(v ref.Val, found bool, lit ref.Val) bool { return found && condEquals(v, lit) },
	"notEquals":          func(v ref.Val, found bool, lit ref.Val) bool { return !found || !condEquals(v, lit) },
	"lessThan":           numCmp(func(a, b float64) bool { return a < b }),
	"greaterThan":        numCmp(func(a, b float64) bool { return a > b }),
	"lessThanOrEqual":    numCmp(func(a, b float64) bool { return a <= b }),
	"greaterThanOrEqual": numCmp(func(a, b float64) bool { return a >= b }),
	"startsWith":         strOp(func(s, l string) bool { return len(s) >= len(l) && s[:len(l)] == l }),
	"endsWith":           strOp(func(s, l string) bool { return len(s) >= len(l) && s[len(s)-len(l):] == l }),
	"contains":           strOp(containsString),
	"matches": strOp(func(s, l string) bool {
		re, err := cachedRegexp(l)
		return err == nil && re.MatchString(s)
	}),
	"oneOf": func(v ref.Val, found bool, lit ref.Val) bool { return found && condIn(v, lit) },
	"notIn": func(v ref.Val, found bool, lit ref.Val) bool { return !found || !condIn(v, lit) },
	"exists": func(v ref.Val, found bool, lit ref.Val) bool {
		defined := found && v != types.NullValue
		return defined == (lit == types.True)
	},
}

func containsString(s, sub string) bool {
	return len(sub) == 0 || indexString(s, sub) >= 0
}

func condFunctions() []cel.EnvOption {
	var opts []cel.EnvOption
	for name, fn := range condFns {
		fn := fn
		opts = append(opts, cel.Function("cond."+name, cel.Overload("cond_"+name+"_map_list_dyn",
			[]*cel.Type{cel.DynType, cel.DynType, cel.DynType}, cel.BoolType,
			// dyn parameters: a map(string, dyn) parameter would make the
			// runtime guard walk the whole map at every call.
			cel.FunctionBinding(func(a ...ref.Val) ref.Val {
				v, found := lookup(a[0], a[1])
				return types.Bool(fn(v, found, a[2]))
			}))))
	}
	return opts
}

func indexString(s, sub string) int { return strings.Index(s, sub) }
