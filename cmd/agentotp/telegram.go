package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/agentotp/agentotp/notify/telegram"
)

// telegramSetup starts the Telegram approval channel when a bot token is
// configured (nil, nil otherwise). A token without a chat, or webhook mode
// without its secret or an https public URL, is a start-up error naming
// the fix: a half-configured bot would leave every request unannounced.
func telegramSetup(ctx context.Context, cfg Config, publicURL string, logger *slog.Logger) (*telegram.Notifier, error) {
	if cfg.TelegramToken == "" {
		if cfg.TelegramChat != "" {
			logger.Warn("--telegram-chat is set but AGENTOTP_TELEGRAM_TOKEN is not: Telegram stays off")
		}
		return nil, nil
	}
	if cfg.TelegramChat == "" {
		return nil, fmt.Errorf("AGENTOTP_TELEGRAM_TOKEN is set but no chat is: set --telegram-chat or AGENTOTP_TELEGRAM_CHAT_ID " +
			"to the chat that receives approval requests (send /start to the bot: it answers with your id, which is your private chat's id)")
	}
	chat, err := strconv.ParseInt(strings.TrimSpace(cfg.TelegramChat), 10, 64)
	if err != nil || chat == 0 {
		return nil, fmt.Errorf("telegram-chat: must be a numeric Telegram chat id (groups are negative, e.g. -1001234567890), not %q", cfg.TelegramChat)
	}
	buttonKey, err := telegramButtonKey(cfg)
	if err != nil {
		return nil, err
	}
	opts := telegram.Options{
		Token: cfg.TelegramToken, ChatID: chat, ButtonKey: buttonKey, APIURL: cfg.TelegramAPIURL, Mode: cfg.TelegramMode,
		WebhookSecret: cfg.TelegramWebhookSecret, PublicURL: publicURL, Logger: logger,
	}
	if cfg.TelegramMode == telegram.ModeWebhook {
		if cfg.TelegramWebhookSecret == "" {
			return nil, fmt.Errorf("telegram-mode webhook needs AGENTOTP_TELEGRAM_WEBHOOK_SECRET (1-256 characters of A-Z a-z 0-9 _ -)")
		}
		if !strings.HasPrefix(publicURL, "https://") {
			return nil, fmt.Errorf("telegram-mode webhook needs --public-url to be the https address Telegram can reach, not %q", publicURL)
		}
		opts.WebhookURL = strings.TrimRight(publicURL, "/") + telegram.WebhookPath
	}
	n, err := telegram.New(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("telegram: %w", err)
	}
	logger.Info("telegram: approval requests go to chat", "chat", chat, "bot", "@"+n.Username(), "mode", cfg.TelegramMode)
	return n, nil
}

// telegramButtonKey derives the key that signs the buttons from the audit
// key, which every instance sharing a database must already hold, so a
// press works on whichever instance receives it. agentotp.AuditKey does not
// give out its bytes or a sub-key, so they are read from the same source
// auditKey uses, after auditKey has checked it (and created the default
// file on first use).
func telegramButtonKey(cfg Config) ([]byte, error) {
	// First, so that with PostgreSQL a missing shared key is an error
	// rather than a local key file made here.
	if err := sharedKeys(cfg); err != nil {
		return nil, err
	}
	k, err := auditKey(cfg)
	if err != nil {
		return nil, err
	}
	return k.Derive("agentotp telegram buttons v1"), nil
}
