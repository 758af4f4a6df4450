package agentotp

import "context"

// Notifier tells approvers about requests (Telegram, …). Notification is
// best effort and never decides anything: a failing or missing notifier
// leaves the request pending, visible in the console and the CLI.
type Notifier interface {
	// NotifyPending announces a request that waits for a human.
	NotifyPending(ctx context.Context, p *Permission, agent *Agent) error
	// NotifyResolved reports that a request was decided, expired or
	// revoked, or its last use spent: for requests that waited for a
	// person, and for any with a callback URL. A request the policy
	// decided at once, without a callback, is nobody's news.
	NotifyResolved(ctx context.Context, p *Permission) error
}
