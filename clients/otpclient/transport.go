package otpclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/agentotp/agentotp"
)

// Version is sent in the default User-Agent.
const Version = "0.1.0"

// Defaults of the transport.
const (
	DefaultTimeout    = 30 * time.Second
	DefaultMaxRetries = 3
	DefaultMinBackoff = 200 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
	// maxPoll is the longest single long-poll the client asks for; the
	// server caps waits at 60 s.
	maxPoll = 55 * time.Second
)

// Option configures a Client or an Admin.
type Option func(*transport)

// WithHTTPClient sets the HTTP client (default: a client of its own with
// no overall timeout, over a transport the package's clients share that
// keeps up to 64 idle connections per server; per-attempt timeouts come
// from WithTimeout). A
// client's own Timeout must exceed the long-poll length (55 s) plus
// WithTimeout, or waits will be cut short.
func WithHTTPClient(hc *http.Client) Option {
	return func(t *transport) {
		if hc != nil {
			t.hc = hc
		}
	}
}

// WithTimeout bounds each HTTP attempt (default 30 s). A long-poll attempt
// gets its wait on top.
func WithTimeout(d time.Duration) Option {
	return func(t *transport) {
		if d > 0 {
			t.timeout = d
		}
	}
}

// WithRetries sets how many times a failed call is retried (default 3;
// 0 disables retries) and the backoff bounds: the n-th retry waits a random
// time in [d/2, d] with d = min(max, min·2ⁿ), or the server's Retry-After
// when that is longer.
func WithRetries(n int, minBackoff, maxBackoff time.Duration) Option {
	return func(t *transport) {
		t.maxRetries = max(0, n)
		if minBackoff > 0 {
			t.minBackoff = minBackoff
		}
		if maxBackoff > 0 {
			t.maxBackoff = max(maxBackoff, t.minBackoff)
		}
	}
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option {
	return func(t *transport) {
		if ua != "" {
			t.ua = ua
		}
	}
}

// WithLogger receives debug records of retries and waits (default: none).
// Keys and tokens never reach it.
func WithLogger(l *slog.Logger) Option {
	return func(t *transport) {
		if l != nil {
			t.log = l
		}
	}
}

// defaultTransport is shared by the clients that bring no HTTP client of
// their own. It keeps more idle connections per server than
// http.DefaultTransport's 2: a gateway's concurrent calls, each with its
// outcome record, would otherwise close and re-dial connections.
var defaultTransport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}()

// transport is the HTTP core shared by Client and Admin: envelope decoding,
// error mapping, per-attempt timeouts and retries.
type transport struct {
	base       string
	key        string
	hc         *http.Client
	timeout    time.Duration
	maxRetries int
	minBackoff time.Duration
	maxBackoff time.Duration
	ua         string
	log        *slog.Logger
}

func newTransport(baseURL, key string, opts []Option) *transport {
	t := &transport{
		base:       strings.TrimRight(baseURL, "/"),
		key:        key,
		hc:         &http.Client{Transport: defaultTransport},
		timeout:    DefaultTimeout,
		maxRetries: DefaultMaxRetries,
		minBackoff: DefaultMinBackoff,
		maxBackoff: DefaultMaxBackoff,
		ua:         "agentotp-go/" + Version,
		log:        slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(t)
	}
	return t
}

// retryMode says when a call may be repeated.
type retryMode int

const (
	// retrySafe: the call changes nothing, or repeating it cannot change
	// the outcome (reads, verify, idempotency-keyed requests): retried on
	// 429, 5xx and network errors.
	retrySafe retryMode = iota
	// retryUnsent: repeating could act twice (use, decide, create, rotate):
	// retried only when the server provably did nothing — a 429 (the rate
	// limit answers before any handler) or a connection that was never
	// established.
	retryUnsent
)

type call struct {
	method string
	path   string
	query  url.Values
	body   any
	mode   retryMode
	// extra is added to the attempt timeout (the long-poll's wait).
	extra  time.Duration
	header http.Header
}

// result is a decoded 2xx envelope.
type result struct {
	status    int
	data      json.RawMessage
	meta      json.RawMessage
	requestID string
}

type envelope struct {
	Success bool            `json:"success"`
	Data    json.RawMessage `json:"data"`
	Meta    json.RawMessage `json:"meta"`
	Error   *struct {
		Code    string            `json:"code"`
		Message string            `json:"message"`
		Details map[string]string `json:"details"`
	} `json:"error"`
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "otpc-" + hex.EncodeToString(b[:])
}

// do runs c with retries and decodes a successful envelope's data into out
// (when out is non-nil).
func (t *transport) do(ctx context.Context, c call, out any) (*result, error) {
	res, err := t.send(ctx, c, func(resp *http.Response) (*result, error) { return decodeEnvelope(resp) })
	if err != nil {
		return res, err
	}
	if out != nil && len(res.data) > 0 {
		if err := json.Unmarshal(res.data, out); err != nil {
			return res, fmt.Errorf("agentotp: decode %s %s response: %w", c.method, c.path, err)
		}
	}
	return res, nil
}

// send runs the attempts of c; handle reads a 2xx response (and closes
// nothing: send closes the body).
func (t *transport) send(ctx context.Context, c call, handle func(*http.Response) (*result, error)) (*result, error) {
	var body []byte
	if c.body != nil {
		var err error
		if body, err = json.Marshal(c.body); err != nil {
			return nil, fmt.Errorf("agentotp: encode %s %s: %w", c.method, c.path, err)
		}
	}
	u := t.base + c.path
	if len(c.query) > 0 {
		u += "?" + c.query.Encode()
	}
	reqID := newRequestID()
	for attempt := 0; ; attempt++ {
		res, sent, err := t.attempt(ctx, c, u, body, reqID, handle)
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			return res, ctxError(ctx, err)
		}
		if attempt >= t.maxRetries || !retryable(c.mode, err, sent) {
			return res, err
		}
		delay := t.backoff(attempt)
		var apiErr *Error
		if errors.As(err, &apiErr) && apiErr.RetryAfter > delay {
			delay = apiErr.RetryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return res, err // waiting would outlive the caller
		}
		t.log.DebugContext(ctx, "agentotp: retrying", "method", c.method, "path", c.path,
			"attempt", attempt+1, "delay", delay, "err", err)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return res, ctxError(ctx, err)
		case <-timer.C:
		}
	}
}

func ctxError(ctx context.Context, last error) error {
	var apiErr *Error
	if errors.As(last, &apiErr) {
		return last
	}
	return fmt.Errorf("agentotp: %w", context.Cause(ctx))
}

// backoff is exponential with equal jitter: a random time in [d/2, d].
func (t *transport) backoff(attempt int) time.Duration {
	d := t.minBackoff << min(attempt, 20)
	if d <= 0 || d > t.maxBackoff {
		d = t.maxBackoff
	}
	half := d / 2
	return half + time.Duration(mrand.Int64N(int64(half)+1))
}

// retryable decides whether an attempt's failure may be repeated. sent is
// false when the connection was never established.
func retryable(mode retryMode, err error, sent bool) bool {
	var apiErr *Error
	if errors.As(err, &apiErr) {
		if apiErr.Code == CodeRateLimited {
			return true
		}
		return mode == retrySafe && apiErr.Status >= 500 && apiErr.Status != http.StatusNotImplemented
	}
	if !sent {
		return true
	}
	return mode == retrySafe
}

// attempt makes one HTTP request. sent reports whether it may have reached
// the server.
func (t *transport) attempt(ctx context.Context, c call, u string, body []byte, reqID string,
	handle func(*http.Response) (*result, error)) (res *result, sent bool, err error) {
	actx, cancel := context.WithTimeout(ctx, t.timeout+c.extra)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, c.method, u, rd)
	if err != nil {
		return nil, false, fmt.Errorf("agentotp: build request: %w", err)
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+t.key)
	req.Header.Set("User-Agent", t.ua)
	req.Header.Set("X-Request-Id", reqID)
	if ch, ok := agentotp.ChannelFrom(ctx); ok {
		req.Header.Set(agentotp.ChannelHeader, ch.Encode())
	}
	resp, err := t.hc.Do(req)
	if err != nil {
		return nil, !dialFailed(err), fmt.Errorf("agentotp: %s %s: %w", c.method, c.path, redactURL(err))
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
	}()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		res, err := handle(resp)
		if err != nil {
			// A 2xx whose body broke off: the server acted.
			return res, true, fmt.Errorf("agentotp: %s %s: read response: %w", c.method, c.path, err)
		}
		return res, true, nil
	}
	return nil, true, errorFromResponse(resp)
}

// dialFailed reports whether err happened before any byte reached a
// server: the connection was refused or could not be resolved.
func dialFailed(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// redactURL drops the URL from *url.Error (it carries no secret, but the
// method and path are already in our message).
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func decodeEnvelope(resp *http.Response) (*result, error) {
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return nil, fmt.Errorf("response is not a JSON envelope: %w", err)
	}
	if !env.Success {
		e := errorFromEnvelope(resp, &env)
		return nil, e
	}
	return &result{status: resp.StatusCode, data: env.Data, meta: env.Meta, requestID: resp.Header.Get("X-Request-Id")}, nil
}

func errorFromResponse(resp *http.Response) *Error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var env envelope
	if json.Unmarshal(raw, &env) == nil && env.Error != nil {
		return errorFromEnvelope(resp, &env)
	}
	return &Error{
		Code: codeForStatus(resp.StatusCode), Status: resp.StatusCode, Message: http.StatusText(resp.StatusCode),
		RequestID: resp.Header.Get("X-Request-Id"), RetryAfter: retryAfter(resp.Header.Get("Retry-After")),
	}
}

func errorFromEnvelope(resp *http.Response, env *envelope) *Error {
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id"),
		RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	if env.Error != nil {
		e.Code, e.Message, e.Details = env.Error.Code, env.Error.Message, env.Error.Details
	}
	if e.Code == "" {
		e.Code = codeForStatus(resp.StatusCode)
	}
	return e
}

// retryAfter parses delay-seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t))
	}
	return 0
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
