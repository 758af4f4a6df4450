package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

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
	return &adminCmd{fs: fs, load: configFlags(fs, "data", "db", "policies", "url", "log-level", "log-format")}
}

// open parses args and returns the admin backend: the server at --url
// (AGENTOTP_URL) with AGENTOTP_ADMIN_KEY, or else the data directory, with
// the key from AGENTOTP_ADMIN_KEY or <data>/admin.key.
func (c *adminCmd) open(ctx context.Context, args []string, stderr io.Writer) (admin, int) {
	if err := c.fs.Parse(args); err != nil {
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
	return &localAdmin{app: a, p: p}, 0
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
