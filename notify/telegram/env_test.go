package telegram_test

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/telegram"
	"github.com/agentotp/agentotp/notify/telegram/telegramtest"
	"github.com/agentotp/agentotp/store/sqlite"
)

var update = flag.Bool("update", false, "rewrite golden files")

// chat is the approvers' group.
const chat int64 = -1001234

// Telegram accounts: ann, bob and cat are linked approvers, dan is linked
// and gets disabled, eve is linked to nobody.
var (
	ann = telegramtest.User{ID: 1001, FirstName: "Ann"}
	bob = telegramtest.User{ID: 1002, FirstName: "Bob"}
	cat = telegramtest.User{ID: 1003, FirstName: "Cat"}
	dan = telegramtest.User{ID: 1004, FirstName: "Dan"}
	eve = telegramtest.User{ID: 6666, FirstName: "Eve"}
)

// start is the frozen service time; tests move it with env.skew.
var start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const webhookSecret = "s3cr3t-webhook_token"

// buttonKey signs the buttons, as the audit-derived key does in agentotp
// serve.
var buttonKey = []byte("0123456789abcdef0123456789abcdef")

// policy asks a human for everything: quorum.* needs two approvals,
// restricted.* only bob may approve.
var policy = agentotp.EvaluatorFunc(func(_ context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	switch {
	case strings.HasPrefix(in.Action, "quorum."):
		return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "two-of-three", Quorum: 2}, nil
	case strings.HasPrefix(in.Action, "restricted."):
		return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "ops-only", Approvers: []string{"bob"}}, nil
	}
	return agentotp.Decision{Effect: agentotp.EffectRequireApproval, Rule: "ask-a-human"}, nil
})

type env struct {
	t       *testing.T
	tg      *telegramtest.Server
	svc     *agentotp.Service
	store   *sqlite.Store
	n       *telegram.Notifier
	agent   agentotp.Principal
	users   map[int64]*agentotp.User
	skew    atomic.Int64
	logs    *logBuffer
	hookURL string
	opts    telegram.Options
	stop    func()
}

type envOptions struct {
	webhook bool
	tune    func(*telegram.Options)
}

// logBuffer collects logs from any goroutine, also after the test ends.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (e *env) now() time.Time { return start.Add(time.Duration(e.skew.Load())) }

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, tg: telegramtest.New(t), users: map[int64]*agentotp.User{}, logs: &logBuffer{}}
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	e.store = store
	logger := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	var hook *httptest.Server
	opts := telegram.Options{
		Token: agentotp.Secret(e.tg.Token), ChatID: chat, APIURL: e.tg.URL, ButtonKey: buttonKey,
		Logger: logger, Clock: e.now, PollTimeout: time.Second,
		MaxAttempts: 4, RetryBackoff: 5 * time.Millisecond,
	}
	if o.webhook {
		hook = httptest.NewUnstartedServer(nil)
		e.hookURL = "http://" + hook.Listener.Addr().String() + telegram.WebhookPath
		opts.Mode, opts.WebhookURL, opts.WebhookSecret = telegram.ModeWebhook, e.hookURL, webhookSecret
	}
	if o.tune != nil {
		o.tune(&opts)
	}
	e.opts = opts
	e.n, err = telegram.New(ctx, opts)
	require.NoError(t, err)
	e.svc = agentotp.NewService(store, agentotp.Options{
		Evaluator: policy, Notifier: e.n, PublicURL: "https://otp.example", WaitPoll: 20 * time.Millisecond,
		Clock: e.now, Logger: logger,
	})
	e.n.Attach(e.svc)
	if hook != nil {
		hook.Config.Handler = e.n.WebhookHandler()
		hook.Start()
		t.Cleanup(hook.Close)
	}
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	t.Cleanup(e.checkLogs) // after Run has stopped
	e.run()

	for _, u := range []struct {
		name string
		tg   telegramtest.User
	}{{"ann", ann}, {"bob", bob}, {"cat", cat}, {"dan", dan}} {
		user, _, err := e.svc.CreateUser(ctx, agentotp.SystemPrincipal, agentotp.UserInput{Name: u.name, Role: agentotp.RoleApprover, TelegramID: u.tg.ID})
		require.NoError(t, err)
		e.users[u.tg.ID] = user
	}
	a, _, err := e.svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "mailer"})
	require.NoError(t, err)
	e.agent = agentotp.Principal{Agent: a}
	return e
}

// newEnvNotifier is a second Notifier, as after a restart, attached to
// the same Service.
func newEnvNotifier(t *testing.T, e *env) *telegram.Notifier {
	t.Helper()
	n, err := telegram.New(context.Background(), e.opts)
	require.NoError(t, err)
	n.Attach(e.svc)
	return n
}

// run starts the Notifier until the test ends (or stop is called).
func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.n.Run(ctx) }()
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(e.t, err)
			case <-time.After(5 * time.Second):
				e.t.Error("Run did not return within 5 s of its context ending")
			}
		})
	}
	e.t.Cleanup(e.stop)
}

// checkLogs: the token and the button MACs never reach a log.
func (e *env) checkLogs() {
	logs := e.logs.String()
	require.NotContains(e.t, logs, e.tg.Token)
	require.NotContains(e.t, logs, strings.SplitN(e.tg.Token, ":", 2)[1])
	for _, m := range e.tg.Messages(chat) {
		for _, b := range m.Buttons() {
			if _, mac, ok := strings.Cut(b.Data(), "."); ok {
				require.NotContains(e.t, logs, mac, "a button MAC reached the log")
			}
		}
	}
}

type req struct {
	action, resource, reason string
	scope                    map[string]any
	context                  map[string]any
}

// request asks as the agent and returns the pending permission.
func (e *env) request(r req) *agentotp.Permission {
	e.t.Helper()
	c := r.context
	if c == nil && r.reason != "" {
		c = map[string]any{"reason": r.reason}
	}
	if r.action == "" {
		r.action = "gmail.send"
	}
	p, tok, err := e.svc.RequestPermission(context.Background(), e.agent, agentotp.PermissionRequest{
		Action: r.action, Resource: r.resource, Scope: r.scope, Context: c,
	})
	require.NoError(e.t, err)
	require.Empty(e.t, tok)
	require.Equal(e.t, agentotp.StatusPending, p.Status)
	return p
}

// message waits for the bot's message about id in chat c.
func (e *env) message(c int64, id agentotp.PermissionID) telegramtest.Message {
	e.t.Helper()
	var found telegramtest.Message
	require.Eventually(e.t, func() bool {
		for _, m := range e.tg.Messages(c) {
			if strings.Contains(m.Text, string(id)) {
				found = m
				return true
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond, "no message about %s", id)
	return found
}

// data returns the callback data of a message's Approve or Deny button.
func data(t *testing.T, m telegramtest.Message, approve bool) string {
	t.Helper()
	bs := m.Buttons()
	require.Len(t, bs, 2, "message %d has no Approve/Deny buttons", m.ID)
	if approve {
		return bs[0].Data()
	}
	return bs[1].Data()
}

// press presses a button of m as from and waits for the answer.
func (e *env) press(from telegramtest.User, m telegramtest.Message, approve bool) telegramtest.Answer {
	e.t.Helper()
	return e.pressData(from, m.ChatID, m.ID, data(e.t, m, approve))
}

func (e *env) pressData(from telegramtest.User, c int64, msg int, d string) telegramtest.Answer {
	e.t.Helper()
	u := e.tg.Press(from, c, msg, d)
	return e.answer(u.CallbackID)
}

func (e *env) answer(callbackID string) telegramtest.Answer {
	e.t.Helper()
	var a telegramtest.Answer
	require.Eventually(e.t, func() bool {
		var ok bool
		a, ok = e.tg.Answer(callbackID)
		return ok
	}, 5*time.Second, 5*time.Millisecond, "press %s was not answered", callbackID)
	return a
}

// status reads a permission as the system.
func (e *env) status(id agentotp.PermissionID) *agentotp.Permission {
	e.t.Helper()
	p, _, err := e.svc.GetPermission(context.Background(), agentotp.SystemPrincipal, id, 0)
	require.NoError(e.t, err)
	return p
}

// settled waits until message (c, msg) has no buttons and contains want.
func (e *env) settled(c int64, msg int, want string) telegramtest.Message {
	e.t.Helper()
	var m telegramtest.Message
	require.Eventually(e.t, func() bool {
		m, _ = e.tg.Message(c, msg)
		return len(m.Buttons()) == 0 && strings.Contains(m.Text, want)
	}, 5*time.Second, 5*time.Millisecond, "message %d never showed %q without buttons", msg, want)
	return m
}

// events returns the audit events of a permission, oldest first.
func (e *env) events(id agentotp.PermissionID, typ agentotp.EventType) []*agentotp.AuditEvent {
	e.t.Helper()
	list, err := e.store.AuditEvents(context.Background(), agentotp.AuditFilter{PermissionID: id, Type: typ, Ascending: true, Limit: 100})
	require.NoError(e.t, err)
	return list
}

// replies returns the bot's messages in c that reply to message msg.
func (e *env) replies(c int64, msg int) []telegramtest.Message {
	var out []telegramtest.Message
	for _, m := range e.tg.Messages(c) {
		if m.ReplyTo == msg {
			out = append(out, m)
		}
	}
	return out
}

// replyTo waits for the bot's reply to message msg in c.
func (e *env) replyTo(c int64, msg int) telegramtest.Message {
	e.t.Helper()
	var out []telegramtest.Message
	require.Eventually(e.t, func() bool {
		out = e.replies(c, msg)
		return len(out) > 0
	}, 5*time.Second, 5*time.Millisecond, "no reply to message %d", msg)
	return out[0]
}

// handled waits until the Notifier has taken a polled update: a press is
// handled by then, a message only queued.
func (e *env) handled(u telegramtest.Update) {
	e.t.Helper()
	require.Eventually(e.t, func() bool { return e.tg.Confirmed(u.ID) }, 5*time.Second, 5*time.Millisecond, "update %d was not handled", u.ID)
}
