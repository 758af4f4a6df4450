package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/agentotp/agentotp"
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
	return &adminCmd{fs: fs, load: configFlags(fs, "data", "db", "policies", "url", "log-level", "log-format")}
}

// open parses args and returns the app and the admin principal. The admin
// key comes from AGENTOTP_ADMIN_KEY or <data>/admin.key.
func (c *adminCmd) open(ctx context.Context, args []string, stderr io.Writer) (*app, agentotp.Principal, int) {
	if err := c.fs.Parse(args); err != nil {
		return nil, agentotp.Principal{}, 2
	}
	cfg, err := c.load(env)
	if err != nil {
		fmt.Fprintln(stderr, "agentotp:", err)
		return nil, agentotp.Principal{}, 2
	}
	if cfg.URL != "" {
		fmt.Fprintln(stderr, "agentotp: remote admin (--url) is not available yet; use --data on the server's machine")
		return nil, agentotp.Principal{}, 2
	}
	a, err := openApp(ctx, cfg, newLogger(Config{LogLevel: "warn", LogFormat: cfg.LogFormat}, stderr), "")
	if err != nil {
		fmt.Fprintln(stderr, "agentotp:", err)
		return nil, agentotp.Principal{}, 1
	}
	key, fresh, err := adminKey(cfg)
	if err == nil {
		_, err = a.svc.EnsureAdmin(ctx, key)
	}
	if err != nil {
		a.Close()
		fmt.Fprintln(stderr, "agentotp: admin key:", err)
		return nil, agentotp.Principal{}, 1
	}
	if fresh {
		fmt.Fprintf(stderr, "a new admin key was saved to %s/admin.key\n", cfg.Data)
	}
	p, err := a.svc.Authenticate(ctx, key.Reveal())
	if err != nil {
		a.Close()
		fmt.Fprintln(stderr, "agentotp: admin key:", err)
		return nil, agentotp.Principal{}, 1
	}
	return a, p, 0
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
	if e, ok := err.(*agentotp.Error); ok && e.Message != "" {
		return e.Message
	}
	return err.Error()
}
