// Package telegram is the Telegram approval channel. It posts every request
// that waits for a person to one chat, with Approve and Deny buttons; turns
// button presses and replies into decisions through the Service; and edits
// the message when the request is decided, expires or is revoked.
//
// Wiring, in this order:
//
//	n, err := telegram.New(ctx, opts)               // checks the token with getMe
//	svc := agentotp.NewService(store, agentotp.Options{Notifier: n, …})
//	n.Attach(svc)                                   // presses decide through svc
//	go n.Run(ctx)                                   // long polling, or registers the webhook
//	api.Handle(telegram.WebhookPath, n.WebhookHandler()) // webhook mode only
//
// The Notifier exists before the Service because the Service takes it as an
// option, and it needs the Service to decide; Attach closes that loop.
//
// Only Telegram accounts linked to an active approver or admin (agentotp
// users create NAME --role approver --telegram-id ID) can decide, and the
// Service checks every decision again (rule approvers, quorum, state). To
// deny with a reason, an approver replies to the request message with the
// reason; a plain Deny press records "denied in Telegram by NAME".
//
// A button carries the request id and a MAC under Options.ButtonKey, so
// any process holding the key (every instance sharing the database) can
// take a press, whoever sent the message, and a modified client cannot
// forge one. The process that takes a press edits the pressed message.
// Other edits (a decision elsewhere, expiry, revocation) come from the
// process that sent the message, which remembers its newest 10,000
// messages in memory: after a restart, a message about a request that ended
// meanwhile keeps its buttons until someone presses one (the press answers
// that the request is over and removes them).
//
// Nothing here can approve on failure: a Telegram outage leaves requests
// pending in the console, and every error path answers "nothing changed".
package telegram

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"
	"golang.org/x/time/rate"

	"github.com/agentotp/agentotp"
)

// Modes of receiving updates.
const (
	ModePolling = "polling"
	ModeWebhook = "webhook"
)

// WebhookPath is where the server mounts WebhookHandler.
const WebhookPath = "/api/v1/webhooks/telegram"

// SecretHeader carries the webhook secret on every update Telegram posts.
const SecretHeader = "X-Telegram-Bot-Api-Secret-Token"

// DefaultAPIURL is Telegram's Bot API.
const DefaultAPIURL = "https://api.telegram.org"

// Limits chosen for the channel.
const (
	// maxButtons bounds the messages kept in memory for edits. The oldest
	// are forgotten first; their buttons still work when pressed.
	maxButtons = 10000
	// maxRecent bounds the remembered update and callback ids.
	maxRecent = 4096
	// callTimeout bounds one HTTP attempt of any call but getUpdates.
	callTimeout = 20 * time.Second
	// maxBackoff caps the wait between attempts.
	maxBackoff = 30 * time.Second
	// handleTimeout bounds the work on one update posted to the webhook.
	handleTimeout = 60 * time.Second
	// maxUpdateBytes bounds a webhook body.
	maxUpdateBytes = 1 << 20
	// maxQueued bounds the polled messages waiting to be handled.
	maxQueued = 256
	// Answers to accounts not linked to an approver, per chat: a burst of
	// strangerBurst, then one every strangerEvery, in at most
	// maxStrangerChats chats at a time.
	strangerBurst    = 3
	strangerEvery    = 20 * time.Second
	maxStrangerChats = 1024
)

// Options configures a Notifier. Token, ChatID and ButtonKey are required.
type Options struct {
	// Token is the bot token from @BotFather.
	Token agentotp.Secret
	// ButtonKey signs the callback data of the buttons: at least
	// MinButtonKeyLen secret bytes, the same in every instance that shares
	// the database, so that any of them can take a press.
	ButtonKey []byte
	// ChatID is the chat (a person or a group) that receives requests.
	ChatID int64
	// APIURL is the Bot API base URL; default DefaultAPIURL. Calls go to
	// APIURL + "/bot<token>/<method>".
	APIURL string
	// Mode is ModePolling (default) or ModeWebhook.
	Mode string
	// WebhookURL is the public URL of WebhookPath, registered with
	// setWebhook. Required in webhook mode.
	WebhookURL string
	// WebhookSecret is the secret Telegram sends in SecretHeader: 1-256
	// characters of A-Z, a-z, 0-9, '_' and '-'. Required in webhook mode.
	WebhookSecret agentotp.Secret
	// PublicURL is the console's base URL for links in messages; empty
	// uses the attached Service's.
	PublicURL string
	Logger    *slog.Logger
	// Clock gives the time shown in messages ("expires in"); default
	// time.Now.
	Clock func() time.Time
	// HTTPClient makes the calls; default a client without a timeout
	// (every call carries its own deadline). Its Timeout, if set, must
	// exceed PollTimeout.
	HTTPClient *http.Client
	// PollTimeout is the long-polling timeout of getUpdates; default 30 s,
	// rounded to whole seconds, at least 1 s.
	PollTimeout time.Duration
	// MaxAttempts bounds the attempts of one call on 429, 5xx and network
	// errors; default 5.
	MaxAttempts int
	// RetryBackoff is the first wait between attempts, doubled each time
	// up to 30 s; a 429's retry_after is waited at least. Default 500 ms.
	RetryBackoff time.Duration
}

func (o *Options) validate() error {
	var errs []error
	bad := func(field, problem string) { errs = append(errs, fmt.Errorf("%s: %s", field, problem)) }
	if o.Token == "" {
		bad("token", "is required")
	}
	if o.ChatID == 0 {
		bad("chatId", "is required")
	}
	if len(o.ButtonKey) < MinButtonKeyLen {
		bad("buttonKey", fmt.Sprintf("must hold at least %d bytes, not %d", MinButtonKeyLen, len(o.ButtonKey)))
	}
	if o.APIURL == "" {
		o.APIURL = DefaultAPIURL
	}
	o.APIURL = strings.TrimRight(o.APIURL, "/")
	if u, err := url.Parse(o.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("apiUrl", "must be an http or https URL")
	} else if strings.Contains(o.APIURL, "%") {
		// The library formats the endpoint with fmt; a '%' would garble it.
		bad("apiUrl", "must not contain '%'")
	}
	if o.Mode == "" {
		o.Mode = ModePolling
	}
	switch o.Mode {
	case ModePolling:
	case ModeWebhook:
		if u, err := url.Parse(o.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("webhookUrl", "must be the public http(s) URL of "+WebhookPath+" in webhook mode")
		}
		if !validSecretToken(o.WebhookSecret.Reveal()) {
			bad("webhookSecret", "must be 1-256 characters of A-Z, a-z, 0-9, _ and - in webhook mode")
		}
	default:
		bad("mode", "must be polling or webhook")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	if o.PollTimeout <= 0 {
		o.PollTimeout = 30 * time.Second
	}
	o.PollTimeout = max(time.Second, o.PollTimeout.Round(time.Second))
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 500 * time.Millisecond
	}
	if len(errs) > 0 {
		return fmt.Errorf("telegram: invalid options: %w", errors.Join(errs...))
	}
	return nil
}

// validSecretToken applies Telegram's rule for secret_token.
func validSecretToken(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Notifier is the Telegram channel. It implements agentotp.Notifier and is
// safe for concurrent use.
type Notifier struct {
	opts  Options
	token string
	key   []byte // Options.ButtonKey
	// base is the connected bot; every call runs on a copy bound to the
	// call's context (see bot), because the library's own requests carry
	// none.
	base    *tgbotapi.BotAPI
	log     *slog.Logger
	svc     atomic.Pointer[agentotp.Service]
	buttons *buttons
	updates *recent[int]
	queries *recent[string]
	chats   *chatLimits // answers to accounts not linked to an approver
	running atomic.Bool
}

var _ agentotp.Notifier = (*Notifier)(nil)

// New checks opts and connects: it calls getMe (retrying 429, 5xx and
// network errors) so a wrong token fails here. Decisions need Attach.
func New(ctx context.Context, opts Options) (*Notifier, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	key := bytes.Clone(opts.ButtonKey)
	opts.ButtonKey = nil // one copy, in key
	n := &Notifier{
		opts:    opts,
		token:   opts.Token.Reveal(),
		key:     key,
		log:     opts.Logger.With("component", "telegram"),
		buttons: newButtons(maxButtons),
		updates: newRecent[int](maxRecent),
		queries: newRecent[string](maxRecent),
		chats:   newChatLimits(rate.Every(strangerEvery), strangerBurst, maxStrangerChats),
	}
	endpoint := opts.APIURL + "/bot%s/%s"
	var bot *tgbotapi.BotAPI
	err := n.retry(ctx, "getMe", callTimeout, func(ctx context.Context) error {
		b, err := tgbotapi.NewBotAPIWithClient(n.token, endpoint, n.doer(ctx))
		bot = b
		return err
	})
	if err != nil {
		return nil, err
	}
	bot.Client = opts.HTTPClient
	n.base = bot
	n.log.Info("telegram bot connected", "bot", bot.Self.UserName, "mode", opts.Mode, "chat", opts.ChatID)
	return n, nil
}

// Attach gives the Notifier the Service that presses and replies decide
// through. Call it once, before Run and before requests arrive; until then
// presses answer "starting" and change nothing.
func (n *Notifier) Attach(svc *agentotp.Service) { n.svc.Store(svc) }

// Username returns the bot's @username, without the '@'.
func (n *Notifier) Username() string { return n.base.Self.UserName }

// Run receives updates until ctx ends: long polling with getUpdates, or in
// webhook mode registering the webhook (retried until Telegram accepts it)
// and waiting. It returns nil when ctx ends, and an error if the Notifier
// has no Service or is already running.
func (n *Notifier) Run(ctx context.Context) error {
	if n.svc.Load() == nil {
		return errors.New("telegram: Run before Attach")
	}
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("telegram: already running")
	}
	defer n.running.Store(false)
	if n.opts.Mode == ModeWebhook {
		n.registerWebhook(ctx)
		<-ctx.Done()
		return nil
	}
	n.poll(ctx)
	return nil
}
