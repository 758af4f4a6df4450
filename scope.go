package agentotp

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
)

// NarrowScope returns base narrowed by limits: a policy's scopeTemplate or an
// approver's scopeModifications. It never widens: for a key present in both,
// numbers take the smaller, lists intersect (keeping base's order), booleans
// AND, objects narrow recursively, and any other value takes the limit's.
// A blocked_<x> list is the exception: it lists what is forbidden, so it
// narrows by growing — the two lists unite (base's entries first); an
// intersection would lift the limit's blocks. Keys only in limits are added
// (a new constraint); keys only in base stay. Neither input is modified.
func NarrowScope(base, limits map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(limits))
	for k, v := range base {
		out[k] = v
	}
	for k, lim := range limits {
		cur, ok := base[k]
		switch {
		case !ok:
			out[k] = lim
		case strings.HasPrefix(k, "blocked_"):
			out[k] = unionBlocked(cur, lim)
		default:
			out[k] = narrowValue(cur, lim)
		}
	}
	return out
}

// unionBlocked joins two blocked_ lists. Anything but two lists keeps the
// limit's value: a blocked_ that is not a list fails every check of the
// details it applies to (see CheckDetails), which is closed, not open.
func unionBlocked(cur, lim any) any {
	c, ok1 := cur.([]any)
	l, ok2 := lim.([]any)
	if !ok1 || !ok2 {
		return lim
	}
	res := append([]any{}, c...)
	for _, e := range l {
		if !containsValue(res, e) {
			res = append(res, e)
		}
	}
	return res
}

func narrowValue(cur, lim any) any {
	if a, ok := toFloat(cur); ok {
		if b, ok := toFloat(lim); ok {
			if b < a {
				return lim
			}
			return cur
		}
		return lim
	}
	switch c := cur.(type) {
	case bool:
		if l, ok := lim.(bool); ok {
			return c && l
		}
	case []any:
		if l, ok := lim.([]any); ok {
			res := []any{}
			for _, e := range c {
				if containsValue(l, e) {
					res = append(res, e)
				}
			}
			return res
		}
	case map[string]any:
		if l, ok := lim.(map[string]any); ok {
			return NarrowScope(c, l)
		}
	}
	return lim
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case float32:
		return float64(n), true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case int32:
		return float64(n), true
	case uint64:
		return float64(n), true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

func containsValue(list []any, v any) bool {
	for _, e := range list {
		if equalValue(e, v) {
			return true
		}
	}
	return false
}

func equalValue(a, b any) bool {
	if x, ok := toFloat(a); ok {
		y, ok := toFloat(b)
		return ok && x == y
	}
	return reflect.DeepEqual(a, b)
}

// CheckDetails enforces a granted scope against the details of one use, so a
// scope is a limit the server holds, not advice to the agent.
// For every key of the scope:
//
//   - a value of its own (any key but the rules below; null excepted) must
//     be in details under the same key, and may only be narrower there: a
//     number no larger, a list a subset, a bool not true where the scope
//     says false, an object checked by these same rules, anything else
//     equal;
//   - "max_<x>": a number; details "<x>" (a number, or a list of non-numbers
//     counted by its length) must not exceed it;
//   - "<x>_pattern": a regular expression; details "<x>" must match it
//     (unanchored, as in v0.1.1 conditions);
//   - "allowed_<x>": a list; details "<x>" (a value or every element of a
//     list) must be in it;
//   - "blocked_<x>": a list; details "<x>" must not be in it.
//
// A rule key sent back in details is checked as a value (echoing a
// requested scope is held to what was granted: details max_emails 50
// against a granted 1 is refused), but need not be sent.
//
// Checks fail closed: a use that leaves out what the scope fixes (a value
// of its own, or the subject "<x>" of a max_<x>, <x>_pattern, allowed_<x>
// or blocked_<x>), gives it the wrong type, or a negative count, is
// refused — keys match exactly, so "N" does not stand for "n". A rule key
// whose granted value has the wrong type (a max_ that is not a number, a
// pattern that does not compile, …) refuses every use: a malformed limit
// never lifts the limit. Details keys the scope does not mention are
// allowed; a policy's useWhen can forbid them.
// It returns a VALIDATION_ERROR naming the first offending key.
func CheckDetails(scope, details map[string]any) error {
	keys := make([]string, 0, len(scope))
	for k := range scope {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sv := scope[k]
		dv, present := details[k]
		if present && !narrowerOrEqual(sv, dv) {
			return scopeViolation(k, "is wider than the granted scope")
		}
		if !present && sv != nil && !isRule(k) {
			// A value the grant fixes (a recipient, a path, an object
			// holding limits) holds the use only if the use says it:
			// leaving it out must not leave it unchecked.
			return scopeViolation(k, "is required: the granted scope sets it")
		}
		switch {
		case strings.HasPrefix(k, "max_"):
			name := strings.TrimPrefix(k, "max_")
			dv, present := details[name]
			if !present {
				return scopeViolation(name, fmt.Sprintf("is required: the granted %s limits it", k))
			}
			lim, ok := toFloat(sv)
			if !ok {
				return scopeViolation(name, fmt.Sprintf("cannot be checked: the granted %s is not a number", k))
			}
			n, ok := toFloat(dv)
			if l, isList := dv.([]any); isList {
				n, ok = float64(len(l)), !containsNumber(l)
			}
			if !ok {
				return scopeViolation(name, fmt.Sprintf("must be a number (or a list of items) to check against %s", k))
			}
			if n < 0 {
				return scopeViolation(name, "must not be negative")
			}
			if n > lim {
				return scopeViolation(name, fmt.Sprintf("exceeds the granted %s", k))
			}
		case strings.HasSuffix(k, "_pattern"):
			name := strings.TrimSuffix(k, "_pattern")
			dv, present := details[name]
			if !present {
				return scopeViolation(name, fmt.Sprintf("is required: the granted %s constrains it", k))
			}
			pat, ok := sv.(string)
			re, err := regexp.Compile(pat)
			if !ok || err != nil {
				return scopeViolation(name, fmt.Sprintf("cannot be checked: the granted %s is not a valid pattern", k))
			}
			if s, ok := dv.(string); !ok || !re.MatchString(s) {
				return scopeViolation(name, fmt.Sprintf("does not match the granted %s", k))
			}
		case strings.HasPrefix(k, "allowed_") || strings.HasPrefix(k, "blocked_"):
			allow := strings.HasPrefix(k, "allowed_")
			name := k[len("allowed_"):]
			dv, present := details[name]
			if !present {
				return scopeViolation(name, fmt.Sprintf("is required: the granted %s constrains it", k))
			}
			list, ok := sv.([]any)
			if !ok {
				return scopeViolation(name, fmt.Sprintf("cannot be checked: the granted %s is not a list", k))
			}
			vals, isList := dv.([]any)
			if !isList {
				vals = []any{dv}
			}
			for _, v := range vals {
				if containsValue(list, v) != allow {
					return scopeViolation(name, fmt.Sprintf("is not permitted by the granted %s", k))
				}
			}
		}
	}
	return nil
}

// isRule reports whether a scope key is a rule on another key of the
// details (max_, _pattern, allowed_, blocked_) rather than a value of its
// own.
func isRule(k string) bool {
	return strings.HasPrefix(k, "max_") || strings.HasSuffix(k, "_pattern") ||
		strings.HasPrefix(k, "allowed_") || strings.HasPrefix(k, "blocked_")
}

func containsNumber(l []any) bool {
	for _, e := range l {
		if _, ok := toFloat(e); ok {
			return true
		}
	}
	return false
}

// CheckNarrowing refuses limits (an approver's scopeModifications) that
// NarrowScope would not apply as a narrowing of base: a value of another
// JSON type (a max_ turned into a string would no longer limit anything),
// or a changed string. NarrowScope clamps numbers, intersects lists, ANDs
// booleans and narrows objects key by key, so any such limit can only
// narrow; a string it simply replaces, and a new address or pattern
// (to_pattern ".*") can widen as easily as narrow. A key base lacks, or
// holds null for, is a new constraint and is allowed.
func CheckNarrowing(field string, base, limits map[string]any) error {
	for k, lim := range limits {
		cur, ok := base[k]
		if !ok || cur == nil {
			continue
		}
		path := field + "." + k
		if jsonKind(cur) != jsonKind(lim) {
			return ValidationError(path, fmt.Sprintf("must be a %s, like the scope it narrows", jsonKind(cur)))
		}
		switch c := cur.(type) {
		case map[string]any:
			if err := CheckNarrowing(path, c, lim.(map[string]any)); err != nil {
				return err
			}
		case string:
			if lim.(string) != c {
				return ValidationError(path, "cannot be changed: replacing a text value (an address, a pattern) could widen it; "+
					"an approval can lower numbers, remove list entries, turn true to false and add keys")
			}
		}
	}
	return nil
}

func jsonKind(v any) string {
	if _, ok := toFloat(v); ok {
		return "number"
	}
	switch v.(type) {
	case string:
		return "string"
	case bool:
		return "boolean"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	case nil:
		return "null"
	}
	return "value"
}

func narrowerOrEqual(granted, used any) bool {
	if g, ok := toFloat(granted); ok {
		u, ok := toFloat(used)
		return ok && u <= g
	}
	switch g := granted.(type) {
	case bool:
		u, ok := used.(bool)
		return ok && (g || !u)
	case []any:
		u, ok := used.([]any)
		if !ok {
			return containsValue(g, used)
		}
		for _, e := range u {
			if !containsValue(g, e) {
				return false
			}
		}
		return true
	case map[string]any:
		u, ok := used.(map[string]any)
		return ok && CheckDetails(g, u) == nil
	}
	return equalValue(granted, used)
}

func scopeViolation(field, problem string) error {
	return &Error{Code: CodeValidation, Message: "actionDetails." + field + " " + problem,
		Details: map[string]string{"actionDetails." + field: problem}}
}
