package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/agentotp/agentotp"
)

// checkKeys walks a JSON document before it is decoded into a value of type
// t and rejects what encoding/json would silently accept: object keys that
// match a field only case-insensitively ({"Approved":true} would set
// "approved"), and duplicate keys (the last one would win). Struct fields
// are matched exactly against their json tags; maps accept any key.
func checkKeys(body []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	return walkValue(dec, t, "", 0)
}

// maxJSONDepth bounds nesting before anything recurses over it: a 1 MiB body
// of '[' would otherwise cost a million stack frames. Domain objects allow
// 16 levels inside a field; this leaves room for the envelope around them.
const maxJSONDepth = 32

func walkValue(dec *json.Decoder, t reflect.Type, path string, depth int) error {
	if depth > maxJSONDepth {
		if path == "" {
			return agentotp.Errorf(agentotp.CodeValidation, "request body is nested more than %d levels deep", maxJSONDepth)
		}
		return agentotp.ValidationError(path, fmt.Sprintf("is nested more than %d levels deep", maxJSONDepth))
	}
	tok, err := dec.Token()
	if err != nil {
		return nil // syntax errors are reported by the real decode
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch tok {
	case json.Delim('{'):
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch t.Kind() {
			case reflect.Struct:
				fields = structFields(t)
			case reflect.Map:
				elem = t.Elem()
			}
		}
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil
			}
			key, _ := kt.(string)
			name := key
			if path != "" {
				name = path + "." + key
			}
			if seen[key] {
				return agentotp.ValidationError(name, "appears more than once")
			}
			seen[key] = true
			next := elem
			if fields != nil {
				ft, ok := fields[key]
				if !ok {
					return agentotp.ValidationError(name, "is not a known field")
				}
				next = ft
			}
			if err := walkValue(dec, next, name, depth+1); err != nil {
				return err
			}
		}
		_, _ = dec.Token() // '}'
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := walkValue(dec, elem, path, depth+1); err != nil {
				return err
			}
		}
		_, _ = dec.Token() // ']'
	}
	return nil
}

// structFields maps exact json names to field types.
func structFields(t reflect.Type) map[string]reflect.Type {
	out := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
