package httpapi

import "time"

// SetSSEHeartbeat shortens the keep-alive interval for a test.
func SetSSEHeartbeat(d time.Duration) (restore func()) {
	old := sseHeartbeat
	sseHeartbeat = d
	return func() { sseHeartbeat = old }
}
