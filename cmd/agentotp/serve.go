package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/notify"
	"github.com/agentotp/agentotp/notify/callback"
	"github.com/agentotp/agentotp/notify/telegram"
	"github.com/agentotp/agentotp/policy"
	"github.com/agentotp/agentotp/web"
)

// env is the process environment; tests replace it.
var env = os.Getenv

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentotp serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	load := configFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := load(env)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp serve:", err)
		return 2
	}
	if err := serve(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "agentotp serve:", err)
		return 1
	}
	return 0
}

// app is the wired server core shared by serve and the local admin commands.
type app struct {
	store  agentotp.Store
	engine *policy.Engine
	svc    *agentotp.Service
}

// openApp opens the store and the policies and builds the service. setup,
// when given, completes the service's options once the store is open
// (serve adds its notifiers there).
func openApp(ctx context.Context, cfg Config, logger *slog.Logger, publicURL string, setup ...func(agentotp.Store, *agentotp.Options) error) (*app, error) {
	if cfg.DB == "" {
		if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
	}
	if err := sharedKeys(cfg); err != nil {
		return nil, err
	}
	key, err := auditKey(cfg)
	if err != nil {
		return nil, err
	}
	st, err := openStore(ctx, cfg, key, false)
	if err != nil {
		return nil, err
	}
	a := &app{store: st}
	a.engine, err = buildEvaluator(ctx, cfg, st, logger, func(ctx context.Context, version string, err error) {
		if a.svc != nil {
			a.svc.RecordPolicyReload(ctx, version, err)
		}
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	opts := agentotp.Options{Evaluator: a.engine, Logger: logger, PublicURL: publicURL, MaxRequestObjectBytes: int(cfg.MaxObjectBytes)}
	for _, f := range setup {
		if err := f(st, &opts); err != nil {
			a.Close()
			return nil, err
		}
	}
	a.svc = agentotp.NewService(st, opts)
	return a, nil
}

func (a *app) Close() error {
	a.engine.Close()
	return a.store.Close()
}

// adminKey returns the bootstrap admin key: from the environment, else from
// <data>/admin.key, else a new one saved there (0600). fresh reports the
// last case, when the key must be shown once.
func adminKey(cfg Config) (key agentotp.Secret, fresh bool, err error) {
	if cfg.AdminKey != "" {
		return cfg.AdminKey, false, nil
	}
	path := filepath.Join(cfg.Data, "admin.key")
	b, err := os.ReadFile(path)
	if err == nil {
		k := agentotp.Secret(strings.TrimSpace(string(b)))
		if !agentotp.ValidKeyFormat(k.Reveal()) {
			return "", false, fmt.Errorf("%s does not hold a valid uk_ key", path)
		}
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, err
	}
	k := agentotp.NewUserKey()
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return "", false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("save admin key: %w", err)
	}
	if _, err := fmt.Fprintln(f, k.Reveal()); err != nil {
		f.Close()
		return "", false, fmt.Errorf("save admin key: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, err
	}
	return k, true, nil
}

// serveGCPercent is the collector's target for serve unless GOGC is set:
// a server's live heap is small and its garbage is per request, so
// collecting at 5× the live heap rather than 2× trades a few tens of MB for
// ~10–15 % more request+use cycles per second (BENCHMARKS.md).
const serveGCPercent = 400

func serve(ctx context.Context, cfg Config, stdout, stderr io.Writer) error {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(serveGCPercent)
	}
	retention, err := storageSettings(cfg)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	url := "http://" + ln.Addr().String()
	publicURL := cfg.PublicURL
	if publicURL == "" {
		publicURL = url
	}
	logNotifier := &notify.Log{Logger: logger, Approve: func(id agentotp.PermissionID) string {
		return fmt.Sprintf("%s approve %s %s", self(), id, dataFlag(cfg))
	}}
	tg, err := telegramSetup(ctx, cfg, publicURL, logger)
	if err != nil {
		return err
	}
	var (
		cbKey      []byte
		cbNotifier *callback.Notifier
	)
	// The console's live updates hear of requests like any notifier.
	live := web.NewLive()
	a, err := openApp(ctx, cfg, logger, publicURL, func(st agentotp.Store, o *agentotp.Options) error {
		fan := notify.Fanout{logNotifier, live}
		if tg != nil {
			fan = append(fan, tg)
		}
		var err error
		o.CallbackHosts, cbKey, cbNotifier, err = callbackSetup(cfg, st, logger)
		if err != nil {
			return err
		}
		if cbNotifier != nil {
			fan = append(fan, cbNotifier)
		}
		o.Notifier = fan
		return nil
	})
	if err != nil {
		return err
	}
	defer a.Close()
	if cbNotifier != nil {
		// Deferred before the sweeper and the HTTP server stop, so it
		// runs after them: nothing resolves once the queue is closed.
		defer cbNotifier.Close()
	}
	stopHeadLog, err := startAuditHeadLog(ctx, a.svc, logger, auditHeadInterval)
	if err != nil {
		return err
	}
	defer stopHeadLog()

	key, fresh, err := adminKey(cfg)
	if err != nil {
		return err
	}
	if _, err := a.svc.EnsureAdmin(ctx, key); err != nil {
		return fmt.Errorf("bootstrap admin: %w", err)
	}
	if p, err := a.svc.Authenticate(ctx, key.Reveal()); err != nil || p.Role() != agentotp.RoleAdmin {
		logger.Warn("the bootstrap admin key (AGENTOTP_ADMIN_KEY or admin.key) no longer signs in as an admin: " +
			"an admin rotated, disabled or deleted it; use an admin's current key")
	}

	api := httpapi.New(a.svc, httpapi.Options{Logger: logger, PublicURL: publicURL, RateLimit: cfg.RateLimit, Version: version, CallbackKey: cbKey})
	mountMCP(api, a.svc, publicURL)
	api.Handle("/ui/", web.New(a.svc, web.Options{Live: live, PublicURL: publicURL, Logger: logger}))
	if tg != nil {
		tg.Attach(a.svc)
		if cfg.TelegramMode == telegram.ModeWebhook {
			// Telegram authenticates with the secret header, checked by
			// the handler; no API key applies.
			api.Handle(telegram.WebhookPath, tg.WebhookHandler())
		}
		tgCtx, stopTG := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			run := func(ctx context.Context) {
				if err := tg.Run(ctx); err != nil && ctx.Err() == nil {
					logger.Error("telegram stopped", "err", err)
				}
			}
			// Instances sharing a database take turns: one long-polls
			// Telegram (two would steal each other's updates).
			if l, ok := a.store.(agentotp.Leaser); ok && cfg.TelegramMode != telegram.ModeWebhook {
				if err := l.Lead(tgCtx, "telegram", 5*time.Second, run); err != nil && tgCtx.Err() == nil {
					logger.Error("telegram lease failed", "err", err)
				}
				return
			}
			run(tgCtx)
		}()
		// Runs before the store closes (deferred after it).
		defer func() { stopTG(); <-done }()
	}

	sweepCtx, stopSweep := context.WithCancel(ctx)
	defer stopSweep()
	go a.svc.RunSweeper(sweepCtx, time.Second)
	go func() {
		// Wakes this instance's waiters when another instance on the same
		// database decides (a no-op on SQLite).
		if err := a.svc.RunChangeFeed(sweepCtx); err != nil && sweepCtx.Err() == nil {
			logger.Error("change feed stopped; waiters fall back to re-reading every second", "err", err)
		}
	}()
	go a.svc.RunPruner(sweepCtx, retention, time.Hour)

	// The banner is written at once, so that whoever reads "listening on"
	// finds the admin key with it.
	var banner strings.Builder
	fmt.Fprintf(&banner, "agentotp %s listening on %s (data: %s)\n", version, url, cfg.StoreName())
	if fresh {
		fmt.Fprintf(&banner, "admin key (shown once, saved to %s): %s\n", filepath.Join(cfg.Data, "admin.key"), key.Reveal())
	}
	if _, n, err := a.store.Agents(ctx, agentotp.Page{Page: 1, Limit: 1}); err == nil && n == 0 {
		fmt.Fprintf(&banner, "create an agent: %s agents create my-agent %s\n", self(), dataFlag(cfg))
	}
	_, _ = io.WriteString(stdout, banner.String())

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			logger.Info("SIGHUP: reloading policies")
			if err := a.engine.Reload(sweepCtx); err != nil {
				logger.Error("policy reload rejected; the previous set stays active", "err", err)
			}
		}
	}()

	return runHTTP(ctx, httpapi.JSONErrors(ln), api, logger)
}

// runHTTP serves h on ln until ctx ends, then shuts down gracefully.
func runHTTP(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	// Cancelling baseCtx ends long-polls and event streams at shutdown.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cancelBase()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// self is how to call this binary in a hint: its path when it is named
// agentotp (./bin/agentotp after make run), else plain agentotp.
func self() string {
	if filepath.Base(os.Args[0]) == "agentotp" {
		return os.Args[0]
	}
	return "agentotp"
}

// dataFlag is the store flag that reaches the same data as cfg, for hints:
// a PostgreSQL DSN without its password (the command reads PGPASSWORD),
// quoted for the shell.
func dataFlag(cfg Config) string {
	if postgresDSN(cfg.DB) {
		return "--db '" + strings.ReplaceAll(cfg.StoreName(), "'", `'\''`) + "'"
	}
	if cfg.DB != "" {
		return "--db " + cfg.StoreName()
	}
	return "--data " + cfg.Data
}

// buildEvaluator returns the policy engine: the rules of cfg.Policies
// (watched for changes) plus the API-managed rules in the store. With
// neither, every request requires approval.
func buildEvaluator(ctx context.Context, cfg Config, st agentotp.Store, logger *slog.Logger, onReload func(context.Context, string, error)) (*policy.Engine, error) {
	opts := policy.Options{Source: st, Counter: st, Logger: logger, OnReload: onReload, Clock: time.Now}
	if cfg.Policies != "" {
		opts.Paths = []string{cfg.Policies}
		opts.Watch = true
	}
	eng, err := policy.New(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if cfg.Policies != "" {
		logger.Info("policies loaded", "path", cfg.Policies, "rules", eng.Set().Len(), "version", eng.Version())
	}
	return eng, nil
}
