package agentotp

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
)

// Secret holds a credential in plain text: a permission token or an API key.
// It prints as [redacted] under every fmt verb, JSON and slog, so a Secret
// that reaches a log or a response by accident leaks nothing. Use Reveal at
// the single place that must hand the value out.
type Secret string

const redacted = "[redacted]"

// Reveal returns the plain text. Call it only where the secret is handed to
// its owner.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer.
func (Secret) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (Secret) GoString() string { return redacted }

// Format implements fmt.Formatter so that %x, %q and friends cannot leak.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalJSON implements json.Marshaler.
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// Hash returns the hex SHA-256 of the secret, the only form kept at rest.
// Secrets are high-entropy (≥ 190 bits), so a fast unsalted hash is safe and
// keeps key lookup cheap; a slow KDF would only add a denial-of-service lever.
func (s Secret) Hash() string { return HashSecret(string(s)) }

// HashSecret returns the hex SHA-256 of a plain-text secret.
func HashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// EqualHash compares two hex digests in constant time.
func EqualHash(a, b string) bool {
	return len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// Credential prefixes.
const (
	TokenPrefix    = "otp_"
	AgentKeyPrefix = "ak_"
	UserKeyPrefix  = "uk_"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// randomBase62 returns n characters drawn uniformly from base62 using
// rejection sampling (no modulo bias).
func randomBase62(n int) string {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic("agentotp: crypto/rand failed: " + err.Error())
		}
		for _, b := range buf {
			if b < 248 { // 248 = 4*62: keeps the distribution uniform
				out = append(out, base62[b%62])
				if len(out) == n {
					break
				}
			}
		}
	}
	return string(out)
}

// NewToken returns a fresh permission token: "otp_" + 32 base62 characters
// (about 190 bits from crypto/rand).
func NewToken() Secret { return Secret(TokenPrefix + randomBase62(32)) }

// newKey returns prefix + 32 characters carrying exactly 192 random bits.
func newKey(prefix string) Secret {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("agentotp: crypto/rand failed: " + err.Error())
	}
	return Secret(prefix + base64.RawURLEncoding.EncodeToString(b[:]))
}

// NewAgentKey returns a fresh agent API key ("ak_" + 32 characters, 192 bits).
func NewAgentKey() Secret { return newKey(AgentKeyPrefix) }

// NewUserKey returns a fresh user API key ("uk_" + 32 characters, 192 bits).
func NewUserKey() Secret { return newKey(UserKeyPrefix) }

// ValidTokenFormat reports whether s has the shape of a token. Only a cheap
// filter: a well-formed token still has to match a stored hash.
func ValidTokenFormat(s string) bool {
	if len(s) != len(TokenPrefix)+32 || !strings.HasPrefix(s, TokenPrefix) {
		return false
	}
	for i := len(TokenPrefix); i < len(s); i++ {
		if strings.IndexByte(base62, s[i]) < 0 {
			return false
		}
	}
	return true
}

// ValidKeyFormat reports whether s has the shape of an agent or user key.
func ValidKeyFormat(s string) bool {
	if len(s) != 35 || !(strings.HasPrefix(s, AgentKeyPrefix) || strings.HasPrefix(s, UserKeyPrefix)) {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(s[3:])
	return err == nil
}
