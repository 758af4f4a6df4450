package otpclient

import (
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

// Headers of a decision callback.
const (
	// CallbackSignatureHeader carries "t=<unix seconds>,v1=<hex HMAC>".
	CallbackSignatureHeader = "X-Agentotp-Signature"
	// CallbackEventIDHeader is the same for every retry of one delivery,
	// so a receiver can drop duplicates (the body's eventId equals it).
	CallbackEventIDHeader = "X-Agentotp-Event-Id"
)

// DefaultCallbackTolerance is how far a callback's timestamp may be from
// now when VerifyCallback is given no tolerance.
const DefaultCallbackTolerance = 5 * time.Minute

// ErrCallbackSignature is the error of every callback that fails
// verification; the wrapping error says why.
var ErrCallbackSignature = errors.New("otpclient: invalid callback signature")

// CallbackEvent is the body of a decision callback. It never carries the
// token: an approved agent fetches it with GetPermission or
// WaitForDecision as usual.
type CallbackEvent struct {
	// Event is "permission." + Status, e.g. "permission.approved".
	Event string `json:"event"`
	// EventID identifies the delivery; retries repeat it.
	EventID string `json:"eventId"`
	// ID is the permission's id.
	ID        string          `json:"id"`
	Status    agentotp.Status `json:"status"`
	Action    string          `json:"action"`
	Resource  string          `json:"resource"`
	AgentID   string          `json:"agentId"`
	Reason    string          `json:"reason"`
	DecidedBy string          `json:"decidedBy"` // "auto", "user", "timeout", "revoked"
	DecidedAt time.Time       `json:"decidedAt"`
	// Timestamp is when the server produced the event.
	Timestamp time.Time `json:"timestamp"`
}

// VerifyCallback checks a decision callback and returns its event.
// secret is the agent's callback secret ("whsec_…", shown when the agent
// was created or its key rotated), signatureHeader the request's
// X-Agentotp-Signature, body the raw request body exactly as received.
// The signature is compared in constant time; a timestamp further than
// tolerance from now (DefaultCallbackTolerance when tolerance ≤ 0) is
// refused, so a captured callback cannot be replayed later. Every refusal
// matches ErrCallbackSignature. Receivers should also drop an EventID they
// have already handled.
func VerifyCallback(secret agentotp.Secret, signatureHeader string, body []byte, now time.Time, tolerance time.Duration) (*CallbackEvent, error) {
	if tolerance <= 0 {
		tolerance = DefaultCallbackTolerance
	}
	if secret == "" {
		return nil, fmt.Errorf("%w: no secret", ErrCallbackSignature)
	}
	var (
		ts    int64
		haveT bool
		sigs  [][]byte
	)
	for part := range strings.SplitSeq(signatureHeader, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%w: malformed header", ErrCallbackSignature)
		}
		switch k {
		case "t":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || haveT {
				return nil, fmt.Errorf("%w: malformed timestamp", ErrCallbackSignature)
			}
			ts, haveT = n, true
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != 32 {
				return nil, fmt.Errorf("%w: malformed v1 signature", ErrCallbackSignature)
			}
			sigs = append(sigs, b)
		}
		// Other schemes are ignored, so new ones can be added alongside.
	}
	if !haveT || len(sigs) == 0 {
		return nil, fmt.Errorf("%w: header needs t= and v1=", ErrCallbackSignature)
	}
	want, _ := hex.DecodeString(agentotp.CallbackSignature(secret, ts, body))
	match := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			match = true
		}
	}
	if !match {
		return nil, fmt.Errorf("%w: signature does not match", ErrCallbackSignature)
	}
	// Checked after the signature, so an attacker learns nothing about
	// clocks from forged requests.
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return nil, fmt.Errorf("%w: timestamp outside the %s tolerance", ErrCallbackSignature, tolerance)
	}
	var ev CallbackEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("%w: body is not a callback event: %v", ErrCallbackSignature, err)
	}
	if ev.ID == "" || ev.Status == "" {
		return nil, fmt.Errorf("%w: body is not a callback event", ErrCallbackSignature)
	}
	return &ev, nil
}
