package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/notify/callback"
)

// callbackKeyFile is where the callback key is kept when the environment
// does not supply one.
const callbackKeyFile = "callback.key"

// callbackSetup prepares decision callbacks for serve. It returns
//
//   - hosts: the allow-list, for agentotp.Options.CallbackHosts (a
//     request's callbackUrl is refused unless its host is listed; nil
//     refuses them all);
//   - key: the server's callback key, for httpapi.Options.CallbackKey (the
//     agent create and rotate-key responses then carry callbackSecret);
//   - notifier: the sender, nil when no host is allowed. Add it to the
//     service's notifiers (notify.Fanout{…, notifier}) and Close it after
//     the HTTP server and the sweeper have stopped (deliveries still
//     queued or waiting to retry are dropped then).
//
// agents loads an agent by id to sign with its current secret: the store
// (*sqlite.Store) the service runs on. The key comes from
// AGENTOTP_CALLBACK_KEY(_FILE) or <data>/callback.key, which is created
// (0600) on first use, so every agent has a callback secret from the start
// and turning callbacks on later needs no key rotation.
func callbackSetup(cfg Config, agents callback.Agents, logger *slog.Logger) (hosts []string, key []byte, notifier *callback.Notifier, err error) {
	key, err = callbackKey(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	hosts = cfg.CallbackHosts()
	if len(hosts) == 0 {
		return nil, key, nil, nil
	}
	notifier, err = callback.New(callback.Options{Hosts: hosts, Key: key, Agents: agents, Logger: logger})
	if err != nil {
		return nil, nil, nil, err
	}
	logger.Info("decision callbacks allowed", "hosts", strings.Join(hosts, ","))
	return hosts, key, notifier, nil
}

// callbackKey returns the server's callback key: AGENTOTP_CALLBACK_KEY,
// else <data>/callback.key, else 32 new random bytes saved there (0600).
func callbackKey(cfg Config) ([]byte, error) {
	if cfg.CallbackKey != "" {
		k, err := decodeCallbackKey(cfg.CallbackKey.Reveal())
		if err != nil {
			return nil, fmt.Errorf("AGENTOTP_CALLBACK_KEY: %w", err)
		}
		return k, nil
	}
	path := filepath.Join(cfg.Data, callbackKeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := decodeCallbackKey(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read callback key: %w", err)
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another process made it first: use theirs.
		return callbackKey(cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("save callback key: %w", err)
	}
	if _, err := fmt.Fprintln(f, hex.EncodeToString(k)); err != nil {
		f.Close()
		return nil, fmt.Errorf("save callback key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("save callback key: %w", err)
	}
	return k, nil
}

// decodeCallbackKey reads a key written in hex or base64 (standard or
// URL alphabet, padded or not); it must hold at least 32 bytes.
func decodeCallbackKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	var k []byte
	if b, err := hex.DecodeString(s); err == nil {
		k = b
	} else {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(s); err == nil {
				k = b
				break
			}
		}
	}
	if k == nil {
		return nil, errors.New("must be hex or base64")
	}
	if len(k) < 32 {
		return nil, fmt.Errorf("must hold at least 32 bytes, not %d (try: openssl rand -hex 32)", len(k))
	}
	return k, nil
}

// checkCallbackHosts validates the callback allow-list entries.
func checkCallbackHosts(hosts []string) error {
	_, err := agentotp.ParseCallbackHosts(hosts)
	var e *agentotp.Error
	if errors.As(err, &e) {
		return fmt.Errorf("callback-allow: %s", e.Details["callbackAllow"])
	}
	return err
}
