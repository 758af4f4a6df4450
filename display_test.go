package agentotp_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func TestHiddenRune(t *testing.T) {
	for _, c := range []struct {
		r      rune
		hidden bool
	}{
		{'a', false}, {'é', false}, {' ', false}, {'\t', false}, {'中', false},
		{0x00, true}, {'\n', true}, {0x1b, true}, {0x7f, true}, {0x85, true},
		{0x200b, true}, {0x200e, true}, {0x202e, true}, {0x2066, true}, {0x2069, true},
		{0x2028, true}, {0xfeff, true}, {0x00ad, true}, {0x061c, true}, {0xfffb, true},
		{0xfffd, true}, {0x2070, false},
	} {
		require.Equal(t, c.hidden, agentotp.HiddenRune(c.r), "U+%04X", c.r)
	}
}

// Hidden runes inside strings come out as escapes, and the text still
// parses back to the same value.
func TestDisplayJSON(t *testing.T) {
	in := map[string]any{"to": "bob\u202e@example.com", "n": 1.0, "tags": []any{"a<b"}}
	out, err := agentotp.DisplayJSON(in)
	require.NoError(t, err)
	require.Equal(t, "{\n  \"n\": 1,\n  \"tags\": [\n    \"a<b\"\n  ],\n  \"to\": \"bob\\u202e@example.com\"\n}", out)
	var back map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &back))
	require.Equal(t, in, back)

	out, err = agentotp.DisplayJSON(nil)
	require.NoError(t, err)
	require.Equal(t, "{}", out)
}
