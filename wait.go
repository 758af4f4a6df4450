package agentotp

import "sync"

// broker wakes in-process waiters (long-poll, SSE) when a permission
// changes. Waiters also re-read the store periodically, so changes made by
// another process sharing the database are seen too, only later.
type broker struct {
	mu   sync.Mutex
	subs map[PermissionID]map[chan struct{}]struct{}
}

func newBroker() *broker {
	return &broker{subs: make(map[PermissionID]map[chan struct{}]struct{})}
}

// subscribe returns a channel that receives a value after each change of id.
func (b *broker) subscribe(id PermissionID) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	m := b.subs[id]
	if m == nil {
		m = make(map[chan struct{}]struct{})
		b.subs[id] = m
	}
	m[ch] = struct{}{}
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		delete(b.subs[id], ch)
		if len(b.subs[id]) == 0 {
			delete(b.subs, id)
		}
		b.mu.Unlock()
	}
}

func (b *broker) publish(id PermissionID) {
	b.mu.Lock()
	for ch := range b.subs[id] {
		select {
		case ch <- struct{}{}:
		default: // a wake-up is already queued
		}
	}
	b.mu.Unlock()
}

// publishAll wakes every waiter (after a change feed lost notifications).
func (b *broker) publishAll() {
	b.mu.Lock()
	for _, m := range b.subs {
		for ch := range m {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	b.mu.Unlock()
}
