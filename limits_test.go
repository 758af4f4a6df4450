package agentotp_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/policy"
	"github.com/agentotp/agentotp/store/sqlite"
)

// A budget counted by the policy cannot be overrun by concurrency: 100
// simultaneous requests, served by two Services each with its own Store on
// one database file (as two processes would), approve exactly the budget.
func TestBudgetHoldsUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pol := filepath.Join(dir, "budget.yaml")
	require.NoError(t, os.WriteFile(pol, []byte(`
- name: five per hour
  when: approvals("pay.*", duration("1h")) < 5
  action: auto_approve
- name: otherwise no
  priority: -1
  action: deny
`), 0o600))
	db := filepath.Join(dir, "agentotp.db")
	var svcs []*agentotp.Service
	for range 2 {
		st, err := sqlite.Open(ctx, db, sqlite.Options{Synchronous: "NORMAL"})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		eng, err := policy.New(ctx, policy.Options{Paths: []string{pol}, Counter: st})
		require.NoError(t, err)
		t.Cleanup(func() { eng.Close() })
		svcs = append(svcs, agentotp.NewService(st, agentotp.Options{Evaluator: eng}))
	}
	agent, _, err := svcs[0].CreateAgent(ctx, agentotp.SystemPrincipal, agentotp.AgentInput{Name: "payer"})
	require.NoError(t, err)
	p := agentotp.Principal{Agent: agent}

	var mu sync.Mutex
	statuses := map[agentotp.Status]int{}
	type grant struct {
		perm  *agentotp.Permission
		token agentotp.Secret
	}
	var grants []grant
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 100 {
		wg.Go(func() {
			<-start
			perm, tok, err := svcs[i%2].RequestPermission(ctx, p, agentotp.PermissionRequest{Action: "pay.invoice"})
			require.NoError(t, err)
			mu.Lock()
			statuses[perm.Status]++
			if tok != "" {
				grants = append(grants, grant{perm, tok})
			}
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	require.Equal(t, map[agentotp.Status]int{agentotp.StatusApproved: 5, agentotp.StatusDenied: 95}, statuses)

	// The policy is asked again at each use. The five grants count
	// against the budget now, but none counts against itself: each is
	// within the budget that allowed it, and is spent.
	require.Len(t, grants, 5)
	for i, g := range grants {
		wg.Go(func() {
			res, err := svcs[i%2].Use(ctx, p, g.perm.ID, g.token.Reveal(), nil)
			require.NoError(t, err)
			require.True(t, res.Success, res.Reason)
		})
	}
	wg.Wait()
}
