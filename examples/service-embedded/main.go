// Command service-embedded runs agentotp inside your own Go program: the
// service over the embedded SQLite store with a CEL policy file, no HTTP
// server. The agent side uses agentotp.AgentSession — the same two methods
// (Authorize, Spend) that *otpclient.Client offers remotely, so the
// langchaingo guard in package tools takes either.
//
//	go run ./examples/service-embedded
package main

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/policy"
	"github.com/agentotp/agentotp/store/sqlite"
)

//go:embed policy.yaml
var policyYAML []byte

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "service-embedded:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "agentotp-embedded-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// 1. Store and policy engine.
	store, err := sqlite.Open(ctx, filepath.Join(dir, "agentotp.db"), sqlite.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, policyYAML, 0o600); err != nil {
		return err
	}
	engine, err := policy.New(ctx, policy.Options{Paths: []string{policyPath}, Source: store, Counter: store})
	if err != nil {
		return err
	}
	svc := agentotp.NewService(store, agentotp.Options{Evaluator: engine})

	// 2. An agent, and its session: what your agent code calls.
	agent, _, err := svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "embedded-agent"})
	if err != nil {
		return err
	}
	session := svc.AgentSession(agentotp.Principal{Agent: agent})

	// 3. A small read: auto-approved, spent once.
	perm, token, err := session.Authorize(ctx, agentotp.PermissionRequest{
		Action: "file.read", Resource: "file:/reports/q3.txt", Scope: map[string]any{"size_limit": 2048},
	}, 0)
	if err != nil {
		return err
	}
	fmt.Printf("file.read: %s, granted scope %v\n", perm.Status, perm.GrantedScope)
	if err := session.Spend(ctx, perm.ID, token, map[string]any{"size_limit": 2048, "size": 1024}); err != nil {
		return err
	}
	fmt.Println("file.read: spent; read the file now")
	if err := session.Spend(ctx, perm.ID, token, nil); err != nil {
		fmt.Println("file.read again:", err)
	}

	// 4. Anything else: denied by the catch-all rule.
	perm, _, err = session.Authorize(ctx, agentotp.PermissionRequest{Action: "system.exec"}, 0)
	if err != nil {
		return err
	}
	fmt.Printf("system.exec: %s (%s)\n", perm.Status, perm.DecisionReason)

	// 5. A payment: a human must approve. Here "the human" is an approver
	// user this program creates and decides for after a moment; in your
	// program it is your UI calling svc.Decide with the approver's principal.
	alice, _, err := svc.CreateUser(ctx, agentotp.SystemPrincipal, agentotp.UserInput{Name: "alice", Role: agentotp.RoleApprover})
	if err != nil {
		return err
	}
	approver := agentotp.Principal{User: alice}
	go func() {
		time.Sleep(200 * time.Millisecond)
		pending, _, err := svc.ListPermissions(ctx, agentotp.SystemPrincipal, agentotp.PermissionFilter{Status: agentotp.StatusPending})
		if err != nil || len(pending) == 0 {
			return
		}
		fmt.Printf("approver alice: approving %s %s\n", pending[0].Action, pending[0].ID)
		_, _ = svc.Decide(ctx, approver, pending[0].ID, agentotp.DecideInput{Approved: true, Reason: "looks fine"})
	}()
	perm, token, err = session.Authorize(ctx, agentotp.PermissionRequest{
		Action: "bank.transfer", Scope: map[string]any{"max_amount": 100},
	}, 10*time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("bank.transfer: %s\n", perm.Status)
	if perm.Status == agentotp.StatusApproved {
		if err := session.Spend(ctx, perm.ID, token, map[string]any{"amount": 42}); err != nil {
			return err
		}
		fmt.Println("bank.transfer: spent; make the transfer now")
	}

	// 6. The audit trail is hash-chained.
	rep, err := svc.VerifyAudit(ctx, agentotp.SystemPrincipal)
	if err != nil {
		return err
	}
	fmt.Printf("audit: ok=%v, %d events\n", rep.OK, rep.Checked)
	return nil
}
