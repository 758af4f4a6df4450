package agentotp

import (
	"fmt"
	"sort"
	"strings"
)

// CheckScopeEdit refuses a scope an approver typed over the granted one
// unless it only narrows it, naming the first key that does not. Decide
// quietly clamps scopeModifications (NarrowScope keeps the smaller number,
// the common list entries); an editor that shows the whole scope must
// instead refuse what would not take effect, so the person approving knows
// exactly what the agent gets.
//
// Narrowing, key by key of granted: the key stays; a number is no larger; a
// list keeps some of its entries, except a blocked_ list, which stays whole
// (dropping an entry would lift a block, and NarrowScope would not add
// one); true may become false; an object narrows recursively; anything else
// — strings, patterns, null — stays as granted. A key granted lacks is a new
// constraint and is allowed. Once edited passes, NarrowScope(granted,
// edited) equals edited up to the order of list entries.
func CheckScopeEdit(field string, granted, edited map[string]any) error {
	keys := make([]string, 0, len(granted))
	for k := range granted {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		path := field + "." + k
		g := granted[k]
		e, ok := edited[k]
		if !ok {
			return ValidationError(path, "cannot be removed: an approval can only narrow the scope")
		}
		if gk, ek := jsonKind(g), jsonKind(e); gk != ek {
			if gk == "null" {
				return ValidationError(path, "must stay null, as requested")
			}
			return ValidationError(path, fmt.Sprintf("must stay a %s, as requested", gk))
		}
		if err := checkEditValue(path, k, g, e); err != nil {
			return err
		}
	}
	return nil
}

func checkEditValue(path, key string, g, e any) error {
	if gn, ok := toFloat(g); ok {
		en, _ := toFloat(e)
		if en > gn {
			return ValidationError(path, fmt.Sprintf("cannot go above the requested %v: an approval can only lower it", g))
		}
		return nil
	}
	switch gv := g.(type) {
	case bool:
		if e.(bool) && !gv {
			return ValidationError(path, "cannot be turned on: the request has it off")
		}
	case []any:
		ev := e.([]any)
		if strings.HasPrefix(key, "blocked_") {
			if len(ev) != len(gv) || !subset(ev, gv) || !subset(gv, ev) {
				return ValidationError(path, "cannot be changed: dropping an entry would lift a block")
			}
			return nil
		}
		for _, x := range ev {
			if !containsValue(gv, x) {
				return ValidationError(path, fmt.Sprintf("cannot gain the entry %s: an approval can only remove entries", shortJSON(x)))
			}
		}
	case map[string]any:
		return CheckScopeEdit(path, gv, e.(map[string]any))
	default:
		if !equalValue(g, e) {
			return ValidationError(path, "cannot be changed: only numbers can be lowered, list entries removed, true turned to false and keys added")
		}
	}
	return nil
}

func subset(a, b []any) bool {
	for _, x := range a {
		if !containsValue(b, x) {
			return false
		}
	}
	return true
}

// shortJSON renders a value for an error message, capped.
func shortJSON(v any) string {
	s := fmt.Sprintf("%v", v)
	if str, ok := v.(string); ok {
		s = fmt.Sprintf("%q", str)
	}
	if r := []rune(s); len(r) > 60 {
		s = string(r[:57]) + "…"
	}
	return s
}
