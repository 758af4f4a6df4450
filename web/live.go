package web

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentotp/agentotp"
)

// Live tells the browsers that have a console page open that a request
// appeared or ended. It is an agentotp.Notifier: add it to the service's
// notifiers. An event carries only the request's id; the page fetches what
// changed like any page view, so nothing an agent wrote reaches the stream.
type Live struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

var _ agentotp.Notifier = (*Live)(nil)

// NewLive returns a Live with no browser listening.
func NewLive() *Live { return &Live{subs: map[*subscriber]struct{}{}} }

// NotifyPending implements agentotp.Notifier.
func (l *Live) NotifyPending(_ context.Context, p *agentotp.Permission, _ *agentotp.Agent) error {
	l.publish(liveEvent{kind: "pending", id: p.ID})
	return nil
}

// NotifyResolved implements agentotp.Notifier.
func (l *Live) NotifyResolved(_ context.Context, p *agentotp.Permission) error {
	if p.Decision.Effect != agentotp.EffectRequireApproval {
		return nil // decided by policy at once: never on a pending list
	}
	l.publish(liveEvent{kind: "resolved", id: p.ID})
	return nil
}

type liveEvent struct {
	kind string // "pending", "resolved"
	id   agentotp.PermissionID
}

// subscriber is one open stream.
type subscriber struct {
	user    agentotp.UserID
	session string // the session's hash, to end the stream at sign-out
	events  chan liveEvent
	// missed is set when events was full: the page then refreshes
	// everything instead of learning which request changed.
	missed atomic.Bool
	ended  chan struct{}
	once   sync.Once
}

func (s *subscriber) end() { s.once.Do(func() { close(s.ended) }) }

// maxStreamsPerUser bounds the streams one person holds open (tabs,
// phones); the oldest are not closed, a new one is refused.
const maxStreamsPerUser = 16

func (l *Live) publish(e liveEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.subs {
		select {
		case s.events <- e:
		default:
			s.missed.Store(true)
		}
	}
}

func (l *Live) subscribe(user agentotp.UserID, session string) (*subscriber, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for s := range l.subs {
		if s.user == user {
			n++
		}
	}
	if n >= maxStreamsPerUser {
		return nil, false
	}
	s := &subscriber{user: user, session: session, events: make(chan liveEvent, 32), ended: make(chan struct{})}
	l.subs[s] = struct{}{}
	return s, true
}

func (l *Live) unsubscribe(s *subscriber) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.subs, s)
}

// endSession closes the streams of a session that signed out.
func (l *Live) endSession(hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.subs {
		if s.session == hash {
			s.end()
		}
	}
}

// events streams live updates to a signed-in page as Server-Sent Events:
// "pending" and "resolved" with a request id, "changed" when some were
// missed. Listening is not activity: an open tab does not keep an idle
// session alive, and the stream ends with the session.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	secret, ok := c.cookie.read(r)
	if !ok {
		http.Error(w, "not signed in", http.StatusUnauthorized)
		return
	}
	p, err := c.svc.ResumeConsoleSession(r.Context(), secret, false)
	if err != nil {
		http.Error(w, "not signed in", http.StatusUnauthorized)
		return
	}
	sub, ok := c.live.subscribe(p.User.ID, secret.Hash())
	if !ok {
		http.Error(w, "too many open console pages", http.StatusTooManyRequests)
		return
	}
	defer c.live.unsubscribe(sub)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(format string, args ...any) bool {
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// A reconnecting page waits 3 s, and refreshes on reconnecting, since
	// it may have missed events meanwhile.
	if !send("retry: 3000\n\n") {
		return
	}
	beat := time.NewTicker(c.heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-sub.ended:
			return
		case e := <-sub.events:
			if !send("event: %s\ndata: %s\n\n", e.kind, e.id) {
				return
			}
		case <-beat.C:
			if _, err := c.svc.ResumeConsoleSession(r.Context(), secret, false); err != nil {
				return
			}
			if !send(": keep-alive\n\n") {
				return
			}
		}
		if sub.missed.Swap(false) && !send("event: changed\ndata: \n\n") {
			return
		}
	}
}
