package web

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/agentotp/agentotp"
)

// cookieSpec is how the session cookie is named and flagged.
type cookieSpec struct {
	name   string
	secure bool
}

func newCookieSpec(publicURL string) cookieSpec {
	if strings.HasPrefix(strings.ToLower(publicURL), "https://") {
		// __Host- makes browsers refuse the cookie unless it is Secure,
		// host-only and for "/": a sibling subdomain cannot plant one.
		return cookieSpec{name: "__Host-agentotp_console", secure: true}
	}
	return cookieSpec{name: "agentotp_console"}
}

func (cs cookieSpec) read(r *http.Request) (agentotp.Secret, bool) {
	c, err := r.Cookie(cs.name)
	if err != nil || c.Value == "" {
		return "", false
	}
	return agentotp.Secret(c.Value), true
}

// set stores the session secret. The browser keeps it no longer than the
// session can live; the server ends it earlier when idle or signed out.
func (cs cookieSpec) set(w http.ResponseWriter, secret agentotp.Secret) {
	http.SetCookie(w, &http.Cookie{
		Name: cs.name, Value: secret.Reveal(), Path: "/", MaxAge: int(agentotp.ConsoleSessionLifetime / time.Second),
		HttpOnly: true, Secure: cs.secure, SameSite: http.SameSiteStrictMode,
	})
}

func (cs cookieSpec) clear(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: cs.name, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: cs.secure, SameSite: http.SameSiteStrictMode})
}

// csrfToken derives the session's CSRF token from its secret: a page can
// carry it, and only a holder of the cookie can compute it. Nothing needs
// storing, and a new session has a new token.
func csrfToken(secret agentotp.Secret) string {
	m := hmac.New(sha256.New, []byte(secret.Reveal()))
	m.Write([]byte("agentotp console csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func validCSRF(want, got string) bool {
	return want != "" && hmac.Equal([]byte(want), []byte(got))
}

// Sign-in attempts per client address: a burst of 10, then one every 6 s.
// Keys carry 192 random bits, so this is not what stops guessing; it keeps
// a client from filling the audit trail with refused agent keys.
const (
	signInRate  = rate.Limit(1.0 / 6)
	signInBurst = 10
)

// signInPath is the sign-in page that returns to next afterwards.
func signInPath(next string) string {
	next = localNext(next)
	if next == "/ui/" {
		return "/ui/sign-in"
	}
	return "/ui/sign-in?" + url.Values{"next": {next}}.Encode()
}

// localNext returns next when it is a console page of this server, else
// the pending list: a sign-in link must not send anyone elsewhere.
func localNext(next string) string {
	const home = "/ui/"
	if !strings.HasPrefix(next, home) || strings.ContainsAny(next, "\\\x00\r\n\t") || len(next) > 2048 {
		return home
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" || u.Fragment != "" {
		return home
	}
	if path.Clean(u.Path) != strings.TrimSuffix(u.Path, "/") {
		return home // dot segments, doubled slashes
	}
	switch {
	case strings.HasPrefix(u.Path, "/ui/sign-"), strings.HasPrefix(u.Path, "/ui/static/"), u.Path == "/ui/events":
		return home
	}
	return next
}

type signInPage struct {
	base
	Next string
}

func (c *Console) signInForm(w http.ResponseWriter, r *http.Request) {
	next := localNext(r.URL.Query().Get("next"))
	if secret, ok := c.cookie.read(r); ok {
		if _, err := c.svc.ResumeConsoleSession(r.Context(), secret, false); err == nil {
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
	}
	c.render(w, r, http.StatusOK, "sign-in", &signInPage{base: c.base(nil, "Sign in", ""), Next: next})
}

func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, nil, agentotp.Errorf(agentotp.CodeValidation, "The form could not be read."))
		return
	}
	next := localNext(r.PostForm.Get("next"))
	again := func(status int, msg string) {
		c.render(w, r, status, "sign-in", &signInPage{base: base{Title: "Sign in", Error: msg}, Next: next})
	}
	if !c.signIns.allow(clientKey(r)) {
		w.Header().Set("Retry-After", "6")
		again(http.StatusTooManyRequests, "Too many sign-in attempts from here. Wait a few seconds and try again.")
		return
	}
	key := strings.TrimSpace(r.PostForm.Get("key"))
	secret, _, err := c.svc.OpenConsoleSession(r.Context(), key)
	if err != nil {
		switch agentotp.ErrorCode(err) {
		case agentotp.CodeUnauthorized:
			again(http.StatusUnauthorized, "That key does not sign anyone in. Paste your user key (uk_…).")
		case agentotp.CodeForbidden:
			again(http.StatusForbidden, sentence(err))
		default:
			c.fail(w, r, nil, err)
		}
		return
	}
	if old, ok := c.cookie.read(r); ok {
		// One browser, one session: the one it had ends here.
		c.endSession(r, old)
	}
	c.cookie.set(w, secret)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signOut(w http.ResponseWriter, r *http.Request, s *signedIn) {
	if err := c.endSession(r, s.secret); err != nil {
		c.fail(w, r, s, err)
		return
	}
	c.cookie.clear(w)
	http.Redirect(w, r, "/ui/sign-in", http.StatusSeeOther)
}

// endSession deletes a session and closes its live-update streams.
func (c *Console) endSession(r *http.Request, secret agentotp.Secret) error {
	c.live.endSession(secret.Hash())
	return c.svc.CloseConsoleSession(r.Context(), secret)
}

// addrLimiter is a token bucket per client address, its table bounded.
type addrLimiter struct {
	limit rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*addrEntry
	swept time.Time
}

type addrEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

// maxAddrs bounds the table: idle entries go first, and past it everything.
const maxAddrs = 10_000

func newAddrLimiter(limit rate.Limit, burst int) *addrLimiter {
	return &addrLimiter{limit: limit, burst: burst, m: map[string]*addrEntry{}}
}

func (l *addrLimiter) allow(key string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[key]
	if e == nil {
		if len(l.m) >= maxAddrs && now.Sub(l.swept) > 10*time.Second {
			l.swept = now
			for k, v := range l.m {
				if now.Sub(v.seen) > 10*time.Minute {
					delete(l.m, k)
				}
			}
		}
		if len(l.m) >= maxAddrs {
			clear(l.m)
		}
		e = &addrEntry{lim: rate.NewLimiter(l.limit, l.burst)}
		l.m[key] = e
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

// clientKey is the rate-limit bucket of a client: its address, or its /64
// for IPv6, where one host easily holds a whole /64.
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return host
}
