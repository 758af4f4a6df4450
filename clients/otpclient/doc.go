// Package otpclient is the Go client of the agentotp HTTP API.
//
// An agent (an "ak_" key) uses Client: ask for a permission, wait for a
// policy or a human to decide, then spend the one-time token.
//
//	c := otpclient.New("http://127.0.0.1:8787", os.Getenv("AGENTOTP_API_KEY"))
//	err := c.Do(ctx, otpclient.Request{Action: "gmail.send", Resource: "email:bob@example.com"},
//		func(ctx context.Context, token agentotp.Secret) error { return send(ctx) },
//		otpclient.OnPending(func(p *otpclient.Permission) { log.Print("approve at ", p.ApprovalURL) }))
//
// Humans (a "uk_" key) use Admin: decide requests, manage agents, users and
// policies, and read the audit trail.
//
// # Waiting
//
// Waiting for a human uses the server's long-poll (GET
// /api/v1/permissions/:id?wait=…, up to 55 s per request, repeated), never
// fixed-interval polling, and is bounded by the context, the Wait limit
// and the permission's own expiry.
//
// # Tokens
//
// The server hands a human-approved token to its agent exactly once. The
// client keeps every token it receives until the permission is spent,
// revoked or expired, so asking again for the same permission from the
// same Client returns it. If the response carrying a token is lost in
// transit, the client replays the original request's idempotency key and
// the server re-issues an unused token; if even that is impossible the
// error is ErrTokenUnavailable. Tokens are agentotp.Secret values that
// print as [redacted]; call Reveal to hand one to a downstream system.
//
// # Retries
//
// Calls are retried with exponential backoff and jitter (WithRetries) on
// 429 (honouring Retry-After), 5xx and network errors when repeating them
// is safe: reads, verify, revoke, and RequestPermission, which always sends
// an idempotency key so a retry never creates a second permission. Use,
// decisions, creations and key rotations are retried only when the server
// provably did nothing (429, or no connection): a use whose outcome is
// unknown is reported, never repeated, and Do never runs its function
// unless the use succeeded.
//
// # Errors
//
// Every server or workflow error is an *Error; match kinds with errors.Is
// (ErrDenied, ErrExpired, ErrRevoked, ErrPending, ErrUseRefused,
// ErrUnauthorized, ErrForbidden, ErrNotFound, ErrConflict, ErrValidation,
// ErrRateLimited, ErrServer) and read Reason, Details, RetryAfter and
// RequestID with errors.As.
//
// # Tool guards
//
// Client implements Authorize and Spend with the signatures of
// agentotp.AgentSession, so the langchaingo guard (package tools) and the
// MCP server take a remote Client or an in-process session alike.
package otpclient
