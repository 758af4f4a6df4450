package agentotp

import (
	"context"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Channel says how a call reached the service: the protocol ("mcp"), its
// transport ("stdio", "streamable-http", "sse") and the client program as it
// named itself. Everything but Via is asserted by the agent's side and is
// recorded as such, never trusted.
type Channel struct {
	Via           string
	Transport     string
	Client        string
	ClientVersion string
}

// ChannelHeader carries an encoded Channel from a remote adapter.
const ChannelHeader = "X-Agentotp-Channel"

// maxChannelField bounds each Channel field as recorded.
const maxChannelField = 64

type channelKey struct{}

// WithChannel returns ctx carrying ch; the audit events written for calls
// under ctx record it in their details as "channel".
func WithChannel(ctx context.Context, ch Channel) context.Context {
	return context.WithValue(ctx, channelKey{}, ch.clean())
}

// ChannelFrom returns the channel carried by ctx.
func ChannelFrom(ctx context.Context) (Channel, bool) {
	ch, ok := ctx.Value(channelKey{}).(Channel)
	return ch, ok
}

// clean keeps printable text only and caps each field, so a client name
// cannot bloat or garble the audit.
func (ch Channel) clean() Channel {
	f := func(s string) string {
		s = strings.Map(func(r rune) rune {
			if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == utf8.RuneError {
				return -1
			}
			return r
		}, s)
		for len(s) > maxChannelField {
			_, n := utf8.DecodeLastRuneInString(s)
			s = s[:len(s)-n]
		}
		return s
	}
	return Channel{Via: f(ch.Via), Transport: f(ch.Transport), Client: f(ch.Client), ClientVersion: f(ch.ClientVersion)}
}

// details is the channel as an audit detail.
func (ch Channel) details() map[string]any {
	m := map[string]any{"via": ch.Via}
	if ch.Transport != "" {
		m["transport"] = ch.Transport
	}
	if ch.Client != "" {
		m["client"] = ch.Client
	}
	if ch.ClientVersion != "" {
		m["clientVersion"] = ch.ClientVersion
	}
	return m
}

// Encode renders the channel for the X-Agentotp-Channel header, by which a
// remote adapter (agentotp mcp --url) tells the server how it was called.
func (ch Channel) Encode() string {
	v := url.Values{}
	for k, s := range map[string]string{"via": ch.Via, "transport": ch.Transport, "client": ch.Client, "clientVersion": ch.ClientVersion} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v.Encode()
}

// ParseChannel reads a header written by Encode. A malformed or empty value
// gives false; fields are cleaned as by WithChannel.
func ParseChannel(s string) (Channel, bool) {
	if s == "" || len(s) > 1024 {
		return Channel{}, false
	}
	v, err := url.ParseQuery(s)
	if err != nil {
		return Channel{}, false
	}
	ch := Channel{Via: v.Get("via"), Transport: v.Get("transport"), Client: v.Get("client"), ClientVersion: v.Get("clientVersion")}.clean()
	return ch, ch.Via != ""
}

type principalKey struct{}

// WithPrincipal returns ctx carrying an authenticated principal, for
// adapters (MCP over HTTP) that authenticate at the edge and act later.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal carried by ctx.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
