package mcpserver

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"golang.org/x/time/rate"

	"github.com/agentotp/agentotp"
)

// HTTPOptions configures the HTTP transports.
type HTTPOptions struct {
	// Path is where streamable HTTP is served (default /mcp). The legacy
	// SSE transport lives under it: Path+"/sse" opens the stream and
	// Path+"/message" takes the client's messages.
	Path string
	// AllowedOrigins are the origins (scheme://host[:port]) a browser may
	// call from besides loopback ones; requests from any other Origin are
	// refused (DNS rebinding, cross-site calls).
	AllowedOrigins []string
}

// HTTP serves the streamable HTTP transport at opts.Path and the SSE
// transport under it. Every request must already carry its agent
// (WithAgent), put there by authentication in front of this handler; one
// without an agent is refused. A session belongs to the agent that opened
// it: another agent presenting its id is told it does not exist.
func (s *Server) HTTP(opts HTTPOptions) http.Handler {
	if opts.Path == "" {
		opts.Path = "/mcp"
	}
	opts.Path = strings.TrimRight(opts.Path, "/")
	h := &httpTransport{path: opts.Path, owners: newOwners(), origins: map[string]bool{}}
	for _, o := range opts.AllowedOrigins {
		if u, err := url.Parse(o); err == nil && u.Host != "" {
			h.origins[strings.ToLower(u.Scheme+"://"+u.Host)] = true
		}
	}
	h.streamable = server.NewStreamableHTTPServer(s.mcp,
		server.WithEndpointPath(opts.Path),
		server.WithSessionIdManagerResolver(h),
		server.WithSessionIdleTTL(sessionIdle),
		server.WithHTTPContextFunc(func(ctx context.Context, _ *http.Request) context.Context {
			return withTransport(ctx, "streamable-http")
		}),
		server.WithStreamableHTTPLogger(s.log),
	)
	h.sse = server.NewSSEServer(s.mcp,
		server.WithStaticBasePath(opts.Path),
		server.WithSSEEndpoint("/sse"),
		server.WithMessageEndpoint("/message"),
		server.WithUseFullURLForMessageEndpoint(false),
		server.WithKeepAliveInterval(25*time.Second),
		server.WithSessionIDGenerator(func(ctx context.Context, _ *http.Request) (string, error) {
			a, _ := agentFrom(ctx)
			id := newSessionID()
			h.owners.bind(id, a.identity)
			if hold, ok := ctx.Value(sseHoldKey{}).(*string); ok {
				*hold = id
			}
			return id, nil
		}),
		server.WithSSEContextFunc(func(ctx context.Context, _ *http.Request) context.Context {
			return withTransport(ctx, "sse")
		}),
	)
	return h
}

// sessionIdle is how long an unused session is remembered.
const sessionIdle = time.Hour

type httpTransport struct {
	path       string
	streamable *server.StreamableHTTPServer
	sse        *server.SSEServer
	owners     *owners
	origins    map[string]bool
}

type sseHoldKey struct{}

func (h *httpTransport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, ok := agentFrom(r.Context())
	if !ok {
		unauthorized(w, "missing API key: send Authorization: Bearer <agent key>")
		return
	}
	if !h.originAllowed(r) {
		http.Error(w, "Forbidden: origin not allowed", http.StatusForbidden)
		return
	}
	switch r.URL.Path {
	case h.path:
		// mcp-go checks a POST's session with the manager, but opens a GET
		// stream on any session id and answers a refused DELETE with 500.
		if id := r.Header.Get(server.HeaderKeySessionID); r.Method != http.MethodPost && id != "" && !h.owners.owns(id, a.identity) {
			http.Error(w, "Invalid session ID", http.StatusNotFound)
			return
		}
		h.streamable.ServeHTTP(w, r)
	case h.path + "/sse":
		// Learn the id the stream is given, and forget it when it ends.
		var id string
		r = r.WithContext(context.WithValue(r.Context(), sseHoldKey{}, &id))
		defer func() {
			if id != "" {
				h.owners.drop(id)
			}
		}()
		h.sse.SSEHandler().ServeHTTP(w, r)
	case h.path + "/message":
		if !h.owners.owns(r.URL.Query().Get("sessionId"), a.identity) {
			http.Error(w, "Invalid session ID", http.StatusNotFound)
			return
		}
		h.sse.MessageHandler().ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// originAllowed refuses browser calls from other sites: an Origin header,
// when present, must be a loopback origin or one configured.
func (h *httpTransport) originAllowed(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" {
		return false
	}
	if h.origins[strings.ToLower(u.Scheme+"://"+u.Host)] {
		return true
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ResolveSessionIdManager binds streamable HTTP sessions to the agent of
// the request that uses them.
func (h *httpTransport) ResolveSessionIdManager(r *http.Request) server.SessionIdManager {
	identity := ""
	if r != nil {
		if a, ok := agentFrom(r.Context()); ok {
			identity = a.identity
		}
	}
	return sessionManager{owners: h.owners, identity: identity}
}

type sessionManager struct {
	owners   *owners
	identity string
}

func (m sessionManager) Generate() string {
	id := newSessionID()
	m.owners.bind(id, m.identity)
	return id
}

func (m sessionManager) Validate(id string) (bool, error) {
	if m.identity == "" || !m.owners.owns(id, m.identity) {
		return false, errUnknownSession
	}
	return false, nil
}

func (m sessionManager) Terminate(id string) (bool, error) {
	if m.identity == "" || !m.owners.owns(id, m.identity) {
		return false, errUnknownSession
	}
	m.owners.drop(id)
	return false, nil
}

type sessionError string

func (e sessionError) Error() string { return string(e) }

const errUnknownSession = sessionError("session not found")

// owners remembers which agent opened each session.
type owners struct {
	mu        sync.Mutex
	m         map[string]owner
	lastSweep time.Time
}

type owner struct {
	identity string
	seen     time.Time
}

// maxSessions bounds the table; idle sessions are swept when it fills.
const maxSessions = 10_000

func newOwners() *owners { return &owners{m: map[string]owner{}} }

func (o *owners) bind(id, identity string) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.m) >= maxSessions && now.Sub(o.lastSweep) > time.Second {
		o.lastSweep = now
		for k, v := range o.m {
			if now.Sub(v.seen) > sessionIdle {
				delete(o.m, k)
			}
		}
	}
	o.m[id] = owner{identity: identity, seen: now}
}

// owns reports whether id is a live session opened by identity, in
// constant time with respect to the identity.
func (o *owners) owns(id, identity string) bool {
	if id == "" || identity == "" {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	v, ok := o.m[id]
	if !ok || subtle.ConstantTimeCompare([]byte(v.identity), []byte(identity)) != 1 {
		return false
	}
	v.seen = time.Now()
	o.m[id] = v
	return true
}

func (o *owners) drop(id string) {
	o.mu.Lock()
	delete(o.m, id)
	o.mu.Unlock()
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "mcp-session-" + hex.EncodeToString(b[:])
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="agentotp"`)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	m, _ := json.Marshal(msg)
	_, _ = w.Write([]byte(`{"success":false,"error":{"code":"UNAUTHORIZED","message":` + string(m) + `}}`))
}

// SingleAgent authenticates every request against one agent key (the key
// `agentotp mcp --transport http` was started with) and binds that agent.
// Failed attempts are limited per client address.
func SingleAgent(key string, perms Permissions, identity string, next http.Handler) http.Handler {
	lim := newFailLimiter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearer(r.Header.Get("Authorization"))
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(key)) != 1 {
			if !lim.allow(r) {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "too many failed attempts", http.StatusTooManyRequests)
				return
			}
			unauthorized(w, "missing or wrong API key: send Authorization: Bearer <agent key>")
			return
		}
		next.ServeHTTP(w, r.WithContext(WithAgent(r.Context(), perms, identity)))
	})
}

func bearer(h string) (string, bool) {
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	key = strings.TrimSpace(key)
	return key, key != ""
}

// failLimiter allows a few failed authentications per second per client
// address, so a key cannot be guessed at line rate.
type failLimiter struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
}

func newFailLimiter() *failLimiter { return &failLimiter{m: map[string]*rate.Limiter{}} }

func (f *failLimiter) allow(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) > 10_000 {
		clear(f.m)
	}
	l := f.m[host]
	if l == nil {
		l = rate.NewLimiter(5, 10)
		f.m[host] = l
	}
	return l.Allow()
}

// ServiceAgents binds each request to the agent that authentication in
// front of it put in the context (agentotp.WithPrincipal, as
// httpapi.Server.AgentOnly does), acting in process on svc. A request
// without an agent principal goes on unbound and is refused by HTTP.
func ServiceAgents(svc *agentotp.Service, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, ok := agentotp.PrincipalFrom(r.Context()); ok && p.IsAgent() {
			r = r.WithContext(WithAgent(r.Context(), svc.AgentSession(p), "agent:"+string(p.Agent.ID)))
		}
		next.ServeHTTP(w, r)
	})
}
