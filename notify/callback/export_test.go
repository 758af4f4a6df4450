package callback

import (
	"context"
	"net/netip"
)

// SetLookup replaces the resolver, so tests can make a name resolve (or
// rebind) to any address.
func SetLookup(n *Notifier, f func(ctx context.Context, host string) ([]netip.Addr, error)) {
	n.lookup = f
}

var (
	Public     = public
	RetryAfter = retryAfter
)
