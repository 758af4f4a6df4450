package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
)

// adminCmd is a parsed admin subcommand working directly on the data
// directory. SQLite's locking makes that safe while a server runs on it.
type adminCmd struct {
	fs   *flag.FlagSet
	load func(func(string) string) (Config, error)
}

func newAdminCmd(name string, stderr io.Writer) *adminCmd {
	fs := flag.NewFlagSet("agentotp "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &adminCmd{fs: fs, load: configFlags(fs, "data", "db", "policies", "url", "log-level", "log-format", "audit-key-file")}
	fs.Usage = func() {
		synopsis := name
		if s, ok := synopses[strings.Fields(name)[0]]; ok {
			synopsis = s
		}
		fmt.Fprintf(fs.Output(), "usage: agentotp %s\n\nWorks on the data directory (--data, --db) or, with --url and AGENTOTP_ADMIN_KEY, on a running server.\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return c
}

// helpShown is the code of a command that printed its --help: Main turns
// it into exit status 0.
const helpShown = -1

// synopses are the admin commands' usage lines.
var synopses = map[string]string{
	"agents":  "agents create NAME [--description D] | list | rotate ID | disable ID | enable ID | delete ID",
	"users":   "users create NAME --role approver|admin [--telegram-id N] | list | rotate ID | delete ID",
	"pending": "pending",
	"show":    "show ID",
	"approve": "approve ID [--reason R] [--scope JSON]",
	"deny":    "deny ID [--reason R]",
	"audit":   "audit list [--follow] [--limit N] | verify | checkpoint | export [--format jsonl]",
	"prune":   "prune [--older-than 30d]",
}

// open parses args and returns the admin backend: the server at --url
// (AGENTOTP_URL) with AGENTOTP_ADMIN_KEY, or else the data directory, with
// the key from AGENTOTP_ADMIN_KEY or <data>/admin.key.
func (c *adminCmd) open(ctx context.Context, args []string, stderr io.Writer) (admin, int) {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, helpShown
		}
		return nil, 2
	}
	cfg, err := c.load(env)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp:", err)
		return nil, 2
	}
	if cfg.URL != "" {
		if cfg.AdminKey == "" {
			fmt.Fprintln(stderr, "agentotp: --url needs AGENTOTP_ADMIN_KEY (a uk_ key of an admin or approver)")
			return nil, 2
		}
		return &remoteAdmin{c: otpclient.NewAdmin(cfg.URL, cfg.AdminKey.Reveal(), otpclient.WithUserAgent("agentotp-cli/"+version))}, 0
	}
	if missingDefaultData(c.fs, cfg) {
		fmt.Fprintf(stderr, "agentotp: there is no %s here, so nothing to administer: run this where `agentotp serve` keeps its data, "+
			"or say where it is with --data DIR (or --db FILE), or use a running server with --url URL and AGENTOTP_ADMIN_KEY\n", cfg.Data)
		return nil, 2
	}
	a, err := openApp(ctx, cfg, newLogger(Config{LogLevel: "warn", LogFormat: cfg.LogFormat}, stderr), "")
	if err != nil {
		fmt.Fprintln(stderr, "agentotp:", err)
		return nil, 1
	}
	// A key from the environment is only used to sign in here: making it
	// the bootstrap admin's key is `serve`'s job, and a typo must not
	// silently rotate it. The key file is the bootstrap's own.
	key, fresh, err := adminKey(cfg)
	if err == nil && cfg.AdminKey == "" {
		_, err = a.svc.EnsureAdmin(ctx, key)
	}
	if err != nil {
		a.Close()
		fmt.Fprintln(stderr, "agentotp: admin key:", err)
		return nil, 1
	}
	if fresh {
		fmt.Fprintf(stderr, "a new admin key was saved to %s/admin.key\n", cfg.Data)
	}
	p, err := a.svc.Authenticate(ctx, key.Reveal())
	if err != nil {
		a.Close()
		fmt.Fprintln(stderr, "agentotp: admin key:", safeMessage(err),
			"— the bootstrap key was rotated, disabled or deleted by an admin; set AGENTOTP_ADMIN_KEY to a current admin or approver key")
		return nil, 1
	}
	return &localAdmin{app: a, p: p, cfg: cfg, stderr: stderr}, 0
}

// fail prints err for a command and returns its exit code.
func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "agentotp %s: %v\n", cmd, safeMessage(err))
	if agentotp.ErrorCode(err) == agentotp.CodeValidation {
		return 2
	}
	return 1
}

func safeMessage(err error) string {
	var e *agentotp.Error
	if errors.As(err, &e) && e.Message != "" {
		return e.Message
	}
	return err.Error()
}

// missingDefaultData reports a local command about to run on the default
// ./data that does not exist: run from the wrong directory, it would
// silently create an empty store and a new admin key, and answer as if
// nothing were there. A data directory named explicitly may be new.
func missingDefaultData(fs *flag.FlagSet, cfg Config) bool {
	explicit := cfg.DB != "" || cfg.Data != DefaultConfig().Data || env("AGENTOTP_DATA") != ""
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "data" || f.Name == "db" })
	if explicit {
		return false
	}
	_, err := os.Stat(cfg.Data)
	return errors.Is(err, os.ErrNotExist)
}

// help prints the command's usage and flags to stdout when args ask for it.
func (c *adminCmd) help(args []string, stdout io.Writer) bool {
	if !slices.ContainsFunc(args, isHelp) {
		return false
	}
	c.fs.SetOutput(stdout)
	c.fs.Usage()
	return true
}
