package agentotp

import (
	"errors"
	"fmt"
)

// Code is the closed set of error codes the service reports. They are the
// v0.1.1 wire codes; adapters map them to transport statuses.
type Code string

const (
	CodeValidation   Code = "VALIDATION_ERROR"
	CodeUnauthorized Code = "UNAUTHORIZED"
	CodeForbidden    Code = "FORBIDDEN"
	CodeNotFound     Code = "NOT_FOUND"
	CodeConflict     Code = "CONFLICT"
	CodeTooLarge     Code = "PAYLOAD_TOO_LARGE"
	CodeRateLimited  Code = "RATE_LIMITED"
	CodeInternal     Code = "INTERNAL_ERROR"
	CodeUnavailable  Code = "SERVICE_UNAVAILABLE"
)

// Error is the one error type of the domain. Message is safe to show to the
// caller; Details carries field-level information (field → problem).
type Error struct {
	Code    Code
	Message string
	Details map[string]string
	Err     error // the cause, for logs only; never shown to clients
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNotFound) match any *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code
}

// Sentinels for errors.Is; each matches any *Error with its code.
var (
	ErrValidation   = &Error{Code: CodeValidation}
	ErrUnauthorized = &Error{Code: CodeUnauthorized}
	ErrForbidden    = &Error{Code: CodeForbidden}
	ErrNotFound     = &Error{Code: CodeNotFound}
	ErrConflict     = &Error{Code: CodeConflict}
	ErrRateLimited  = &Error{Code: CodeRateLimited}
	ErrInternal     = &Error{Code: CodeInternal}
	ErrUnavailable  = &Error{Code: CodeUnavailable}
)

// Errorf returns an *Error with a formatted, client-safe message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ValidationError returns a VALIDATION_ERROR naming one field.
func ValidationError(field, problem string) *Error {
	return &Error{Code: CodeValidation, Message: field + ": " + problem, Details: map[string]string{field: problem}}
}

// ErrorCode returns the code of err: the *Error's code, or INTERNAL_ERROR for
// anything else (which must then not be shown to a client).
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
