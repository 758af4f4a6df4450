package httpapi

import "time"

// SetSSEHeartbeat shortens the keep-alive interval for a test.
func SetSSEHeartbeat(d time.Duration) (restore func()) {
	old := sseHeartbeat
	sseHeartbeat = d
	return func() { sseHeartbeat = old }
}

// OpenWaits counts the long-polls and event streams held open.
func (s *Server) OpenWaits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.waiters {
		n += c
	}
	return n
}
