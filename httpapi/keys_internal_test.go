package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// tokenCheckKeys is the check as it was first written, on encoding/json's
// tokenizer: slow (it allocates for every token) but plainly right. It is
// the oracle checkKeys is compared with.
func tokenCheckKeys(body []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	return tokenWalk(dec, t, "", 0)
}

func tokenWalk(dec *json.Decoder, t reflect.Type, path string, depth int) error {
	if depth > maxJSONDepth {
		if path == "" {
			return agentotp.Errorf(agentotp.CodeValidation, "request body is nested more than %d levels deep", maxJSONDepth)
		}
		return agentotp.ValidationError(path, fmt.Sprintf("is nested more than %d levels deep", maxJSONDepth))
	}
	tok, err := dec.Token()
	if err != nil {
		return nil
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
			if err := tokenWalk(dec, next, name, depth+1); err != nil {
				return err
			}
		}
		_, _ = dec.Token()
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := tokenWalk(dec, elem, path, depth+1); err != nil {
				return err
			}
		}
		_, _ = dec.Token()
	}
	return nil
}

var requestBodyType = reflect.TypeOf(&permissionRequestBody{})

// keyCases are bodies checkKeys must judge: each with the error it gives
// ("" for none). They seed FuzzCheckKeys too.
var keyCases = []struct {
	body, want string
}{
	{`{"action":"a.b","scope":{"n":1}}`, ""},
	{`  {"action" : "a.b" , "scope" : { "n" : [1, 2.5e3, -0, true, false, null, "x\"y"] } }  `, ""},
	{`{"action":"a","action":"b"}`, "action: appears more than once"},
	{`{"action":"a","\u0061ction":"b"}`, "action: appears more than once"},
	{`{"Action":"a"}`, "Action: is not a known field"},
	{`{"action":"a","scope":{"k":1,"k":2}}`, "scope.k: appears more than once"},
	{`{"scope":{"a":{"b":[{"c":1},{"c":1,"c":2}]}}}`, "scope.a.b.c: appears more than once"},
	{`{"tool":{"server":"s","nme":"x"}}`, "tool.nme: is not a known field"},
	{`{"tool":{"args":{"x":{"y":1}},"args":{}}}`, "tool.args: appears more than once"},
	{`{"use":{"actionDetails":{"a":1,"b":2,"a":3}}}`, "use.actionDetails.a: appears more than once"},
	{`{"scope":{"a.b":1,"a":{"b":2}}}`, ""},
	{`{"scope":{"":1,"":2}}`, "scope.: appears more than once"},
	{`{"scope":{"\\":1,"\\\\":2,"\/":3,"/":4}}`, "scope./: appears more than once"},
	{`{"scope":{"\ud800":1,"\ufffd":2}}`, "scope.\ufffd: appears more than once"},
	{`{"scope":` + strings.Repeat(`{"a":`, 31) + `1` + strings.Repeat(`}`, 31) + `}`, ""},
	{`{"scope":` + strings.Repeat(`{"a":`, 32) + `1` + strings.Repeat(`}`, 32) + `}`, "scope" + strings.Repeat(".a", 32) + ": is nested more than 32 levels deep"},
	{`{"scope":{"l":` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `}}`, "scope.l: is nested more than 32 levels deep"},
	{strings.Repeat(`[`, 33) + strings.Repeat(`]`, 33), ""},
	{strings.Repeat(`[`, 34) + strings.Repeat(`]`, 34), "request body is nested more than 32 levels deep"},
	{`[{"action":1,"action":2}]`, "action: appears more than once"},
	{`"just a string"`, ""},
	{`{}`, ""},
	{`[]`, ""},
}

// manyKeys is an object of n distinct keys, then a repeat of key dup (when
// dup >= 0): the key set switches from its list to a map past 16.
func manyKeys(n, dup int) string {
	var b strings.Builder
	b.WriteString(`{"scope":{`)
	for i := range n {
		fmt.Fprintf(&b, `"k%d":%d,`, i, i)
	}
	if dup >= 0 {
		fmt.Fprintf(&b, `"k%d":0,`, dup)
	}
	b.WriteString(`"end":1}}`)
	return b.String()
}

func TestCheckKeys(t *testing.T) {
	cases := keyCases
	for _, n := range []int{15, 16, 17, 200} {
		cases = append(cases,
			struct{ body, want string }{manyKeys(n, -1), ""},
			struct{ body, want string }{manyKeys(n, 0), "scope.k0: appears more than once"},
			struct{ body, want string }{manyKeys(n, n-1), fmt.Sprintf("scope.k%d: appears more than once", n-1)})
	}
	for _, tc := range cases {
		t.Run(tc.body[:min(len(tc.body), 40)], func(t *testing.T) {
			require.True(t, json.Valid([]byte(tc.body)))
			err := checkKeys([]byte(tc.body), requestBodyType)
			if tc.want == "" {
				require.NoError(t, err)
			} else {
				require.EqualError(t, err, "VALIDATION_ERROR: "+tc.want)
			}
			require.Equal(t, fmt.Sprint(tokenCheckKeys([]byte(tc.body), requestBodyType)), fmt.Sprint(err), "the oracle disagrees")
		})
	}
}

// TestCheckKeysNotJSON: bytes that are not JSON end the walk where they
// stop being JSON, without an error of the walk's own (the decode reports
// them) and without a panic.
func TestCheckKeysNotJSON(t *testing.T) {
	for _, body := range []string{``, `{`, `{"a`, `{"action"`, `{"action":`, `{"action":1,`, `{"action":1 "x":2}`,
		`[1,`, `[1 2]`, `"abc`, `"\`, `{"a\`, `{"scope":{"a":1}`, `{1:2}`, `{"action":1]`, `[1}`, `nul{`, `{"scope":{"a":1,"a"`} {
		require.NoError(t, checkKeys([]byte(body), requestBodyType), "%q", body)
	}
}

// FuzzCheckKeys: on any valid JSON in UTF-8 (decode refuses other bodies
// first) checkKeys gives the oracle's answer, and on any bytes at all it
// returns.
func FuzzCheckKeys(f *testing.F) {
	for _, tc := range keyCases {
		f.Add([]byte(tc.body))
	}
	f.Add([]byte(manyKeys(20, 3)))
	f.Fuzz(func(t *testing.T, body []byte) {
		err := checkKeys(body, requestBodyType)
		if !json.Valid(body) || !utf8.Valid(body) {
			return
		}
		require.Equal(t, fmt.Sprint(tokenCheckKeys(body, requestBodyType)), fmt.Sprint(err), "%q", body)
	})
}
