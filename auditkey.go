package agentotp

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
)

// MinAuditKeyLen is the shortest audit key accepted, in bytes.
const MinAuditKeyLen = 32

// AuditKey keys the audit chain. Every event appended with a key carries
// an HMAC-SHA256 of its chain hash (which covers its content and, through
// its predecessor's hash, everything before it), so someone who can write
// the database but does not hold the key cannot edit, insert or recompute
// events without the change showing. The same key signs the recorded chain
// head and checkpoints.
//
// The key prints as [redacted] under every fmt verb, JSON and slog; ID is
// the one form of it that may be shown.
type AuditKey struct {
	k  []byte
	id string
}

// NewAuditKey returns a key holding a copy of b, which must be at least
// MinAuditKeyLen bytes (32 random bytes: openssl rand -hex 32).
func NewAuditKey(b []byte) (*AuditKey, error) {
	if len(b) < MinAuditKeyLen {
		return nil, fmt.Errorf("audit key must hold at least %d bytes, not %d (try: openssl rand -hex 32)", MinAuditKeyLen, len(b))
	}
	k := &AuditKey{k: bytes.Clone(b)}
	k.id = k.sum("agentotp audit key id v1")[:16]
	return k, nil
}

// ID names the key without revealing it: a short keyed digest, the same for
// the same key. Reports and errors use it to tell keys apart.
func (k *AuditKey) ID() string { return k.id }

// Derive returns a key for another purpose (HMAC-SHA256 of purpose under
// the audit key): every instance holding the audit key derives the same
// one, and it tells nothing of the audit key itself.
func (k *AuditKey) Derive(purpose string) []byte {
	m := hmac.New(sha256.New, k.k)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

// String implements fmt.Stringer.
func (*AuditKey) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (*AuditKey) GoString() string { return redacted }

// Format implements fmt.Formatter so that no verb prints the key.
func (*AuditKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalJSON implements json.Marshaler.
func (*AuditKey) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler.
func (*AuditKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue implements slog.LogValuer.
func (*AuditKey) LogValue() slog.Value { return slog.StringValue(redacted) }

// sum returns the hex HMAC-SHA256 of the parts, each on its own line after
// a domain label, so that a MAC made for one purpose never verifies for
// another. Parts are hex digests, decimal numbers or fixed words.
func (k *AuditKey) sum(domain string, parts ...string) string {
	m := hmac.New(sha256.New, k.k)
	m.Write([]byte(domain))
	for _, p := range parts {
		m.Write([]byte{'\n'})
		m.Write([]byte(p))
	}
	return hex.EncodeToString(m.Sum(nil))
}

// EventMAC returns the MAC of a hashed event: over its chain hash (set by
// ComputeHash) and its TokenRef.
func (k *AuditKey) EventMAC(e *AuditEvent) string {
	return k.sum("agentotp audit event v1", e.Hash, e.TokenRef)
}

// TokenRef returns the keyed digest of a token hash that a token_issue
// event records, so that verification can tell whether a permission still
// holds the token it was issued. It reveals nothing about the token.
func (k *AuditKey) TokenRef(tokenHash string) string {
	return k.sum("agentotp audit token v1", tokenHash)
}

// HeadMAC returns the MAC of a recorded chain head (the newest event's seq
// and hash), stored beside it: moving the head back after deleting the
// newest events needs the key.
func (k *AuditKey) HeadMAC(seq int64, hash string) string {
	return k.sum("agentotp audit head v1", strconv.FormatInt(seq, 10), hash)
}

// VerifyEvent reports whether e's MAC is the one k gives its hash and
// TokenRef. The hash itself must have been checked against the content.
func (k *AuditKey) VerifyEvent(e *AuditEvent) bool { return equalMAC(k.EventMAC(e), e.MAC) }

// VerifyHead reports whether mac is the MAC of the head (seq, hash).
func (k *AuditKey) VerifyHead(seq int64, hash, mac string) bool {
	return equalMAC(k.HeadMAC(seq, hash), mac)
}

// VerifyTokenRef reports whether ref is the TokenRef of tokenHash.
func (k *AuditKey) VerifyTokenRef(tokenHash, ref string) bool {
	return equalMAC(k.TokenRef(tokenHash), ref)
}

// checkpointSig signs a checkpoint's text.
func (k *AuditKey) checkpointSig(body string) string {
	return k.sum("agentotp audit checkpoint v1", body)
}

// equalMAC reports in constant time whether two MACs are the same.
func equalMAC(a, b string) bool { return hmac.Equal([]byte(a), []byte(b)) }

// SignCheckpoint returns c signed with k.
func (k *AuditKey) SignCheckpoint(c Checkpoint) Checkpoint {
	c.KeyID = k.id
	c.Sig = k.checkpointSig(c.body())
	return c
}

// ErrCheckpointSignature is returned by CheckCheckpoint for a checkpoint
// that k did not sign.
var ErrCheckpointSignature = errors.New("checkpoint signature does not verify: it was altered or forged, or signed with a different audit key")

// CheckCheckpoint verifies c's signature.
func (k *AuditKey) CheckCheckpoint(c Checkpoint) error {
	if !equalMAC(k.checkpointSig(c.body()), c.Sig) {
		if c.KeyID != k.id {
			return fmt.Errorf("%w (it names key %s, this key is %s)", ErrCheckpointSignature, c.KeyID, k.id)
		}
		return ErrCheckpointSignature
	}
	return nil
}
