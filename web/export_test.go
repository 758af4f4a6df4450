package web

import (
	"time"

	"golang.org/x/time/rate"
)

// SetHeartbeat shortens the keep-alive spacing of live-update streams.
func SetHeartbeat(c *Console, d time.Duration) { c.heartbeat = d }

// LimitSignIns replaces the sign-in limiter: per is the interval between
// attempts once burst is spent. Tests that sign in often lift it.
func LimitSignIns(c *Console, per time.Duration, burst int) {
	c.signIns = newAddrLimiter(rate.Every(per), burst)
}

// RestoreSignInLimit puts back the limiter the console starts with.
func RestoreSignInLimit(c *Console) { c.signIns = newAddrLimiter(signInRate, signInBurst) }
