// Command quickstart is the original Agent OTP README's flow with the Go
// client: an agent asks to send one invoice email, a human approves, the
// agent verifies and spends the token once, and a second use is refused.
//
// Run a server (`make run`), create an agent, then:
//
//	AGENTOTP_API_KEY=ak_… go run ./examples/quickstart
//
// and approve the request it prints (agentotp approve perm_… --data ./data).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/agentotp/agentotp/clients/otpclient"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run() error {
	url := getenv("AGENTOTP_URL", "http://127.0.0.1:8787")
	key := os.Getenv("AGENTOTP_API_KEY")
	if key == "" {
		return errors.New("set AGENTOTP_API_KEY to an agent key (agentotp agents create NAME --data ./data)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()

	client := otpclient.New(url, key)

	// 1. Ask, and wait (long-poll) for a human if the policy says so.
	perm, err := client.RequestPermission(ctx, otpclient.Request{
		Action:   "gmail.send",
		Resource: "email:client@example.com",
		Scope:    map[string]any{"max_emails": 1, "subject_pattern": "^Invoice.*"},
		Context:  map[string]any{"reason": "Sending monthly invoice"},
		TTL:      5 * time.Minute,
	}, otpclient.Wait(0), otpclient.OnPending(func(p *otpclient.Permission) {
		fmt.Printf("waiting for approval of %s\n  open %s\n  or run: agentotp approve %s --data ./data\n",
			p.ID, p.ApprovalURL, p.ID)
	}))
	switch {
	case errors.Is(err, otpclient.ErrDenied):
		fmt.Printf("denied: %s\n", perm.Reason)
		return nil
	case errors.Is(err, otpclient.ErrExpired):
		fmt.Println("nobody approved in time")
		return nil
	case err != nil:
		return err
	}
	fmt.Printf("approved: %s, token %s…, scope %v, expires %s\n",
		perm.ID, perm.Token.Reveal()[:8], perm.Scope, perm.ExpiresAt.Format(time.RFC3339))

	// 2. Verify: never consumes.
	v, err := client.Verify(ctx, perm.ID, perm.Token)
	if err != nil {
		return err
	}
	fmt.Printf("verify: valid=%v usesRemaining=%d\n", v.Valid, v.UsesRemaining)

	// 3. Use: consumes one use; the details are checked against the scope.
	details := map[string]any{"recipient": "client@example.com", "subject": "Invoice #123", "emails": 1}
	res, err := client.Use(ctx, perm.ID, perm.Token, details)
	if err != nil {
		return err
	}
	fmt.Printf("used: usesRemaining=%d — now send the email\n", res.UsesRemaining)

	// 4. Again: refused, nothing spent.
	_, err = client.Use(ctx, perm.ID, perm.Token, details)
	var oe *otpclient.Error
	if errors.As(err, &oe) && errors.Is(err, otpclient.ErrUseRefused) {
		fmt.Printf("second use refused: %s\n", oe.Reason)
		return nil
	}
	return fmt.Errorf("second use: expected a refusal, got %v", err)
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
