package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/agentotp/agentotp"
)

// Config is every setting of the server. Precedence: flags > environment >
// config file > defaults. Secrets come only from the environment or from
// files named by *_FILE variables, never from flags or the config file.
type Config struct {
	Addr           string  `yaml:"addr"`
	Data           string  `yaml:"data"`
	DB             string  `yaml:"db"`
	Policies       string  `yaml:"policies"`
	PublicURL      string  `yaml:"publicUrl"`
	TelegramChat   string  `yaml:"telegramChat"`
	TelegramAPIURL string  `yaml:"telegramApiUrl"`
	TelegramMode   string  `yaml:"telegramMode"`
	LogLevel       string  `yaml:"logLevel"`
	LogFormat      string  `yaml:"logFormat"`
	RateLimit      float64 `yaml:"rateLimit"`
	URL            string  `yaml:"url"`
	// CallbackAllow lists, comma-separated, the hosts ("host" or
	// "host:port") that decision callbacks may be sent to.
	CallbackAllow string `yaml:"callbackAllow"`
	// AuditKeyFile holds the key of the audit chain's MAC; empty =
	// AGENTOTP_AUDIT_KEY, else <data>/audit.key.
	AuditKeyFile string `yaml:"auditKeyFile"`
	// Retention is how long decided permissions are kept ("30d", "12h").
	Retention string `yaml:"retention"`
	// MaxObjectBytes caps the JSON size of a request's scope, context and
	// tool annotations; 0 = 8192, at most 65536.
	MaxObjectBytes float64 `yaml:"maxObjectBytes"`

	AdminKey              agentotp.Secret `yaml:"-"`
	TelegramToken         agentotp.Secret `yaml:"-"`
	TelegramWebhookSecret agentotp.Secret `yaml:"-"`
	// CallbackKey derives the agents' callback secrets (hex or base64,
	// at least 32 bytes); empty = <data>/callback.key.
	CallbackKey agentotp.Secret `yaml:"-"`
	// AuditKey is the audit chain's MAC key (AGENTOTP_AUDIT_KEY).
	AuditKey agentotp.Secret `yaml:"-"`
}

// DefaultConfig returns the defaults (README.md lists them).
func DefaultConfig() Config {
	return Config{
		Addr: "127.0.0.1:8787", Data: "./data", TelegramAPIURL: "https://api.telegram.org",
		TelegramMode: "polling", LogLevel: "info", LogFormat: "text", Retention: "30d",
	}
}

// setting binds one Config field to its flag and environment variable.
type setting struct {
	flag, env, usage string
	str              *string
	num              *float64
}

func (c *Config) settings() []setting {
	return []setting{
		{flag: "addr", env: "AGENTOTP_ADDR", usage: "listen address", str: &c.Addr},
		{flag: "data", env: "AGENTOTP_DATA", usage: "data directory (SQLite file agentotp.db inside)", str: &c.Data},
		{flag: "db", env: "AGENTOTP_DB", usage: "store DSN (overrides --data): a SQLite file path or sqlite:PATH, or postgres://USER@HOST/DB (password from PGPASSWORD or the DSN)", str: &c.DB},
		{flag: "policies", env: "AGENTOTP_POLICIES", usage: "policy file or directory", str: &c.Policies},
		{flag: "public-url", env: "AGENTOTP_PUBLIC_URL", usage: "public base URL for links (default http://<addr>)", str: &c.PublicURL},
		{flag: "telegram-chat", env: "AGENTOTP_TELEGRAM_CHAT_ID", usage: "Telegram chat for approval messages", str: &c.TelegramChat},
		{flag: "telegram-api-url", env: "AGENTOTP_TELEGRAM_API_URL", usage: "Telegram Bot API base URL", str: &c.TelegramAPIURL},
		{flag: "telegram-mode", env: "AGENTOTP_TELEGRAM_MODE", usage: "Telegram mode: polling or webhook", str: &c.TelegramMode},
		{flag: "log-level", env: "AGENTOTP_LOG_LEVEL", usage: "log level: debug, info, warn, error", str: &c.LogLevel},
		{flag: "log-format", env: "AGENTOTP_LOG_FORMAT", usage: "log format: text or json", str: &c.LogFormat},
		{flag: "rate-limit", env: "AGENTOTP_RATE_LIMIT", usage: "requests per second per API key (burst 2x); 0 = default 50, -1 = off", num: &c.RateLimit},
		{flag: "url", env: "AGENTOTP_URL", usage: "server URL for remote admin commands", str: &c.URL},
		{flag: "audit-key-file", env: "AGENTOTP_AUDIT_KEY_FILE", usage: "file holding the audit chain's MAC key (default: $AGENTOTP_AUDIT_KEY, else <data>/audit.key)", str: &c.AuditKeyFile},
		{flag: "retention", env: "AGENTOTP_RETENTION", usage: "how long decided and expired permissions are kept before pruning (e.g. 30d, 12h)", str: &c.Retention},
		{flag: "max-object-bytes", env: "AGENTOTP_MAX_OBJECT_BYTES", usage: "largest scope, context or tool annotations (bytes of JSON) a permission request may carry; 0 = 8192, at most 65536", num: &c.MaxObjectBytes},
		{flag: "callback-allow", env: "AGENTOTP_CALLBACK_ALLOW", usage: "hosts (host or host:port, comma-separated) that decision callbacks may be sent to; empty = callbackUrl refused", str: &c.CallbackAllow},
	}
}

// configFlags registers the settings named in want (all when empty) and
// --config on fs, and returns a loader to call after fs.Parse.
func configFlags(fs *flag.FlagSet, want ...string) func(env func(string) string) (Config, error) {
	var flagCfg Config
	var configPath string
	fs.StringVar(&configPath, "config", "", "config file (YAML)")
	wanted := func(name string) bool {
		if len(want) == 0 {
			return true
		}
		for _, w := range want {
			if w == name {
				return true
			}
		}
		return false
	}
	for _, st := range flagCfg.settings() {
		if !wanted(st.flag) {
			continue
		}
		if st.str != nil {
			fs.StringVar(st.str, st.flag, "", st.usage+" ($"+st.env+")")
		} else {
			fs.Float64Var(st.num, st.flag, 0, st.usage+" ($"+st.env+")")
		}
	}
	return func(env func(string) string) (Config, error) {
		cfg := DefaultConfig()
		if configPath == "" {
			configPath = env("AGENTOTP_CONFIG")
		}
		if configPath != "" {
			if err := readConfigFile(configPath, &cfg); err != nil {
				return cfg, err
			}
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		dst, src := cfg.settings(), flagCfg.settings()
		for i, st := range dst {
			v := env(st.env)
			switch {
			case set[st.flag] && st.str != nil:
				*st.str = *src[i].str
			case set[st.flag]:
				*st.num = *src[i].num
			case v != "" && st.str != nil:
				*st.str = v
			case v != "":
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return cfg, fmt.Errorf("%s: not a number: %q", st.env, v)
				}
				*st.num = n
			}
		}
		var err error
		if cfg.AdminKey, err = secretFromEnv(env, "AGENTOTP_ADMIN_KEY"); err != nil {
			return cfg, err
		}
		if cfg.TelegramToken, err = secretFromEnv(env, "AGENTOTP_TELEGRAM_TOKEN"); err != nil {
			return cfg, err
		}
		if cfg.TelegramWebhookSecret, err = secretFromEnv(env, "AGENTOTP_TELEGRAM_WEBHOOK_SECRET"); err != nil {
			return cfg, err
		}
		if v := env("AGENTOTP_AUDIT_KEY"); v != "" {
			cfg.AuditKey = agentotp.Secret(strings.TrimSpace(v))
		}
		if cfg.CallbackKey, err = secretFromEnv(env, "AGENTOTP_CALLBACK_KEY"); err != nil {
			return cfg, err
		}
		return cfg, cfg.Validate()
	}
}

func readConfigFile(path string, cfg *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true) // a misspelt key is an error, not a silent default
	if err := dec.Decode(cfg); err != nil && err != io.EOF {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// secretFromEnv reads NAME, or the file named by NAME_FILE.
func secretFromEnv(env func(string) string, name string) (agentotp.Secret, error) {
	if v := env(name); v != "" {
		return agentotp.Secret(strings.TrimSpace(v)), nil
	}
	if path := env(name + "_FILE"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("%s_FILE: %w", name, err)
		}
		return agentotp.Secret(strings.TrimSpace(string(b))), nil
	}
	return "", nil
}

// Validate checks settings and names the offending one.
func (c *Config) Validate() error {
	switch {
	case c.Addr == "":
		return fmt.Errorf("addr: must not be empty")
	case c.Data == "" && c.DB == "":
		return fmt.Errorf("data: must not be empty")
	case c.TelegramMode != "polling" && c.TelegramMode != "webhook":
		return fmt.Errorf("telegram-mode: must be polling or webhook, not %q", c.TelegramMode)
	case c.LogFormat != "text" && c.LogFormat != "json":
		return fmt.Errorf("log-format: must be text or json, not %q", c.LogFormat)
	case c.RateLimit < -1:
		return fmt.Errorf("rate-limit: must be -1 (off), 0 (default) or positive")
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.AdminKey != "" && (!agentotp.ValidKeyFormat(c.AdminKey.Reveal()) || !strings.HasPrefix(c.AdminKey.Reveal(), agentotp.UserKeyPrefix)) {
		return fmt.Errorf("AGENTOTP_ADMIN_KEY: must be uk_ followed by 32 base64url characters")
	}
	if err := checkCallbackHosts(c.CallbackHosts()); err != nil {
		return err
	}
	if c.CallbackKey != "" {
		if _, err := decodeCallbackKey(c.CallbackKey.Reveal()); err != nil {
			return fmt.Errorf("AGENTOTP_CALLBACK_KEY: %w", err)
		}
	}
	if strings.HasPrefix(c.DB, "postgres") && !postgresDSN(c.DB) {
		return fmt.Errorf("db: a PostgreSQL database is named postgres://… or postgresql://…")
	}
	return nil
}

// CallbackHosts returns the callback allow-list entries of CallbackAllow.
func (c *Config) CallbackHosts() []string {
	var out []string
	for h := range strings.SplitSeq(c.CallbackAllow, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// DBPath returns the SQLite file to open.
func (c *Config) DBPath() string {
	if c.DB != "" {
		return strings.TrimPrefix(strings.TrimPrefix(c.DB, "sqlite://"), "sqlite:")
	}
	return filepath.Join(c.Data, "agentotp.db")
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log-level: must be debug, info, warn or error, not %q", s)
	}
	return l, nil
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// postgresDSN reports whether db names a PostgreSQL database.
func postgresDSN(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// StoreName is the store as shown in messages and hints: the SQLite file's
// path, or the PostgreSQL DSN without its password.
func (c *Config) StoreName() string {
	if !postgresDSN(c.DB) {
		return c.DBPath()
	}
	u, err := url.Parse(c.DB)
	if err != nil {
		return "postgres://…" // unparsable: show nothing that may be secret
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	q := u.Query()
	if q.Has("password") {
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
