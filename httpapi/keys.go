package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/agentotp/agentotp"
)

// checkKeys walks a JSON document before it is decoded into a value of type
// t and rejects what encoding/json would silently accept: object keys that
// match a field only case-insensitively ({"Approved":true} would set
// "approved"), and duplicate keys (the last one would win). Struct fields
// are matched exactly against their json tags; maps accept any key. It also
// bounds nesting (maxJSONDepth).
//
// It is a single pass over the bytes, without encoding/json's tokenizer
// (which allocates for every token): every request body goes through it.
// The body is valid UTF-8 (decode checks that first), so a key's bytes are
// its text unless it holds an escape. Syntax is not its concern: it stops
// at the first thing it does not expect and leaves the error to the real
// decode, so on a valid document it must be exact, and on any other it
// must only terminate.
func checkKeys(body []byte, t reflect.Type) error {
	s := keyScanner{b: body}
	if err := s.value(t, 0); err != errNotJSON {
		return err
	}
	return nil
}

// errNotJSON stops the walk at bytes that are not valid JSON.
var errNotJSON = errors.New("not JSON")

// maxJSONDepth bounds nesting before anything recurses over it: a 1 MiB body
// of '[' would otherwise cost a million stack frames. Domain objects allow
// 16 levels inside a field; this leaves room for the envelope around them.
const maxJSONDepth = 32

// keyScanner is checkKeys' cursor. path holds the keys leading to the
// current value (array elements keep their array's path): an error names
// the field as "a.b.c".
type keyScanner struct {
	b    []byte
	i    int
	path []string
}

// name is the dotted path of the current value.
func (s *keyScanner) name() string { return strings.Join(s.path, ".") }

func (s *keyScanner) skipSpace() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// value checks the value at s.i, which is expected to be of type t (nil:
// anything), and moves past it.
func (s *keyScanner) value(t reflect.Type, depth int) error {
	if depth > maxJSONDepth {
		if len(s.path) == 0 {
			return agentotp.Errorf(agentotp.CodeValidation, "request body is nested more than %d levels deep", maxJSONDepth)
		}
		return agentotp.ValidationError(s.name(), fmt.Sprintf("is nested more than %d levels deep", maxJSONDepth))
	}
	s.skipSpace()
	if s.i >= len(s.b) {
		return errNotJSON
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch s.b[s.i] {
	case '{':
		return s.object(t, depth)
	case '[':
		return s.array(t, depth)
	case '"':
		_, _, err := s.str()
		return err
	}
	// A number or a literal: valid ones hold none of these bytes.
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', ']', '}', ' ', '\t', '\n', '\r':
			return nil
		case '{', '[', '"', ':':
			return errNotJSON
		}
		s.i++
	}
	return nil
}

func (s *keyScanner) object(t reflect.Type, depth int) error {
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
	var seen keySet
	s.i++ // '{'
	if s.closes('}') {
		return nil
	}
	for {
		s.skipSpace()
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return errNotJSON
		}
		raw, escaped, err := s.str()
		if err != nil {
			return err
		}
		key := string(raw[1 : len(raw)-1])
		if escaped {
			if json.Unmarshal(raw, &key) != nil {
				return errNotJSON
			}
		}
		s.skipSpace()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return errNotJSON
		}
		s.i++
		s.path = append(s.path, key)
		if !seen.add(key) {
			return agentotp.ValidationError(s.name(), "appears more than once")
		}
		next := elem
		if fields != nil {
			ft, known := fields[key]
			if !known {
				return agentotp.ValidationError(s.name(), "is not a known field")
			}
			next = ft
		}
		if err := s.value(next, depth+1); err != nil {
			return err
		}
		s.path = s.path[:len(s.path)-1]
		if done, err := s.more('}'); done || err != nil {
			return err
		}
	}
}

func (s *keyScanner) array(t reflect.Type, depth int) error {
	var elem reflect.Type
	if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		elem = t.Elem()
	}
	s.i++ // '['
	if s.closes(']') {
		return nil
	}
	for {
		if err := s.value(elem, depth+1); err != nil {
			return err
		}
		if done, err := s.more(']'); done || err != nil {
			return err
		}
	}
}

// closes moves past closer if it comes next: an empty object or array.
func (s *keyScanner) closes(closer byte) bool {
	s.skipSpace()
	if s.i < len(s.b) && s.b[s.i] == closer {
		s.i++
		return true
	}
	return false
}

// more moves past what follows a member or an element: a comma (another
// comes) or closer (done).
func (s *keyScanner) more(closer byte) (done bool, err error) {
	s.skipSpace()
	if s.i >= len(s.b) {
		return false, errNotJSON
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		return false, nil
	case closer:
		s.i++
		return true, nil
	}
	return false, errNotJSON
}

// str moves past the string at s.i and returns it with its quotes, and
// whether it holds an escape.
func (s *keyScanner) str() (raw []byte, escaped bool, err error) {
	start := s.i
	s.i++ // '"'
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			s.i++
			return s.b[start:s.i], escaped, nil
		case '\\':
			escaped = true
			s.i += 2
			continue
		}
		s.i++
	}
	return nil, false, errNotJSON
}

// keySet remembers an object's keys: a short list for the objects requests
// are made of, a map once an object is large enough that searching the list
// would cost more.
type keySet struct {
	list []string
	set  map[string]struct{}
}

const keySetListMax = 16

// add records key and reports whether it was new.
func (k *keySet) add(key string) bool {
	if k.set != nil {
		if _, dup := k.set[key]; dup {
			return false
		}
		k.set[key] = struct{}{}
		return true
	}
	for _, seen := range k.list {
		if seen == key {
			return false
		}
	}
	if len(k.list) < keySetListMax {
		k.list = append(k.list, key)
		return true
	}
	k.set = make(map[string]struct{}, 2*keySetListMax)
	for _, seen := range k.list {
		k.set[seen] = struct{}{}
	}
	k.set[key] = struct{}{}
	return true
}

// fieldsByType caches structFields: the wire types are few and fixed.
var fieldsByType sync.Map // reflect.Type → map[string]reflect.Type

// structFields maps exact json names to field types.
func structFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldsByType.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
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
	fieldsByType.Store(t, out)
	return out
}
