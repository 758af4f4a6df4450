package otpclient

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

// Codes of the errors the client returns. The first group are the server's
// wire codes; the second are outcomes of the permission
// workflow that the client reports as errors.
const (
	CodeValidation   = "VALIDATION_ERROR"
	CodeUnauthorized = "UNAUTHORIZED"
	CodeForbidden    = "FORBIDDEN"
	CodeNotFound     = "NOT_FOUND"
	CodeConflict     = "CONFLICT"
	CodeTooLarge     = "PAYLOAD_TOO_LARGE"
	CodeRateLimited  = "RATE_LIMITED"
	CodeInternal     = "INTERNAL_ERROR"
	CodeUnavailable  = "SERVICE_UNAVAILABLE"

	CodeDenied           = "PERMISSION_DENIED"
	CodeExpired          = "PERMISSION_EXPIRED"
	CodeRevoked          = "PERMISSION_REVOKED"
	CodePending          = "PERMISSION_PENDING"
	CodeUseRefused       = "USE_REFUSED"
	CodeTokenUnavailable = "TOKEN_UNAVAILABLE"
)

// Error is every error the client reports about the server or the
// permission workflow. Match a kind with errors.Is against the sentinels
// (errors.Is(err, otpclient.ErrDenied)) and read the details with errors.As:
//
//	var e *otpclient.Error
//	if errors.As(err, &e) && e.Code == otpclient.CodeRateLimited {
//		time.Sleep(e.RetryAfter)
//	}
//
// Transport failures that never reached an HTTP answer are returned as
// they are (wrapped), so errors.Is(err, context.DeadlineExceeded) works.
type Error struct {
	// Code is a server wire code or one of the workflow codes above.
	Code string
	// Status is the HTTP status, 0 for workflow outcomes.
	Status int
	// Message is the server's message (safe to show) or the client's.
	Message string
	// Reason explains a denial, expiry, revocation or refused use.
	Reason string
	// Details names the offending fields of a validation error
	// (field → problem).
	Details map[string]string
	// RetryAfter is the server's Retry-After for RATE_LIMITED, if any.
	RetryAfter time.Duration
	// RequestID is the X-Request-Id of the response, for the server logs.
	RequestID string
	// PermissionID is the permission concerned, when there is one.
	PermissionID string
	// Err is the underlying cause (a context error while waiting).
	Err error

	sentinel bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("agentotp: ")
	switch e.Code {
	case CodeDenied, CodeExpired, CodeRevoked, CodePending, CodeUseRefused, CodeTokenUnavailable:
		fmt.Fprintf(&b, "permission %s: %s", e.PermissionID, e.Message)
		if e.Reason != "" && e.Reason != e.Message {
			fmt.Fprintf(&b, ": %s", e.Reason)
		}
	default:
		fmt.Fprintf(&b, "%s", e.Code)
		if e.Message != "" {
			fmt.Fprintf(&b, ": %s", e.Message)
		}
		for _, k := range sortedKeys(e.Details) {
			if !strings.Contains(e.Message, k) {
				fmt.Fprintf(&b, " [%s: %s]", k, e.Details[k])
			}
		}
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (request %s)", e.RequestID)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinels of this package by code (ErrServer matches any
// 5xx), and the root package's sentinels (agentotp.ErrNotFound, …) by wire
// code, so code written against agentotp.AgentSession reads client errors
// alike: a refused use is agentotp.ErrConflict in both.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *Error:
		if !t.sentinel {
			return false
		}
		switch {
		case t == ErrServer:
			return e.Status >= 500 || e.Code == CodeInternal || e.Code == CodeUnavailable
		case t.Code == e.Code:
			return true
		case e.Code == CodeUseRefused && t.Code == CodeExpired:
			return e.Reason == agentotp.ReasonTokenExpired
		case e.Code == CodeUseRefused && t.Code == CodeRevoked:
			return e.Reason == agentotp.ReasonRevoked
		}
	case *agentotp.Error:
		if t.Message != "" {
			return false
		}
		code := e.Code
		if code == CodeUseRefused {
			code = CodeConflict
		}
		return string(t.Code) == code
	}
	return false
}

// Retryable reports whether repeating the same call later may succeed:
// rate limiting and server-side failures.
func (e *Error) Retryable() bool {
	return e.Code == CodeRateLimited || e.Status >= 500
}

func sentinel(code string) *Error { return &Error{Code: code, sentinel: true} }

// Sentinels for errors.Is.
var (
	// ErrDenied: a policy or a human denied the request (Reason says why).
	ErrDenied = sentinel(CodeDenied)
	// ErrExpired: nobody decided within the approval window, the token's
	// TTL passed, or a use was refused because the token expired.
	ErrExpired = sentinel(CodeExpired)
	// ErrRevoked: the permission was revoked.
	ErrRevoked = sentinel(CodeRevoked)
	// ErrPending: waiting ended (wait limit or context) before a decision.
	// It wraps the context error when the context ended.
	ErrPending = sentinel(CodePending)
	// ErrUseRefused: the server refused to spend the token (used up,
	// wrong token, outside the granted scope, …); nothing was spent.
	ErrUseRefused = sentinel(CodeUseRefused)
	// ErrTokenUnavailable: the permission is approved but this client never
	// received its token (it was delivered in a response that got lost, or
	// to another process), and it could not be re-issued.
	ErrTokenUnavailable = sentinel(CodeTokenUnavailable)

	ErrValidation   = sentinel(CodeValidation)
	ErrUnauthorized = sentinel(CodeUnauthorized)
	ErrForbidden    = sentinel(CodeForbidden)
	ErrNotFound     = sentinel(CodeNotFound)
	ErrConflict     = sentinel(CodeConflict)
	ErrTooLarge     = sentinel(CodeTooLarge)
	ErrRateLimited  = sentinel(CodeRateLimited)
	// ErrServer matches every server-side failure (HTTP 5xx); RequestID
	// identifies the request in the server's logs.
	ErrServer = sentinel("SERVER_ERROR")
)

// decisionError reports a permission that ended without approval.
func decisionError(p *Permission) error {
	e := &Error{PermissionID: p.ID, Reason: p.Reason}
	switch p.Status {
	case agentotp.StatusDenied:
		e.Code, e.Message = CodeDenied, "denied"
	case agentotp.StatusExpired:
		e.Code, e.Message = CodeExpired, "expired"
	case agentotp.StatusRevoked:
		e.Code, e.Message = CodeRevoked, "revoked"
	case agentotp.StatusUsed:
		e.Code, e.Message, e.Reason = CodeUseRefused, "already used", agentotp.ReasonTokenUsed
	default:
		return nil
	}
	return e
}

// codeForStatus names the wire code of a response that carried no envelope
// (a proxy's error page, for example).
func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return CodeValidation
	case http.StatusUnauthorized:
		return CodeUnauthorized
	case http.StatusForbidden:
		return CodeForbidden
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusConflict:
		return CodeConflict
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusTooManyRequests:
		return CodeRateLimited
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return CodeUnavailable
	}
	return CodeInternal
}

// IsDecision reports whether err is a workflow outcome (denied, expired,
// revoked, still pending) rather than a failure to talk to the server.
func IsDecision(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case CodeDenied, CodeExpired, CodeRevoked, CodePending:
		return true
	}
	return false
}
