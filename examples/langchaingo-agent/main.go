// Command langchaingo-agent runs a langchaingo agent whose send_email tool
// is guarded by agentotp: the tool runs only after approval, with the
// permission spent first; a denial comes back to the model as text.
//
// Offline (default): a scripted fake model, agentotp embedded in process,
// and a simulated approver who approves (or, with -deny, denies).
//
//	go run ./examples/langchaingo-agent [-deny]
//
// With OPENAI_API_KEY set it uses a real model; with AGENTOTP_URL and
// AGENTOTP_API_KEY set it asks a real server, where you approve.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tmc/langchaingo/agents"
	"github.com/tmc/langchaingo/chains"
	"github.com/tmc/langchaingo/llms"
	"github.com/tmc/langchaingo/llms/fake"
	"github.com/tmc/langchaingo/llms/openai"
	"github.com/tmc/langchaingo/schema"
	lctools "github.com/tmc/langchaingo/tools"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/store/sqlite"
	"github.com/agentotp/agentotp/tools"
)

// sendEmail is the sensitive tool. It only prints.
type sendEmail struct{}

func (sendEmail) Name() string { return "send_email" }
func (sendEmail) Description() string {
	return "Sends an email. Input: the recipient address, a colon, then the subject."
}
func (sendEmail) Call(_ context.Context, input string) (string, error) {
	fmt.Printf("  [send_email ran] %s\n", input)
	return "email sent: " + input, nil
}

func main() {
	deny := flag.Bool("deny", false, "offline mode: the simulated approver denies")
	flag.Parse()
	if err := run(context.Background(), *deny); err != nil {
		fmt.Fprintln(os.Stderr, "langchaingo-agent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, deny bool) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()

	auth, cleanup, err := authorizer(ctx, deny)
	if err != nil {
		return err
	}
	defer cleanup()

	llm, err := model()
	if err != nil {
		return err
	}
	// The three lines: guard the tools, build the agent, run it.
	guarded := tools.GuardAll([]lctools.Tool{sendEmail{}}, auth, tools.WithAction("email.send"), tools.WithWait(2*time.Minute))
	ex := agents.NewExecutor(agents.NewOneShotAgent(llm, guarded), agents.WithMaxIterations(4), agents.WithReturnIntermediateSteps())
	out, err := chains.Call(ctx, ex, map[string]any{"input": "Email bob@example.com the invoice, subject 'Invoice #123'."})
	if err != nil {
		return err
	}
	for _, s := range out["intermediateSteps"].([]schema.AgentStep) {
		fmt.Printf("model called %s(%q)\n  and read: %s\n", s.Action.Tool, s.Action.ToolInput, s.Observation)
	}
	fmt.Printf("final answer: %s\n", out["output"])
	return nil
}

// model is a real OpenAI model when OPENAI_API_KEY is set, else a scripted
// fake that calls send_email once and then answers.
func model() (llms.Model, error) {
	if os.Getenv("OPENAI_API_KEY") != "" {
		return openai.New()
	}
	return fake.NewFakeLLM([]string{
		"Thought: I should send the email.\nAction: send_email\nAction Input: bob@example.com: Invoice #123",
		"Thought: I now know the final answer\nFinal Answer: I asked to email Bob; the tool's answer above says what happened.",
	}), nil
}

// authorizer is a remote client when AGENTOTP_URL and AGENTOTP_API_KEY are
// set, else an embedded service with a simulated approver.
func authorizer(ctx context.Context, deny bool) (tools.Authorizer, func(), error) {
	if url, key := os.Getenv("AGENTOTP_URL"), os.Getenv("AGENTOTP_API_KEY"); url != "" && key != "" {
		fmt.Println("asking", url, "— approve the request there (agentotp pending / approve)")
		return otpclient.New(url, key), func() {}, nil
	}
	dir, err := os.MkdirTemp("", "agentotp-agent-")
	if err != nil {
		return nil, nil, err
	}
	store, err := sqlite.Open(ctx, filepath.Join(dir, "agentotp.db"), sqlite.Options{})
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { _ = store.Close(); _ = os.RemoveAll(dir) }
	// No policy: every request needs a human.
	svc := agentotp.NewService(store, agentotp.Options{WaitPoll: 50 * time.Millisecond})
	agent, _, err := svc.CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "mail-agent"})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	user, _, err := svc.CreateUser(ctx, agentotp.SystemPrincipal, agentotp.UserInput{Name: "alice", Role: agentotp.RoleApprover})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	go approver(ctx, svc, agentotp.Principal{User: user}, deny)
	return svc.AgentSession(agentotp.Principal{Agent: agent}), cleanup, nil
}

// approver plays the human: it answers each pending request.
func approver(ctx context.Context, svc *agentotp.Service, p agentotp.Principal, deny bool) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		list, _, err := svc.ListPermissions(ctx, p, agentotp.PermissionFilter{Status: agentotp.StatusPending})
		if err != nil {
			continue
		}
		for _, perm := range list {
			in := agentotp.DecideInput{Approved: !deny, Reason: "invoices go out on the 1st"}
			if !deny {
				in.Reason = "ok"
			}
			fmt.Printf("approver alice: %s %s %v -> approved=%v\n", perm.ID, perm.Action, perm.Scope, in.Approved)
			_, _ = svc.Decide(ctx, p, perm.ID, in)
		}
	}
}
