package agentotp_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func TestChannelHeader(t *testing.T) {
	ch := agentotp.Channel{Via: "mcp", Transport: "stdio", Client: "claude-code", ClientVersion: "2.1.0"}
	got, ok := agentotp.ParseChannel(ch.Encode())
	require.True(t, ok)
	require.Equal(t, ch, got)

	for _, tc := range []struct {
		name, header string
		ok           bool
		want         agentotp.Channel
	}{
		{"empty", "", false, agentotp.Channel{}},
		{"no via", "transport=stdio", false, agentotp.Channel{}},
		{"bad escape", "via=%zz", false, agentotp.Channel{}},
		{"too long", "via=mcp&client=" + strings.Repeat("a", 2000), false, agentotp.Channel{}},
		{"control characters dropped", "via=mcp&client=ev%0Ail%1b%5B31m", true, agentotp.Channel{Via: "mcp", Client: "evil[31m"}},
		{"invalid UTF-8 dropped", "via=mcp&client=a%ffb", true, agentotp.Channel{Via: "mcp", Client: "ab"}},
		{"capped at 64 bytes on a rune boundary", "via=mcp&client=" + strings.Repeat("é", 40), true,
			agentotp.Channel{Via: "mcp", Client: strings.Repeat("é", 32)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := agentotp.ParseChannel(tc.header)
			require.Equal(t, tc.ok, ok)
			if ok {
				require.Equal(t, tc.want, got)
			}
		})
	}
	ctx := agentotp.WithChannel(context.Background(), agentotp.Channel{Via: "mcp", Client: "x\x00y"})
	got, ok = agentotp.ChannelFrom(ctx)
	require.True(t, ok)
	require.Equal(t, "xy", got.Client)
}
