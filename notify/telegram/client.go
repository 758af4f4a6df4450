package telegram

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"
	"golang.org/x/time/rate"
)

// doer binds the library's context-free requests to ctx and keeps the bot
// token out of errors: the request URL contains it, and net/http quotes the
// URL in every transport error.
type doer struct {
	ctx   context.Context
	c     *http.Client
	token string
}

func (d doer) Do(req *http.Request) (*http.Response, error) {
	resp, err := d.c.Do(req.WithContext(d.ctx))
	if err != nil {
		return nil, redact(err, d.token)
	}
	return resp, nil
}

func (n *Notifier) doer(ctx context.Context) doer {
	return doer{ctx: ctx, c: n.opts.HTTPClient, token: n.token}
}

// bot returns a copy of the connected bot whose requests carry ctx.
func (n *Notifier) bot(ctx context.Context) *tgbotapi.BotAPI {
	b := *n.base
	b.Client = n.doer(ctx)
	return &b
}

const redacted = "[redacted]"

// redact removes the token from err's text. A *url.Error keeps its cause,
// so errors.Is still sees context errors.
func redact(err error, token string) error {
	if err == nil || token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	var ue *url.Error
	if errors.As(err, &ue) && !strings.Contains(ue.Err.Error(), token) {
		return &url.Error{Op: ue.Op, URL: strings.ReplaceAll(ue.URL, token, redacted), Err: ue.Err}
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, redacted))
}

// retryable says whether a failed call may be repeated, and the least wait
// Telegram asked for. 429 and 5xx are, as are network errors and garbled
// replies; other API errors (400, 401, 403) are final.
func retryable(err error) (time.Duration, bool) {
	var api *tgbotapi.Error
	if errors.As(err, &api) {
		switch {
		case api.Code == http.StatusTooManyRequests:
			return time.Duration(api.RetryAfter) * time.Second, true
		case api.Code >= 500:
			return 0, true
		}
		return 0, false
	}
	return 0, !errors.Is(err, context.Canceled)
}

// retry runs fn, each attempt under its own timeout, until it succeeds, a
// final error comes, MaxAttempts are used up or ctx ends. Waits double from
// RetryBackoff up to maxBackoff and are at least a 429's retry_after; a wait
// that would outlast ctx's deadline ends the call at once.
func (n *Notifier) retry(ctx context.Context, method string, timeout time.Duration, fn func(context.Context) error) error {
	delay := n.opts.RetryBackoff
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err := redact(fn(actx), n.token)
		cancel()
		if err == nil {
			return nil
		}
		wait, again := retryable(err)
		if !again || attempt >= n.opts.MaxAttempts || ctx.Err() != nil {
			return fmt.Errorf("telegram %s (attempt %d): %w", method, attempt, err)
		}
		wait = max(wait, delay)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return fmt.Errorf("telegram %s (attempt %d, next wait %s exceeds the deadline): %w", method, attempt, wait, err)
		}
		n.log.Debug("telegram call failed; retrying", "method", method, "attempt", attempt, "wait", wait, "err", err)
		if !sleep(ctx, wait) {
			return fmt.Errorf("telegram %s (attempt %d): %w", method, attempt, errors.Join(err, ctx.Err()))
		}
		delay = min(2*delay, maxBackoff)
	}
}

// sleep waits d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// call runs a bot method with retries.
func (n *Notifier) call(ctx context.Context, method string, fn func(*tgbotapi.BotAPI) error) error {
	return n.retry(ctx, method, callTimeout, func(ctx context.Context) error { return fn(n.bot(ctx)) })
}

// once runs a bot method a single time: for answers to accounts not linked
// to an approver. Anyone can message the bot, and waiting out Telegram's
// rate limits for them would hold up the approvers behind them.
func (n *Notifier) once(ctx context.Context, fn func(*tgbotapi.BotAPI) error) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return redact(fn(n.bot(ctx)), n.token)
}

// newMessage is an HTML message to chat, replying to message replyTo when
// not 0.
func newMessage(chat int64, text string, markup *tgbotapi.InlineKeyboardMarkup, replyTo int) tgbotapi.MessageConfig {
	cfg := tgbotapi.NewMessage(chat, text)
	cfg.ParseMode = tgbotapi.ModeHTML
	cfg.DisableWebPagePreview = true
	if markup != nil {
		cfg.ReplyMarkup = *markup
	}
	if replyTo != 0 {
		cfg.ReplyToMessageID = replyTo
		cfg.AllowSendingWithoutReply = true
	}
	return cfg
}

// send posts an HTML message and returns its id.
func (n *Notifier) send(ctx context.Context, chat int64, text string, markup *tgbotapi.InlineKeyboardMarkup, replyTo int) (int, error) {
	cfg := newMessage(chat, text, markup, replyTo)
	var id int
	err := n.call(ctx, "sendMessage", func(b *tgbotapi.BotAPI) error {
		m, err := b.Send(cfg)
		id = m.MessageID
		return err
	})
	return id, err
}

// edit replaces a message's text and buttons; nil markup removes them. An
// edit that changes nothing is not an error.
func (n *Notifier) edit(ctx context.Context, chat int64, msg int, text string, markup *tgbotapi.InlineKeyboardMarkup) error {
	cfg := tgbotapi.NewEditMessageText(chat, msg, text)
	cfg.ParseMode = tgbotapi.ModeHTML
	cfg.DisableWebPagePreview = true
	cfg.ReplyMarkup = markup
	err := n.call(ctx, "editMessageText", func(b *tgbotapi.BotAPI) error {
		_, err := b.Request(cfg)
		return err
	})
	var api *tgbotapi.Error
	if errors.As(err, &api) && api.Code == http.StatusBadRequest && strings.Contains(api.Message, "message is not modified") {
		return nil
	}
	return err
}

// answer answers a button press; alert shows a dialog instead of a toast.
// Failures are logged: the press has been handled either way.
func (n *Notifier) answer(ctx context.Context, q *tgbotapi.CallbackQuery, text string, alert bool) {
	cfg := tgbotapi.NewCallback(q.ID, text)
	cfg.ShowAlert = alert
	err := n.call(ctx, "answerCallbackQuery", func(b *tgbotapi.BotAPI) error {
		_, err := b.Request(cfg)
		return err
	})
	if err != nil {
		n.log.Warn("telegram answer failed", "err", err)
	}
}

// answerOnce answers, with an alert, a press by an account not linked to an
// approver: one attempt.
func (n *Notifier) answerOnce(ctx context.Context, q *tgbotapi.CallbackQuery, text string) {
	cfg := tgbotapi.NewCallback(q.ID, text)
	cfg.ShowAlert = true
	err := n.once(ctx, func(b *tgbotapi.BotAPI) error {
		_, err := b.Request(cfg)
		return err
	})
	if err != nil {
		n.log.Debug("telegram answer to an unlinked account failed; not retried", "err", err)
	}
}

// respond sends an HTML answer to a message, threaded under it.
func (n *Notifier) respond(ctx context.Context, m *tgbotapi.Message, html string) {
	if _, err := n.send(ctx, m.Chat.ID, html, nil, m.MessageID); err != nil {
		n.log.Warn("telegram reply failed", "chat", m.Chat.ID, "err", err)
	}
}

// respondOnce answers a message from an account not linked to an approver,
// or not known to be: one attempt, and none once the chat has used up its
// answers (see chatLimits).
func (n *Notifier) respondOnce(ctx context.Context, m *tgbotapi.Message, html string) {
	if !n.chats.allow(m.Chat.ID, time.Now()) {
		n.log.Debug("telegram answer to an unlinked account skipped: too many", "chat", m.Chat.ID)
		return
	}
	err := n.once(ctx, func(b *tgbotapi.BotAPI) error {
		_, err := b.Send(newMessage(m.Chat.ID, html, nil, m.MessageID))
		return err
	})
	if err != nil {
		n.log.Debug("telegram answer to an unlinked account failed; not retried", "chat", m.Chat.ID, "err", err)
	}
}

// chatLimits is a token bucket per chat, its table bounded: when full,
// buckets that have filled up again (as good as new) are forgotten, and a
// new chat that still finds no room is refused.
type chatLimits struct {
	limit rate.Limit
	burst int
	max   int
	mu    sync.Mutex
	chats map[int64]*rate.Limiter
}

func newChatLimits(limit rate.Limit, burst, size int) *chatLimits {
	return &chatLimits{limit: limit, burst: burst, max: size, chats: map[int64]*rate.Limiter{}}
}

// allow takes a token from chat's bucket at now, if one is left.
func (c *chatLimits) allow(chat int64, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.chats[chat]
	if !ok {
		if len(c.chats) >= c.max {
			for id, idle := range c.chats {
				if idle.TokensAt(now) >= float64(c.burst) {
					delete(c.chats, id)
				}
			}
		}
		if len(c.chats) >= c.max {
			return false
		}
		l = rate.NewLimiter(c.limit, c.burst)
		c.chats[chat] = l
	}
	return l.AllowN(now, 1)
}
