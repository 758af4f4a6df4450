package mcpserver

import (
	"sync"
	"time"

	"github.com/agentotp/agentotp"
)

// guards keeps a Guard per agent. A Guard that fills forgets all its
// pending calls; with one per agent, an agent's own calls are all it can
// make forgotten.
type guards struct {
	wait time.Duration
	mu   sync.Mutex
	m    map[string]*agentGuard
	tick uint64
}

type agentGuard struct {
	guard *agentotp.Guard
	used  uint64 // guards.tick when last handed out
}

// maxGuards bounds the agents remembered. Past it the least recently used
// agent's Guard goes: an agent has one identity, so only that many other
// agents calling can push its Guard out, never one agent's calls.
const maxGuards = 1000

func newGuards(wait time.Duration) *guards {
	return &guards{wait: wait, m: map[string]*agentGuard{}}
}

// of returns identity's Guard.
func (g *guards) of(identity string) *agentotp.Guard {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tick++
	e, ok := g.m[identity]
	if !ok {
		if len(g.m) >= maxGuards {
			oldest, used := "", g.tick
			for id, o := range g.m {
				if o.used < used {
					oldest, used = id, o.used
				}
			}
			delete(g.m, oldest)
		}
		e = &agentGuard{guard: agentotp.NewGuard(g.wait)}
		g.m[identity] = e
	}
	e.used = g.tick
	return e.guard
}
