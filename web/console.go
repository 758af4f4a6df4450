// Package web is the approval console under /ui/: server-rendered pages
// where approvers and admins sign in with their user key, see the requests
// that wait for a person, and approve them — optionally narrowing the scope
// — or deny them with a reason. Admins also read the audit trail, with its
// verification status, and the agents and users.
//
// Every decision goes through Service.Decide, as the API's do, and is
// audited with the person's user id and via "console". Pages are rendered
// by html/template from the request's structured fields, so everything an
// agent supplied is escaped by the template engine, and invisible or
// direction-changing characters are shown, not obeyed. Assets are embedded;
// there is no JavaScript framework and no build step. One small script,
// served from the assets (the Content-Security-Policy allows no inline
// script), refreshes the pending list live over Server-Sent Events; every
// page works without it.
//
// Sessions are opaque: the cookie holds a random secret whose SHA-256 the
// store keeps (see agentotp.ConsoleSession), HttpOnly, SameSite=Strict,
// Secure when the public URL is https. Every state change is a POST
// carrying a per-session CSRF token, and cross-origin POSTs are refused
// before that; nothing changes on GET.
//
// Wiring:
//
//	live := web.NewLive()                       // an agentotp.Notifier
//	svc := agentotp.NewService(store, agentotp.Options{Notifier: live, …})
//	api.Handle("/ui/", web.New(svc, web.Options{Live: live, PublicURL: …}))
package web

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

// Options configures the console.
type Options struct {
	// PublicURL is the server's public base URL. When it is https, the
	// session cookie is Secure and named with the __Host- prefix.
	PublicURL string
	// Live is the notifier that feeds the pages' live updates; it must be
	// among the service's notifiers. nil makes one that hears nothing,
	// so pages update only when reloaded.
	Live   *Live
	Logger *slog.Logger
}

// Console serves the pages under /ui/. It implements http.Handler.
type Console struct {
	svc     *agentotp.Service
	log     *slog.Logger
	live    *Live
	cookie  cookieSpec
	pages   *pages
	assets  *assets
	signIns *addrLimiter
	verify  verifyCache
	handler http.Handler

	// heartbeat spaces keep-alive comments on live-update streams, which
	// also re-check the session.
	heartbeat time.Duration
}

// New returns the console for svc, to be mounted at /ui/.
func New(svc *agentotp.Service, opts Options) *Console {
	c := &Console{
		svc: svc, log: opts.Logger, live: opts.Live,
		cookie:    newCookieSpec(opts.PublicURL),
		assets:    loadAssets(),
		signIns:   newAddrLimiter(signInRate, signInBurst),
		heartbeat: 15 * time.Second,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.live == nil {
		c.live = NewLive()
	}
	c.pages = parsePages(c.assets)

	m := http.NewServeMux()
	m.Handle("GET /ui/{$}", c.page(c.pending))
	m.HandleFunc("GET /ui/sign-in", c.signInForm)
	m.HandleFunc("POST /ui/sign-in", c.signIn)
	m.Handle("POST /ui/sign-out", c.form(c.signOut))
	m.Handle("GET /ui/requests/{id}", c.page(c.request))
	m.Handle("POST /ui/requests/{id}/approve", c.form(c.approve))
	m.Handle("POST /ui/requests/{id}/deny", c.form(c.deny))
	m.Handle("GET /ui/audit", c.admin(c.audit))
	m.Handle("GET /ui/agents", c.admin(c.agents))
	m.Handle("GET /ui/users", c.admin(c.users))
	m.HandleFunc("GET /ui/events", c.events)
	m.Handle("GET /ui/static/", c.assets)
	m.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, nil, agentotp.Errorf(agentotp.CodeNotFound, "There is no such page."))
	})

	// Sec-Fetch-Site and Origin checks refuse cross-site POSTs, sign-in
	// included, before the CSRF token is even looked at.
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, nil, agentotp.Errorf(agentotp.CodeForbidden, "This form was sent from another site, so nothing changed."))
	}))
	c.handler = cop.Handler(m)
	return c
}

// contentSecurityPolicy allows the console's own stylesheet, script and
// icon, fetches and event streams to itself, forms posting to itself, and
// nothing else: no inline script or style, no plugins, no framing.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if !strings.HasPrefix(r.URL.Path, "/ui/static/") {
		// Pages show who may approve what: no cache keeps a copy.
		h.Set("Cache-Control", "no-store")
	}
	ctx := agentotp.WithChannel(r.Context(), agentotp.Channel{Via: "console"})
	c.handler.ServeHTTP(w, r.WithContext(ctx))
}

// pageFunc serves a page to a signed-in person.
type pageFunc func(w http.ResponseWriter, r *http.Request, s *signedIn)

// signedIn is the person behind a request and their session.
type signedIn struct {
	p      agentotp.Principal
	secret agentotp.Secret
	csrf   string
}

func (s *signedIn) user() *agentotp.User { return s.p.User }

// page resolves the session, sending a visitor without one to sign in and
// back here afterwards.
func (c *Console) page(fn pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, ok := c.session(w, r)
		if !ok {
			return
		}
		fn(w, r, s)
	})
}

// admin is page for admins only.
func (c *Console) admin(fn pageFunc) http.Handler {
	return c.page(func(w http.ResponseWriter, r *http.Request, s *signedIn) {
		if s.p.Role() != agentotp.RoleAdmin {
			c.fail(w, r, s, agentotp.Errorf(agentotp.CodeForbidden, "This page is for admins."))
			return
		}
		fn(w, r, s)
	})
}

// maxFormBytes bounds a form: a scope editor holds at most a 64 KiB object.
const maxFormBytes = 128 << 10

// form is page for a POST that changes something: it needs the session's
// CSRF token.
func (c *Console) form(fn pageFunc) http.Handler {
	return c.page(func(w http.ResponseWriter, r *http.Request, s *signedIn) {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			c.fail(w, r, s, agentotp.Errorf(agentotp.CodeValidation, "The form could not be read, so nothing changed."))
			return
		}
		if !validCSRF(s.csrf, r.PostForm.Get("csrf")) {
			c.fail(w, r, s, agentotp.Errorf(agentotp.CodeForbidden,
				"This form has expired or did not come from this console, so nothing changed. Reload the page and try again."))
			return
		}
		fn(w, r, s)
	})
}

// session returns the signed-in person, or answers the request itself: a
// redirect to sign-in, or an error page when the store is unavailable.
func (c *Console) session(w http.ResponseWriter, r *http.Request) (*signedIn, bool) {
	secret, ok := c.cookie.read(r)
	if ok {
		p, err := c.svc.ResumeConsoleSession(r.Context(), secret, true)
		if err == nil {
			return &signedIn{p: p, secret: secret, csrf: csrfToken(secret)}, true
		}
		if agentotp.ErrorCode(err) != agentotp.CodeUnauthorized {
			c.fail(w, r, nil, err)
			return nil, false
		}
		c.cookie.clear(w)
	}
	next := r.URL.RequestURI()
	if r.Method != http.MethodGet {
		// A form posted after the session ended: come back to the page
		// it was on, where nothing has changed.
		next = strings.TrimSuffix(strings.TrimSuffix(r.URL.Path, "/approve"), "/deny")
	}
	http.Redirect(w, r, signInPath(next), http.StatusSeeOther)
	return nil, false
}

// fail renders an error page for err. Messages of *agentotp.Error are meant
// for the person; anything else is logged and shown as a generic failure.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *signedIn, err error) {
	if r.Context().Err() != nil {
		return
	}
	code := agentotp.ErrorCode(err)
	msg := "Something went wrong, so nothing changed. Try again in a moment."
	var e *agentotp.Error
	switch {
	case code == agentotp.CodeInternal || code == agentotp.CodeUnavailable:
		c.log.Error("console request failed", "request_id", agentotp.RequestID(r.Context()), "method", r.Method,
			"path", r.URL.Path, "err", err)
	case asError(err, &e):
		msg = e.Message
	}
	c.render(w, r, statusOf(code), "error", &errorPage{base: c.base(s, "Error", ""), Message: msg, Status: statusOf(code)})
}

type errorPage struct {
	base
	Message string
	Status  int
}

func statusOf(code agentotp.Code) int {
	switch code {
	case agentotp.CodeValidation:
		return http.StatusUnprocessableEntity
	case agentotp.CodeUnauthorized:
		return http.StatusUnauthorized
	case agentotp.CodeForbidden:
		return http.StatusForbidden
	case agentotp.CodeNotFound:
		return http.StatusNotFound
	case agentotp.CodeConflict:
		return http.StatusConflict
	case agentotp.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case agentotp.CodeRateLimited:
		return http.StatusTooManyRequests
	case agentotp.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// base is what every page's layout needs.
type base struct {
	Title string
	User  *agentotp.User
	CSRF  string
	// Nav marks the current section in the navigation.
	Nav string
	// Live tells the script what to refresh: "pending", "request:<id>",
	// or "" for nothing.
	Live string
	// Error is shown above the page's content.
	Error string
}

// Admin reports whether the navigation shows the admin pages.
func (b base) Admin() bool { return b.User != nil && b.User.Role == agentotp.RoleAdmin }

func (c *Console) base(s *signedIn, title, nav string) base {
	b := base{Title: title, Nav: nav}
	if s != nil {
		b.User, b.CSRF = s.user(), s.csrf
	}
	return b
}

// withTimeout bounds the store work of one page.
func withTimeout(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 10*time.Second)
}
