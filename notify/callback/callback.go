// Package callback delivers decision callbacks: when a permission that
// named a callbackUrl is approved, denied, expires or is revoked, the
// Notifier POSTs its status — never the token — to that URL, signed with
// the agent's callback secret (agentotp.CallbackSecret) over the timestamp
// and the body. Deliveries run in the background with retries, only to
// hosts on the operator's allow-list, and never to loopback, private or
// other internal addresses unless those addresses are listed themselves.
package callback

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/agentotp/agentotp"
)

// Agents loads an agent by id, to derive its callback secret at send time
// (so a rotated key signs at once). agentotp.Store satisfies it.
type Agents interface {
	Agent(ctx context.Context, id agentotp.AgentID) (*agentotp.Agent, error)
}

// Options configures a Notifier. Zero values pick the defaults.
type Options struct {
	// Hosts is the allow-list, the same entries as
	// agentotp.Options.CallbackHosts ("host" or "host:port").
	Hosts []string
	// Key is the server's callback key (at least 32 bytes).
	Key []byte
	// Agents loads the agent whose secret signs a delivery. Required.
	Agents Agents
	Logger *slog.Logger
	// Attempts bounds the tries of one delivery. Default 6.
	Attempts int
	// Backoff is the delay before the first retry; it doubles each time
	// up to MaxBackoff, with jitter. Defaults 1 s and 1 min.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// MaxRetryAfter caps a receiver's Retry-After. Default 10 min.
	MaxRetryAfter time.Duration
	// Timeout bounds one attempt, connection to response. Default 10 s.
	Timeout time.Duration
	// Concurrency bounds attempts in flight at once. Default 4.
	Concurrency int
	// QueueSize bounds deliveries not yet finished (waiting, in flight or
	// between retries); past it new ones are dropped with a warning.
	// Default 1000.
	QueueSize int
	// Clock stamps events and signatures. Default time.Now.
	Clock func() time.Time
	// Observe, when set, is called once per delivery when it ends:
	// delivered, given up or refused. Calls come from the deliveries'
	// goroutines, possibly at the same time.
	Observe func(Result)
}

// Result is how one delivery ended.
type Result struct {
	EventID      string
	PermissionID agentotp.PermissionID
	Event        string // "permission.approved", …
	Host         string // the URL's host[:port]
	Attempts     int    // HTTP attempts made (0 when refused before sending)
	StatusCode   int    // the last response's status, 0 without one
	Err          error  // nil when delivered
}

// Delivered reports whether the receiver answered 2xx.
func (r Result) Delivered() bool { return r.Err == nil }

// Notifier sends decision callbacks. It implements agentotp.Notifier;
// NotifyResolved only queues, so the service is never held up. Close stops
// it; deliveries still queued or waiting to retry are dropped.
type Notifier struct {
	opts   Options
	allow  []agentotp.CallbackHost
	log    *slog.Logger
	client *http.Client
	dialer *net.Dialer
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)

	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending int
	closed  bool
}

var _ agentotp.Notifier = (*Notifier)(nil)

// New returns a Notifier. It fails when the allow-list does not parse, the
// key is shorter than 32 bytes or Agents is missing.
func New(opts Options) (*Notifier, error) {
	allow, err := agentotp.ParseCallbackHosts(opts.Hosts)
	if err != nil {
		return nil, fmt.Errorf("callback allow-list: %w", err)
	}
	if len(opts.Key) < 32 {
		return nil, errors.New("callback key: must be at least 32 bytes")
	}
	if opts.Agents == nil {
		return nil, errors.New("callback: Agents is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.Backoff, time.Second)
	def(&opts.MaxBackoff, time.Minute)
	def(&opts.MaxRetryAfter, 10*time.Minute)
	def(&opts.Timeout, 10*time.Second)
	if opts.Attempts <= 0 {
		opts.Attempts = 6
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1000
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	n := &Notifier{opts: opts, allow: allow, log: opts.Logger, sem: make(chan struct{}, opts.Concurrency)}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
	n.dialer = &net.Dialer{Timeout: min(5*time.Second, opts.Timeout), ControlContext: n.control}
	n.client = &http.Client{
		Timeout: opts.Timeout,
		Transport: &http.Transport{
			Proxy:                 nil, // a proxy would dial on our behalf, past the address check
			DialContext:           n.dial,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   min(5*time.Second, opts.Timeout),
			ResponseHeaderTimeout: opts.Timeout,
			MaxIdleConns:          16,
			IdleConnTimeout:       30 * time.Second,
		},
		// Never follow a redirect: the target could be anywhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return n, nil
}

// Close stops delivering and waits for the deliveries under way to end.
func (n *Notifier) Close() error {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.cancel()
	n.wg.Wait()
	n.client.CloseIdleConnections()
	return nil
}

// NotifyPending does nothing: callbacks report outcomes only.
func (n *Notifier) NotifyPending(context.Context, *agentotp.Permission, *agentotp.Agent) error {
	return nil
}

// NotifyResolved queues the callback of a permission that names one. It
// returns at once; an error means the delivery was refused or dropped.
func (n *Notifier) NotifyResolved(_ context.Context, p *agentotp.Permission) error {
	if p.CallbackURL == "" {
		return nil
	}
	d := &delivery{eventID: newEventID(), perm: p.ID, agent: p.AgentID, event: "permission." + string(p.Status)}
	u, err := agentotp.ParseCallbackURL(p.CallbackURL)
	if err != nil {
		return n.refuse(d, fmt.Errorf("callback for %s: invalid URL: %w", p.ID, err))
	}
	d.url, d.host = u, u.Host
	if !agentotp.CallbackListed(n.allow, u) {
		// The allow-list changed since the request was accepted.
		return n.refuse(d, fmt.Errorf("callback for %s: host %q is not on the callback allow-list", p.ID, u.Host))
	}
	if p.AgentID == "" {
		return n.refuse(d, fmt.Errorf("callback for %s: the agent was deleted", p.ID))
	}
	if d.body, err = json.Marshal(newEvent(p, d.eventID, n.opts.Clock())); err != nil {
		return n.refuse(d, fmt.Errorf("callback for %s: encode: %w", p.ID, err))
	}
	n.mu.Lock()
	switch {
	case n.closed:
		n.mu.Unlock()
		return n.refuse(d, fmt.Errorf("callback for %s: notifier closed", p.ID))
	case n.pending >= n.opts.QueueSize:
		n.mu.Unlock()
		n.log.Warn("callback queue full; delivery dropped", "permission", p.ID, "event", d.event, "host", d.host, "queue", n.opts.QueueSize)
		return n.refuse(d, fmt.Errorf("callback for %s: queue full (%d)", p.ID, n.opts.QueueSize))
	}
	n.pending++
	n.wg.Add(1)
	n.mu.Unlock()
	go n.run(d)
	return nil
}

func (n *Notifier) refuse(d *delivery, err error) error {
	n.observe(d, 0, 0, err)
	return err
}

func (n *Notifier) observe(d *delivery, attempts, status int, err error) {
	if n.opts.Observe != nil {
		n.opts.Observe(Result{EventID: d.eventID, PermissionID: d.perm, Event: d.event, Host: d.host,
			Attempts: attempts, StatusCode: status, Err: err})
	}
}

// delivery is one callback, the same bytes on every attempt.
type delivery struct {
	eventID string
	perm    agentotp.PermissionID
	agent   agentotp.AgentID
	event   string
	url     *url.URL
	host    string
	body    []byte
}

// event is the wire shape of a callback body (otpclient.CallbackEvent
// reads it). It leaves out the token and the scope: a callback is a
// signal, and the agent reads the grant with its key as usual.
type event struct {
	Event     string    `json:"event"`
	EventID   string    `json:"eventId"`
	ID        string    `json:"id"`
	Status    string    `json:"status"`
	Action    string    `json:"action"`
	Resource  string    `json:"resource"`
	AgentID   string    `json:"agentId"`
	Reason    string    `json:"reason"`
	DecidedBy string    `json:"decidedBy"`
	DecidedAt time.Time `json:"decidedAt,omitzero"`
	Timestamp time.Time `json:"timestamp"`
}

func newEvent(p *agentotp.Permission, id string, now time.Time) event {
	e := event{Event: "permission." + string(p.Status), EventID: id, ID: string(p.ID), Status: string(p.Status),
		Action: p.Action, Resource: p.Resource, AgentID: string(p.AgentID), DecidedBy: p.DeciderKind(),
		Timestamp: now.UTC()}
	if !p.DecidedAt.IsZero() {
		e.DecidedAt = p.DecidedAt.UTC()
	}
	switch {
	case p.Status == agentotp.StatusApproved || p.Status == agentotp.StatusDenied:
		e.Reason = p.DecisionReason
	case p.Status == agentotp.StatusExpired && p.DecidedBy == "timeout":
		e.Reason = p.DecisionReason
	case p.Status == agentotp.StatusExpired:
		e.Reason = "the token expired"
	case p.Status == agentotp.StatusRevoked:
		e.Reason = "the permission was revoked"
	}
	return e
}

func newEventID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return "dlv_" + hex.EncodeToString(b[:])
}

// run makes up to Attempts tries, waiting with capped exponential backoff
// and jitter (or the receiver's Retry-After) between them.
func (n *Notifier) run(d *delivery) {
	defer func() {
		n.mu.Lock()
		n.pending--
		n.mu.Unlock()
		n.wg.Done()
	}()
	log := n.log.With("permission", d.perm, "event", d.event, "eventId", d.eventID, "host", d.host)
	for attempt := 1; ; attempt++ {
		res := n.attempt(d)
		if res.err == nil {
			log.Debug("callback delivered", "attempts", attempt, "status", res.status)
			n.observe(d, attempt, res.status, nil)
			return
		}
		if !res.retry || attempt >= n.opts.Attempts || n.ctx.Err() != nil {
			log.Warn("callback not delivered", "attempts", attempt, "status", res.status, "err", res.err)
			n.observe(d, attempt, res.status, res.err)
			return
		}
		wait := n.backoff(attempt)
		if res.retryAfter > wait {
			wait = min(res.retryAfter, n.opts.MaxRetryAfter)
		}
		log.Debug("callback attempt failed; retrying", "attempt", attempt, "status", res.status, "in", wait, "err", res.err)
		t := time.NewTimer(wait)
		select {
		case <-n.ctx.Done():
			t.Stop()
			n.observe(d, attempt, res.status, fmt.Errorf("notifier closed before retry: %w", res.err))
			return
		case <-t.C:
		}
	}
}

// backoff returns the wait after the given failed attempt: Backoff·2^(n-1)
// capped at MaxBackoff, then jittered into its upper half.
func (n *Notifier) backoff(attempt int) time.Duration {
	d := n.opts.Backoff
	for i := 1; i < attempt && d < n.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, n.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

type outcome struct {
	status     int
	retry      bool
	retryAfter time.Duration
	err        error
}

// attempt sends the delivery once.
func (n *Notifier) attempt(d *delivery) outcome {
	select {
	case n.sem <- struct{}{}:
		defer func() { <-n.sem }()
	case <-n.ctx.Done():
		return outcome{err: n.ctx.Err()}
	}
	// The allow-list is checked again at send time, not only at request.
	if !agentotp.CallbackListed(n.allow, d.url) {
		return outcome{err: fmt.Errorf("host %q is not on the callback allow-list", d.host)}
	}
	agent, err := n.opts.Agents.Agent(n.ctx, d.agent)
	switch {
	case errors.Is(err, agentotp.ErrNotFound):
		return outcome{err: errors.New("the agent was deleted")}
	case err != nil:
		return outcome{retry: true, err: fmt.Errorf("load agent: %w", err)}
	case !agent.Active:
		return outcome{err: errors.New("the agent is disabled")}
	}
	secret := agentotp.CallbackSecret(n.opts.Key, agent)
	ts := n.opts.Clock().Unix()

	ctx, cancel := context.WithTimeout(n.ctx, n.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url.String(), bytes.NewReader(d.body))
	if err != nil {
		return outcome{err: errors.New("cannot build the request")}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "agentotp-callback/1")
	req.Header.Set("X-Agentotp-Event-Id", d.eventID)
	req.Header.Set("X-Agentotp-Signature", "t="+strconv.FormatInt(ts, 10)+",v1="+agentotp.CallbackSignature(secret, ts, d.body))
	res, err := n.client.Do(req)
	if err != nil {
		// url.Error repeats the URL, whose path or query may hold the
		// receiver's secrets: keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		var refused *refusedError
		return outcome{retry: !errors.As(err, &refused) && n.ctx.Err() == nil, err: err}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	_ = res.Body.Close()
	out := outcome{status: res.StatusCode}
	switch {
	case res.StatusCode >= 200 && res.StatusCode < 300:
		return out
	case res.StatusCode == http.StatusTooManyRequests || res.StatusCode == http.StatusRequestTimeout || res.StatusCode >= 500:
		out.retry = true
		out.retryAfter = retryAfter(res.Header.Get("Retry-After"), n.opts.Clock())
	case res.StatusCode >= 300 && res.StatusCode < 400:
		out.err = fmt.Errorf("receiver answered %d; redirects are not followed", res.StatusCode)
		return out
	}
	out.err = fmt.Errorf("receiver answered %d", res.StatusCode)
	return out
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// refusedError is a dial the SSRF rules refused.
type refusedError struct{ addr netip.Addr }

func (e *refusedError) Error() string {
	return "refused to connect to " + e.addr.String() + ": loopback, private and other internal addresses need to be on the callback allow-list"
}

// dial resolves the host itself and connects only to addresses the rules
// allow, so a name that resolves (or rebinds) to an internal address is
// never reached. The dialer's Control checks the final address again.
func (n *Notifier) dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = n.lookup(ctx, host); err != nil {
		return nil, err
	}
	var firstErr error
	for _, a := range addrs {
		a = a.Unmap()
		if !n.reachable(a, port) {
			if firstErr == nil {
				firstErr = &refusedError{addr: a}
			}
			continue
		}
		conn, err := n.dialer.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("no address for %s", host)
	}
	return nil, firstErr
}

// control runs on the socket about to connect: the last word on where a
// callback may go, whatever resolved the address.
func (n *Notifier) control(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("unexpected dial address %q", address)
	}
	if a := ap.Addr().Unmap(); !n.reachable(a, strconv.Itoa(int(ap.Port()))) {
		return &refusedError{addr: a}
	}
	return nil
}

// reachable reports whether a callback may connect to a:port. Public
// addresses may be reached; internal ones only when the allow-list names
// that address itself (as an IP, with this port or none), or names
// "localhost" for a loopback address.
func (n *Notifier) reachable(a netip.Addr, port string) bool {
	if public(a) {
		return true
	}
	for _, h := range n.allow {
		if h.Port != "" && h.Port != port {
			continue
		}
		if h.Host == "localhost" && a.IsLoopback() {
			return true
		}
		if ip, err := netip.ParseAddr(h.Host); err == nil && ip.Unmap() == a {
			return true
		}
	}
	return false
}

var internal = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network"
		"100.64.0.0/10",   // carrier-grade NAT (RFC 6598)
		"192.0.0.0/24",    // IETF protocol assignments
		"198.18.0.0/15",   // benchmarking
		"240.0.0.0/4",     // reserved, and the broadcast address
		"fec0::/10",       // deprecated site-local
		"64:ff9b:1::/48",  // local-use NAT64 (RFC 8215)
		"100::/64",        // discard-only
		"2001:db8::/32",   // documentation
		"192.0.2.0/24",    // documentation
		"198.51.100.0/24", // documentation
		"203.0.113.0/24",  // documentation
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// public reports whether a is a global unicast address outside the
// loopback, private (RFC 1918, RFC 4193), link-local, CGNAT, unspecified,
// multicast and reserved ranges. IPv6 forms that embed an IPv4 address
// (NAT64, 6to4) are judged by that address.
func public(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() || !a.IsGlobalUnicast() || a.Zone() != "" {
		return false
	}
	for _, p := range internal {
		if p.Contains(a) {
			return false
		}
	}
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			return public(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		case sixToFour.Contains(a):
			return public(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
		}
	}
	return true
}
