package otpclient_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/clients/otpclient"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
)

// exampleServer runs a real agentotp server in process (SQLite in a
// temporary directory) with the test policy: auto.* approved, deny.*
// denied, anything else waits for a human. It returns the URL, an agent
// key, an admin client and a cleanup function.
func exampleServer() (string, string, *otpclient.Admin, func()) {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "otpclient-example-")
	store, err := sqlite.Open(ctx, filepath.Join(dir, "agentotp.db"), sqlite.Options{Synchronous: "NORMAL"})
	if err != nil {
		panic(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	url := "http://" + srv.Listener.Addr().String()
	svc := agentotp.NewService(store, agentotp.Options{Evaluator: prefixPolicy, PublicURL: url})
	srv.Config.Handler = httpapi.New(svc, httpapi.Options{RateLimit: -1, PublicURL: url})
	srv.Start()
	adminKey := agentotp.NewUserKey()
	if _, err := svc.EnsureAdmin(ctx, adminKey); err != nil {
		panic(err)
	}
	admin := otpclient.NewAdmin(url, adminKey.Reveal())
	agent, err := admin.CreateAgent(ctx, otpclient.AgentInput{Name: "example"})
	if err != nil {
		panic(err)
	}
	return url, agent.APIKey, admin, func() { srv.Close(); _ = store.Close(); _ = os.RemoveAll(dir) }
}

func Example() {
	url, agentKey, _, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	c := otpclient.New(url, agentKey)
	p, err := c.RequestPermission(ctx, otpclient.Request{
		Action: "auto.file.read", Resource: "file:/reports/q3.txt", Scope: map[string]any{"max_rows": 100},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Status, p.Token) // tokens print redacted
	res, err := c.Use(ctx, p.ID, p.Token, map[string]any{"rows": 20})
	if err != nil {
		panic(err)
	}
	fmt.Println("uses left:", res.UsesRemaining)
	// Output:
	// approved [redacted]
	// uses left: 0
}

// A human approves while the client long-polls; OnPending announces the
// request once.
func ExampleClient_RequestPermission_wait() {
	url, agentKey, admin, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	c := otpclient.New(url, agentKey)
	p, err := c.RequestPermission(ctx, otpclient.Request{Action: "gmail.send", Resource: "email:bob@example.com"},
		otpclient.Wait(0),
		otpclient.OnPending(func(p *otpclient.Permission) {
			fmt.Println("pending; approval page:", strings.HasPrefix(p.ApprovalURL, url+"/ui/requests/"+p.ID))
			go func() { _, _ = admin.Approve(ctx, p.ID, "ok") }()
		}))
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Status, p.Token != "")
	// Output:
	// pending; approval page: true
	// approved true
}

func ExampleClient_Do() {
	url, agentKey, _, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	c := otpclient.New(url, agentKey)
	err := c.Do(ctx, otpclient.Request{Action: "auto.report.send", Scope: map[string]any{"max_pages": 3}},
		func(ctx context.Context, token agentotp.Secret) error {
			fmt.Println("the use is spent; sending the report")
			return nil
		},
		otpclient.UseDetails(map[string]any{"pages": 2}))
	fmt.Println("err:", err)

	err = c.Do(ctx, otpclient.Request{Action: "deny.db.drop"}, func(context.Context, agentotp.Secret) error {
		panic("never runs")
	})
	var oe *otpclient.Error
	if errors.Is(err, otpclient.ErrDenied) && errors.As(err, &oe) {
		fmt.Println("denied:", oe.Reason)
	}
	// Output:
	// the use is spent; sending the report
	// err: <nil>
	// denied: test policy: never allowed
}

func ExampleAdmin_Approvals() {
	url, agentKey, admin, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	c := otpclient.New(url, agentKey)
	if _, err := c.RequestPermission(ctx, otpclient.Request{Action: "bank.transfer", Scope: map[string]any{"max_amount": 100}}); err != nil {
		panic(err)
	}
	queue, _, err := admin.Approvals(ctx, agentotp.StatusPending, otpclient.ListOptions{})
	if err != nil {
		panic(err)
	}
	for _, p := range queue {
		d, err := admin.Decide(ctx, p.ID, otpclient.Decision{Approved: true, ScopeModifications: map[string]any{"max_amount": 50}})
		if err != nil {
			panic(err)
		}
		fmt.Println(d.Action, d.Status, d.Scope["max_amount"], d.Token == "")
	}
	// Output:
	// bank.transfer approved 50 true
}
