package agentotp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// A request may name a callback URL; when the permission is decided,
// expires or is revoked the server POSTs its status there, signed with a
// per-agent secret. The URL's host must be on the operator's allow-list.

// MaxCallbackURLLen bounds a request's callbackUrl.
const MaxCallbackURLLen = 2048

// CallbackSecretPrefix starts every callback signing secret.
const CallbackSecretPrefix = "whsec_"

// CallbackSecret returns the secret that signs an agent's callbacks:
// "whsec_" + base64url(HMAC-SHA256(key, agent id ‖ 0x00 ‖ key hash)). It is
// derived, never stored: rotating the agent's API key rotates it, and only
// whoever holds the server's callback key can compute it.
func CallbackSecret(key []byte, a *Agent) Secret {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(a.ID))
	m.Write([]byte{0})
	m.Write([]byte(a.KeyHash))
	return Secret(CallbackSecretPrefix + base64.RawURLEncoding.EncodeToString(m.Sum(nil)))
}

// CallbackSignature returns the hex HMAC-SHA256, keyed with the callback
// secret, of "<timestamp>." followed by the body: the v1 value of the
// X-Agentotp-Signature header ("t=<timestamp>,v1=<signature>").
func CallbackSignature(secret Secret, timestamp int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret.Reveal()))
	m.Write([]byte(strconv.FormatInt(timestamp, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// ParseCallbackURL checks a callback URL: absolute http or https with a
// host, at most 2048 bytes of printable ASCII, no user information and no
// fragment. Problems are VALIDATION_ERRORs naming callbackUrl.
func ParseCallbackURL(raw string) (*url.URL, error) {
	const field = "callbackUrl"
	if len(raw) > MaxCallbackURLLen {
		return nil, ValidationError(field, "must be at most 2048 bytes")
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] <= ' ' || raw[i] >= 0x7f {
			return nil, ValidationError(field, "must be printable ASCII without spaces (percent-encode the rest)")
		}
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, ValidationError(field, "is not a valid URL")
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, ValidationError(field, "must be an absolute http or https URL")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return nil, ValidationError(field, "must be an absolute http or https URL with a host")
	case u.User != nil:
		return nil, ValidationError(field, "must not contain user information")
	case strings.Contains(raw, "#"):
		return nil, ValidationError(field, "must not contain a fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, ValidationError(field, "has an invalid port")
		}
	}
	return u, nil
}

// CallbackHost is one entry of the callback allow-list: a host name or IP
// address, with a port or without (then only the scheme's default port
// matches).
type CallbackHost struct {
	Host string // lower case; IPv6 without brackets
	Port string // "" = the URL's default port
}

// ParseCallbackHost parses an allow-list entry: "host", "host:port",
// "1.2.3.4", "[::1]:8080" or "::1". Hosts compare case-insensitively.
func ParseCallbackHost(s string) (CallbackHost, error) {
	bad := func(problem string) (CallbackHost, error) {
		return CallbackHost{}, ValidationError("callbackAllow", strconv.Quote(s)+" "+problem)
	}
	s = strings.TrimSpace(s)
	if s == "" || strings.ContainsAny(s, "/@?#%\\ \t") {
		return bad("must be a host or host:port, without scheme or path")
	}
	host, port := s, ""
	if h, p, err := net.SplitHostPort(s); err == nil {
		if p == "" {
			return bad("has an invalid port")
		}
		host, port = h, p
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		host = s[1 : len(s)-1]
	} else if strings.Count(s, ":") == 1 {
		return bad("has an invalid port")
	}
	if strings.Contains(host, ":") {
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			return bad("is not a valid IPv6 address")
		}
		host = a.String()
	}
	if host == "" || strings.Trim(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:") != "" {
		return bad("is not a valid host name or IP address")
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return bad("has an invalid port")
		}
	}
	return CallbackHost{Host: strings.ToLower(host), Port: port}, nil
}

// String returns the entry as host or host:port.
func (h CallbackHost) String() string {
	if h.Port == "" {
		if strings.Contains(h.Host, ":") {
			return "[" + h.Host + "]"
		}
		return h.Host
	}
	return net.JoinHostPort(h.Host, h.Port)
}

// Matches reports whether the entry names u's host and port.
func (h CallbackHost) Matches(u *url.URL) bool {
	host := strings.ToLower(u.Hostname())
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		host = a.String()
	}
	if host != h.Host {
		return false
	}
	port, def := u.Port(), defaultPort(u.Scheme)
	if port == "" {
		port = def
	}
	if h.Port == "" {
		return port == def
	}
	return port == h.Port
}

func defaultPort(scheme string) string {
	if scheme == "http" {
		return "80"
	}
	return "443"
}

// ParseCallbackHosts parses an allow-list; the first bad entry is an error.
func ParseCallbackHosts(list []string) ([]CallbackHost, error) {
	out := make([]CallbackHost, 0, len(list))
	for _, s := range list {
		h, err := ParseCallbackHost(s)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// CallbackListed reports whether u's host and port are on the allow-list.
func CallbackListed(allow []CallbackHost, u *url.URL) bool {
	for _, h := range allow {
		if h.Matches(u) {
			return true
		}
	}
	return false
}

// checkCallback refuses a callback URL whose host is not allowed.
func (s *Service) checkCallback(raw string) error {
	u, err := ParseCallbackURL(raw)
	if err != nil {
		return err
	}
	if !CallbackListed(s.callbackHosts, u) {
		return ValidationError("callbackUrl", "host "+strconv.Quote(u.Host)+" is not on the callback allow-list (--callback-allow)")
	}
	return nil
}
