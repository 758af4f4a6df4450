// Package httpapi serves the agentotp HTTP API, wire-compatible with Agent
// OTP v0.1.1: the {success,data} envelope, camelCase fields, and the same
// routes and status codes, with the v0.1.1 defects fixed.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/agentotp/agentotp"
)

// Options configures the API server.
type Options struct {
	Logger *slog.Logger
	// PublicURL is the base for links in responses (no trailing slash).
	PublicURL string
	// RateLimit is requests per second per authenticated principal
	// (burst 2×). Zero picks the default of 50; negative disables.
	RateLimit float64
	// Version is reported by /health.
	Version string
	// Registry receives the API's metrics; nil creates one.
	Registry *prometheus.Registry
	// CallbackKey is the server's callback key (agentotp.CallbackSecret).
	// When set, the agent create and rotate-key responses carry the
	// agent's callbackSecret; when nil they leave it out.
	CallbackKey []byte
}

// Server is the HTTP API. It implements http.Handler.
type Server struct {
	svc       *agentotp.Service
	log       *slog.Logger
	publicURL string
	version   string
	mux       *http.ServeMux
	handler   http.Handler
	heartbeat time.Duration // keep-alive spacing on event streams

	callbackKey []byte

	limit     rate.Limit
	burst     int
	mu        sync.Mutex
	limiters  map[string]*limiterEntry
	lastSweep time.Time
	waiters   map[string]int // open long-polls and event streams per caller

	registry *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

type limiterEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

// New returns the API server for svc.
func New(svc *agentotp.Service, opts Options) *Server {
	if opts.PublicURL == "" {
		opts.PublicURL = svc.PublicURL()
	}
	s := &Server{
		svc: svc, log: opts.Logger, publicURL: strings.TrimRight(opts.PublicURL, "/"), version: opts.Version,
		mux: http.NewServeMux(), limiters: map[string]*limiterEntry{}, waiters: map[string]int{}, registry: opts.Registry,
		heartbeat: sseHeartbeat, callbackKey: opts.CallbackKey,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.version == "" {
		s.version = "dev"
	}
	switch {
	case opts.RateLimit < 0:
		s.limit = rate.Inf
	case opts.RateLimit == 0:
		s.limit, s.burst = 50, 100
	default:
		s.limit, s.burst = rate.Limit(opts.RateLimit), max(1, int(2*opts.RateLimit))
	}
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
		s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentotp_http_requests_total", Help: "HTTP requests by route and status code.",
	}, []string{"route", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "agentotp_http_request_duration_seconds", Help: "HTTP request latency by route.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 60},
	}, []string{"route"})
	s.registry.MustRegister(s.requests, s.latency)
	s.routes()
	s.handler = s.middleware(s.mux)
	return s
}

// Handle mounts an extra handler (console, MCP, Telegram webhook) under the
// same middleware.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// AgentOnly serves h to agent keys only, authenticated and rate-limited
// exactly like the API's agent routes, with the principal in the request
// context (agentotp.PrincipalFrom). The MCP endpoints are mounted with it.
func (s *Server) AgentOnly(h http.Handler) http.Handler {
	return s.auth(agentRole, func(w http.ResponseWriter, r *http.Request, p agentotp.Principal) {
		h.ServeHTTP(w, r.WithContext(agentotp.WithPrincipal(r.Context(), p)))
	})
}

// Registry returns the metrics registry, for adapters adding their own.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

type role int

// The zero value is the strictest role, so a route registered without
// thinking about it is admin-only rather than open.
const (
	adminRole role = iota
	agentRole
	staffRole // approver or admin
	agentOrStaff
	agentOrAdmin
)

type handlerFunc func(w http.ResponseWriter, r *http.Request, p agentotp.Principal)

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /health", s.health)
	m.HandleFunc("GET /ready", s.ready)
	m.HandleFunc("GET /api", s.apiInfo)
	m.Handle("GET /metrics", s.metricsHandler())

	m.Handle("POST /api/v1/permissions/request", s.auth(agentRole, s.requestPermission))
	m.Handle("GET /api/v1/permissions/{id}", s.auth(agentOrStaff, s.getPermission))
	m.Handle("GET /api/v1/permissions/{id}/events", s.auth(agentRole, s.permissionEvents))
	m.Handle("POST /api/v1/permissions/{id}/verify", s.auth(agentRole, s.verify))
	m.Handle("POST /api/v1/permissions/{id}/use", s.auth(agentRole, s.use))
	m.Handle("POST /api/v1/permissions/{id}/revoke", s.auth(agentOrAdmin, s.revoke))
	m.Handle("POST /api/v1/permissions/{id}/outcome", s.auth(agentRole, s.outcome))
	// Agents reach Decide so that a self-approval attempt is refused and
	// audited by the service (403 either way).
	m.Handle("POST /api/v1/permissions/{id}/decide", s.auth(agentOrStaff, s.decide))
	m.Handle("GET /api/v1/approvals", s.auth(staffRole, s.approvals))

	m.Handle("GET /api/v1/agents", s.auth(adminRole, s.listAgents))
	m.Handle("POST /api/v1/agents", s.auth(adminRole, s.createAgent))
	m.Handle("GET /api/v1/agents/{id}", s.auth(adminRole, s.getAgent))
	m.Handle("PATCH /api/v1/agents/{id}", s.auth(adminRole, s.updateAgent))
	m.Handle("DELETE /api/v1/agents/{id}", s.auth(adminRole, s.deleteAgent))
	m.Handle("POST /api/v1/agents/{id}/rotate-key", s.auth(adminRole, s.rotateAgent))

	m.Handle("GET /api/v1/users", s.auth(adminRole, s.listUsers))
	m.Handle("POST /api/v1/users", s.auth(adminRole, s.createUser))
	m.Handle("GET /api/v1/users/{id}", s.auth(adminRole, s.getUser))
	m.Handle("PATCH /api/v1/users/{id}", s.auth(adminRole, s.updateUser))
	m.Handle("DELETE /api/v1/users/{id}", s.auth(adminRole, s.deleteUser))
	m.Handle("POST /api/v1/users/{id}/rotate-key", s.auth(adminRole, s.rotateUser))

	m.Handle("GET /api/v1/policies", s.auth(adminRole, s.listPolicies))
	m.Handle("POST /api/v1/policies", s.auth(adminRole, s.createPolicy))
	m.Handle("GET /api/v1/policies/{id}", s.auth(adminRole, s.getPolicy))
	m.Handle("PATCH /api/v1/policies/{id}", s.auth(adminRole, s.updatePolicy))
	m.Handle("DELETE /api/v1/policies/{id}", s.auth(adminRole, s.deletePolicy))

	m.Handle("GET /api/v1/audit", s.auth(adminRole, s.listAudit))
	m.Handle("GET /api/v1/audit/permissions/{id}", s.auth(adminRole, s.auditPermission))
	m.Handle("GET /api/v1/audit/agents/{id}", s.auth(adminRole, s.auditAgent))
	m.Handle("GET /api/v1/audit/stats", s.auth(adminRole, s.auditStats))
	m.Handle("GET /api/v1/audit/verify", s.auth(adminRole, s.auditVerify))
	m.Handle("GET /api/v1/audit/export", s.auth(adminRole, s.auditExport))

	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, agentotp.Errorf(agentotp.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
}

// auth authenticates the bearer key, applies the role check and the
// per-principal rate limit. X-User-ID and any other header grant nothing.
func (s *Server) auth(need role, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := bearer(r.Header.Get("Authorization"))
		if !ok {
			if !s.allow(w, limitKey(r)) {
				return
			}
			writeError(w, agentotp.Errorf(agentotp.CodeUnauthorized, "missing API key: send Authorization: Bearer <key>"))
			return
		}
		p, err := s.svc.Authenticate(r.Context(), key)
		if err != nil {
			switch agentotp.ErrorCode(err) {
			case agentotp.CodeUnauthorized:
				// Failed keys are limited per client address.
				if !s.allow(w, limitKey(r)) {
					return
				}
			case agentotp.CodeForbidden:
				// A disabled key is still one caller: limited as itself.
				if !s.allow(w, "key:"+agentotp.HashSecret(key)) {
					return
				}
			}
			s.fail(w, r, err)
			return
		}
		// Limited before authorization, so refusals count too.
		kind, id := p.Actor()
		if !s.allow(w, kind+":"+id) {
			return
		}
		if !permitted(need, p) {
			writeError(w, forbidden(need))
			return
		}
		h(w, r, p)
	})
}

// bearer extracts the credential of an "Authorization: Bearer …" header;
// the scheme name is case-insensitive (RFC 9110 §11.1).
func bearer(h string) (string, bool) {
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	key = strings.TrimSpace(key)
	return key, key != ""
}

func permitted(need role, p agentotp.Principal) bool {
	switch need {
	case agentRole:
		return p.IsAgent()
	case staffRole:
		return !p.IsAgent() && p.Role().CanDecide()
	case adminRole:
		return p.Role() == agentotp.RoleAdmin
	case agentOrStaff:
		return p.IsAgent() || p.Role().CanDecide()
	case agentOrAdmin:
		return p.IsAgent() || p.Role() == agentotp.RoleAdmin
	}
	return false
}

func forbidden(need role) error {
	switch need {
	case agentRole:
		return agentotp.Errorf(agentotp.CodeForbidden, "this route is for agent keys")
	case staffRole:
		return agentotp.Errorf(agentotp.CodeForbidden, "this route is for approvers and admins")
	}
	return agentotp.Errorf(agentotp.CodeForbidden, "admin role required")
}

// Bounds on the limiter table: idle entries are swept at most every 10 s
// once it holds maxLimiters; past hardLimiters the per-address entries are
// dropped wholesale, so a flood of distinct addresses cannot grow memory or
// make every request scan a huge map.
const (
	maxLimiters  = 10_000
	hardLimiters = 100_000
	// MaxWaiters bounds the long-polls and event streams one caller may
	// hold open at once.
	MaxWaiters = 32
)

// allow applies the token-bucket limit for key, answering 429 with
// Retry-After when it is exhausted.
func (s *Server) allow(w http.ResponseWriter, key string) bool {
	if s.limit == rate.Inf {
		return true
	}
	now := time.Now()
	s.mu.Lock()
	e := s.limiters[key]
	if e == nil {
		s.sweepLimiters(now)
		e = &limiterEntry{lim: rate.NewLimiter(s.limit, s.burst)}
		s.limiters[key] = e
	}
	e.seen = now
	res := e.lim.ReserveN(now, 1)
	s.mu.Unlock()
	if delay := res.DelayFrom(now); delay > 0 {
		res.CancelAt(now)
		secs := int(delay/time.Second) + 1
		w.Header().Set("Retry-After", fmt.Sprint(secs))
		// v0.1.1 clients read these: the limit per minute, none left, and
		// when the next request is allowed (milliseconds since the epoch).
		w.Header().Set("X-RateLimit-Limit", fmt.Sprint(int(float64(s.limit)*60)))
		w.Header().Set("X-RateLimit-Remaining", "0")
		w.Header().Set("X-RateLimit-Reset", fmt.Sprint(now.Add(delay).UnixMilli()))
		writeError(w, agentotp.Errorf(agentotp.CodeRateLimited, "too many requests; retry after %d s", secs))
		return false
	}
	return true
}

// sweepLimiters runs under s.mu: at most every 10 s once the table is big,
// and at once when it is full.
func (s *Server) sweepLimiters(now time.Time) {
	full := len(s.limiters) >= hardLimiters
	due := len(s.limiters) >= maxLimiters && now.Sub(s.lastSweep) >= 10*time.Second
	if !full && !due {
		return
	}
	s.lastSweep = now
	for k, v := range s.limiters {
		if now.Sub(v.seen) > 10*time.Minute {
			delete(s.limiters, k)
		}
	}
	if len(s.limiters) >= hardLimiters {
		for k := range s.limiters {
			if strings.HasPrefix(k, "ip:") {
				delete(s.limiters, k)
			}
		}
	}
}

// holdWaiter reserves one of the caller's long-poll slots; release frees it.
func (s *Server) holdWaiter(p agentotp.Principal) (release func(), ok bool) {
	kind, id := p.Actor()
	key := kind + ":" + id
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiters[key] >= MaxWaiters {
		return nil, false
	}
	s.waiters[key]++
	return func() {
		s.mu.Lock()
		if s.waiters[key]--; s.waiters[key] <= 0 {
			delete(s.waiters, key)
		}
		s.mu.Unlock()
	}, true
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limitKey is the rate-limit bucket of an unauthenticated client: its
// address, or its /64 for IPv6, where one host easily owns a whole /64.
func limitKey(r *http.Request) string {
	ip := net.ParseIP(clientIP(r))
	if ip != nil && ip.To4() == nil {
		return "ip:" + ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return "ip:" + clientIP(r)
}

// fail writes err; internal errors are logged once here with the request id.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client left (or the server is stopping): nobody to answer.
		s.log.Debug("request abandoned", "request_id", agentotp.RequestID(r.Context()), "route", r.Pattern, "err", err)
		return
	}
	switch agentotp.ErrorCode(err) {
	case agentotp.CodeInternal, agentotp.CodeUnavailable:
		s.log.Error("request failed", "request_id", agentotp.RequestID(r.Context()), "method", r.Method,
			"route", r.Pattern, "err", err)
	}
	writeError(w, err)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush lets Server-Sent Events through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validRequestID accepts a caller's id only if it is short and plain, so it
// cannot inject into logs.
func validRequestID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		ctx := agentotp.WithRequestID(r.Context(), id)
		if ch, ok := agentotp.ParseChannel(r.Header.Get(agentotp.ChannelHeader)); ok {
			// Agent-asserted (agentotp mcp --url names itself and its
			// client); recorded in the audit as such, trusted for nothing.
			ctx = agentotp.WithChannel(ctx, ch)
		}
		r = r.WithContext(ctx)
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		sw := &statusWriter{ResponseWriter: w}
		if clean := cleanPath(r.URL.Path); clean != r.URL.Path {
			// The mux would redirect with an HTML body; an API answers
			// in its envelope, and clients should use the exact path.
			writeError(sw, agentotp.Errorf(agentotp.CodeNotFound, "no route for %s %s: use the clean path %s", r.Method, r.URL.Path, clean))
			s.requests.WithLabelValues("unclean", "404").Inc()
			return
		}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic", "request_id", id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				if sw.status == 0 {
					writeError(sw, fmt.Errorf("panic"))
				}
			}
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			status := sw.status
			if status == 0 {
				status = http.StatusOK
			}
			d := time.Since(start)
			s.requests.WithLabelValues(route, fmt.Sprint(status)).Inc()
			s.latency.WithLabelValues(route).Observe(d.Seconds())
			// Paths carry ids only; queries and bodies are never logged.
			s.log.Debug("http", "request_id", id, "method", r.Method, "path", r.URL.Path, "status", status, "duration", d)
		}()
		next.ServeHTTP(sw, r)
	})
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	writeData(w, http.StatusOK, map[string]any{"status": "healthy", "timestamp": ts(time.Now()), "version": s.version})
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.svc.Store().Ping(ctx); err != nil {
		s.log.Error("readiness check failed", "err", err)
		writeError(w, agentotp.Errorf(agentotp.CodeUnavailable, "store unavailable"))
		return
	}
	writeData(w, http.StatusOK, map[string]any{"status": "ready"})
}

func (s *Server) apiInfo(w http.ResponseWriter, _ *http.Request) {
	writeData(w, http.StatusOK, map[string]any{
		"name": "agentotp", "version": "v1",
		"description": "One-time permissions for AI agents: scoped, short-lived, policy- or human-approved.",
		"endpoints": map[string]string{"permissions": "/api/v1/permissions", "approvals": "/api/v1/approvals",
			"agents": "/api/v1/agents", "users": "/api/v1/users", "policies": "/api/v1/policies", "audit": "/api/v1/audit"},
	})
}

// metricsHandler serves Prometheus text to loopback callers and admins.
func (s *Server) metricsHandler() http.Handler {
	prom := promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})
	admin := s.auth(adminRole, func(w http.ResponseWriter, r *http.Request, _ agentotp.Principal) { prom.ServeHTTP(w, r) })
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ip := net.ParseIP(clientIP(r)); ip != nil && ip.IsLoopback() && r.Header.Get("Authorization") == "" {
			prom.ServeHTTP(w, r)
			return
		}
		admin.ServeHTTP(w, r)
	})
}

// cleanPath is path.Clean keeping a trailing slash, as the mux cleans.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}
