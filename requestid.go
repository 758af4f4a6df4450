package agentotp

import "context"

type requestIDKey struct{}

// WithRequestID returns ctx carrying the transport's request id, which the
// service stamps on the audit events it writes.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id carried by ctx, or "".
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(requestIDKey{}).(string)
	return s
}
