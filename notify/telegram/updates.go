package telegram

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"runtime/debug"
	"sync"

	tgbotapi "github.com/go-telegram-bot-api/telegram-bot-api/v5"
)

// allowedUpdates are the update kinds the channel reads.
const allowedUpdates = `["message","callback_query"]`

// poll long-polls getUpdates with an offset until ctx ends. It is the
// library's GetUpdatesChan loop done by hand: that one sleeps a fixed 3 s
// after any error, cannot be stopped twice, and its requests ignore ctx.
//
// Presses are handled here, messages in order by a worker of their own:
// an answer waiting out Telegram's rate limit, or a /pending posting many
// requests, never holds up a press. A message that finds maxQueued
// waiting is dropped rather than hold up the presses.
func (n *Notifier) poll(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	messages := make(chan *tgbotapi.Update, maxQueued)
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case u := <-messages:
				n.handle(ctx, u)
			}
		}
	})
	// getUpdates is refused while a webhook is set, for example one left
	// by an earlier run in webhook mode.
	err := n.call(ctx, "deleteWebhook", func(b *tgbotapi.BotAPI) error {
		_, err := b.Request(tgbotapi.DeleteWebhookConfig{})
		return err
	})
	if err != nil && ctx.Err() == nil {
		n.log.Warn("telegram deleteWebhook failed; polling anyway", "err", err)
	}
	timeout := n.opts.PollTimeout
	cfg := tgbotapi.UpdateConfig{Timeout: int(timeout.Seconds()), AllowedUpdates: []string{"message", "callback_query"}}
	delay := n.opts.RetryBackoff
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, timeout+callTimeout)
		batch, err := n.bot(pctx).GetUpdates(cfg)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			err = redact(err, n.token)
			wait, _ := retryable(err)
			wait = max(wait, delay)
			n.log.Warn("telegram getUpdates failed", "err", err, "retry_in", wait)
			if !sleep(ctx, wait) {
				return
			}
			delay = min(2*delay, maxBackoff)
			continue
		}
		delay = n.opts.RetryBackoff
		for i := range batch {
			u := &batch[i]
			if u.UpdateID >= cfg.Offset {
				cfg.Offset = u.UpdateID + 1
			}
			if u.CallbackQuery != nil {
				n.handle(ctx, u)
				continue
			}
			select {
			case messages <- u:
			default:
				n.log.Warn("telegram messages queue full; message dropped", "update", u.UpdateID)
			}
		}
	}
}

// registerWebhook sets the webhook with its secret, retrying until
// Telegram accepts it or ctx ends. The library's WebhookConfig has no
// secret_token, hence the raw call.
func (n *Notifier) registerWebhook(ctx context.Context) {
	delay := n.opts.RetryBackoff
	for {
		err := n.call(ctx, "setWebhook", func(b *tgbotapi.BotAPI) error {
			_, err := b.MakeRequest("setWebhook", tgbotapi.Params{
				"url":             n.opts.WebhookURL,
				"secret_token":    n.opts.WebhookSecret.Reveal(),
				"allowed_updates": allowedUpdates,
			})
			return err
		})
		if err == nil {
			n.log.Info("telegram webhook registered", "url", n.opts.WebhookURL)
			return
		}
		if ctx.Err() != nil {
			return
		}
		n.log.Error("telegram setWebhook failed; approvals by Telegram are unavailable until it succeeds", "err", err, "retry_in", delay)
		if !sleep(ctx, delay) {
			return
		}
		delay = min(2*delay, maxBackoff)
	}
}

// WebhookHandler receives the updates Telegram posts in webhook mode
// (mount it at WebhookPath). Without the secret header it answers 401 and
// does nothing; the secret is compared in constant time. In
// polling mode it answers 404.
func (n *Notifier) WebhookHandler() http.Handler {
	want := sha256.Sum256([]byte(n.opts.WebhookSecret.Reveal()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.opts.Mode != ModeWebhook {
			http.NotFound(w, r)
			return
		}
		// Hashing first makes the comparison independent of the length.
		got := sha256.Sum256([]byte(r.Header.Get(SecretHeader)))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if n.svc.Load() == nil {
			// Telegram retries later; by then the Service is attached.
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxUpdateBytes)
		u, err := n.base.HandleUpdate(r)
		if err != nil {
			http.Error(w, "bad update", http.StatusBadRequest)
			return
		}
		// Finish the update even if Telegram hangs up: a decision is not
		// abandoned halfway.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), handleTimeout)
		defer cancel()
		n.handle(ctx, u)
		w.WriteHeader(http.StatusOK)
	})
}

// handle acts on one update, once: a repeated update_id or callback id is
// ignored, whether it came by polling or by webhook.
func (n *Notifier) handle(ctx context.Context, u *tgbotapi.Update) {
	defer func() {
		if v := recover(); v != nil {
			n.log.Error("telegram update handler panicked", "update", u.UpdateID, "panic", v, "stack", string(debug.Stack()))
		}
	}()
	if !n.updates.first(u.UpdateID) {
		n.log.Debug("telegram update repeated; ignored", "update", u.UpdateID)
		return
	}
	switch {
	case u.CallbackQuery != nil:
		if !n.queries.first(u.CallbackQuery.ID) {
			n.log.Debug("telegram callback repeated; ignored", "update", u.UpdateID)
			return
		}
		n.press(ctx, u.CallbackQuery)
	case u.Message != nil:
		n.message(ctx, u.Message)
	}
}
