package agentotp

import (
	"sync"
	"sync/atomic"
	"time"
)

// keyCacheTTL bounds how long a verified key is trusted without reading
// its agent or user again. Changes made through this Service (disable,
// rotate, delete, role) take effect at once; changes made by another
// process sharing the store (the CLI, a second instance) within this.
const keyCacheTTL = time.Second

// maxCachedKeys bounds the cache; past it, it starts over.
const maxCachedKeys = 10000

// keyCache remembers recently verified keys by their hash, so that an agent
// making many calls costs one store read per second, not one per call.
// Only successful look-ups are kept; a failure always asks the store.
type keyCache struct {
	mu      sync.Mutex
	entries map[string]cachedKey
	// gen moves on every invalidation: a look-up that began before one
	// does not store what it read (it may predate the change).
	gen atomic.Uint64
}

type cachedKey struct {
	agent *Agent
	user  *User
	until time.Time
}

// get returns a copy of the principal verified for hash, if still fresh.
func (c *keyCache) get(hash string, now time.Time) (Principal, bool) {
	c.mu.Lock()
	e, ok := c.entries[hash]
	c.mu.Unlock()
	if !ok || !now.Before(e.until) {
		return Principal{}, false
	}
	// Copies: callers own the principal they get.
	if e.agent != nil {
		a := *e.agent
		return Principal{Agent: &a}, true
	}
	u := *e.user
	return Principal{User: &u}, true
}

// put remembers p for hash unless the cache was invalidated since gen.
func (c *keyCache) put(hash string, p Principal, gen uint64, now time.Time) {
	e := cachedKey{until: now.Add(keyCacheTTL)}
	if p.Agent != nil {
		a := *p.Agent
		e.agent = &a
	} else {
		u := *p.User
		e.user = &u
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() != gen {
		return
	}
	if c.entries == nil || len(c.entries) >= maxCachedKeys {
		c.entries = make(map[string]cachedKey)
	}
	c.entries[hash] = e
}

// invalidate forgets every key: called after any agent or user changes.
func (c *keyCache) invalidate() {
	c.mu.Lock()
	c.gen.Add(1)
	c.entries = nil
	c.mu.Unlock()
}

// keyHash is the hash of the principal's key as stored.
func (p Principal) keyHash() string {
	if p.Agent != nil {
		return p.Agent.KeyHash
	}
	if p.User != nil {
		return p.User.KeyHash
	}
	return ""
}
