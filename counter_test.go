package agentotp_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

// MatchPattern must agree with the stores' pattern counts: '*' is any run
// of characters, everything else is literal.
func TestMatchPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"mail.send", "mail.send", true},
		{"mail.send", "mail.sends", false},
		{"mail.*", "mail.send", true},
		{"mail.*", "mail.", true},
		{"mail.*", "mailsend", false},
		{"*", "", true},
		{"*.send", "mail.send", true},
		{"*.send", "mail.sent", false},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "abc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"x?[y]", "x?[y]", true},
		{"x?", "xy", false},
		{"", "", true},
		{"", "a", false},
	} {
		require.Equal(t, tc.want, agentotp.MatchPattern(tc.pattern, tc.s), "%q ~ %q", tc.pattern, tc.s)
	}
}
