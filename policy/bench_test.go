package policy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/agentotp/agentotp"
)

// benchRules generates n rules over n/3 distinct actions: for any action,
// at most 3 exact rules, 1 prefix rule and 6 any-action rules can match, so
// a request evaluates at most 10 rules whatever n is. The mix uses both
// languages: operators (equals, lessThan, matches, in, notEquals) and CEL.
func benchRules(n int) string {
	var b strings.Builder
	any := min(6, n)
	for i := 0; i < any; i++ {
		fmt.Fprintf(&b, "- name: any-%d\n  priority: %d\n  when: request.agent.metadata.?tier.orValue(\"\") == \"gold-%d\" && local.hour < 25\n  action: auto_approve\n", i, i%5, i)
	}
	rest := n - any
	for i := 0; i < rest; i++ {
		svc, op := i/30, (i/3)%10
		switch i % 10 {
		case 9:
			fmt.Fprintf(&b, "- name: prefix-%d\n  priority: %d\n  conditions:\n    action: {starts_with: \"svc%d.\"}\n    scope.flag: {equals: true}\n  action: require_approval\n", i, i%7, svc)
		default:
			fmt.Fprintf(&b, "- name: exact-%d\n  priority: %d\n  conditions:\n    action: {equals: \"svc%d.op%d\"}\n    scope.amount: {less_than: %d}\n    context.recipient: {matches: '.*@corp%d\\.example$'}\n    scope.currency: {in: [USD, EUR]}\n    resource: {not_equals: \"blocked\"}\n  action: auto_approve\n  scopeTemplate: {max_amount: 100}\n", i, i%7, svc, op, 10+i%100, i)
		}
	}
	return b.String()
}

func benchSet(b *testing.B, n int) *Set {
	s, err := Compile(Settings{}, []File{{Path: "bench.yaml", Data: []byte(benchRules(n))}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	if s.Len() != n {
		b.Fatalf("%d rules, want %d", s.Len(), n)
	}
	return s
}

// BenchmarkEvaluate measures one decision where no candidate matches (the
// worst case: every candidate rule is evaluated, then the default).
func BenchmarkEvaluate(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			s := benchSet(b, n)
			in := agentotp.EvalInput{
				Agent:  &agentotp.Agent{ID: "agt_bench", Name: "bench", Metadata: map[string]any{"tier": "silver"}},
				Action: "svc1.op3", Resource: "doc:1",
				Scope:   map[string]any{"amount": 5000.0, "currency": "USD", "flag": false},
				Context: map[string]any{"recipient": "bob@elsewhere.example"},
				Now:     t0,
			}
			cands := len(s.candidates(in.Action, nil))
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				d, err := s.Evaluate(ctx, in)
				if err != nil || d.Rule != "" {
					b.Fatal(d, err)
				}
			}
			b.ReportMetric(float64(cands), "candidates")
		})
	}
}

// BenchmarkEvaluateMatch measures a decision that matches an exact rule
// (with scope narrowing).
func BenchmarkEvaluateMatch(b *testing.B) {
	s := benchSet(b, 1000)
	in := agentotp.EvalInput{
		Agent: &agentotp.Agent{ID: "agt_bench"}, Action: "svc1.op3",
		Scope:   map[string]any{"amount": 1.0, "currency": "EUR"},
		Context: map[string]any{"recipient": "bob@corp40.example"}, Now: t0,
	}
	b.ReportAllocs()
	for b.Loop() {
		d, err := s.Evaluate(context.Background(), in)
		if err != nil || d.Effect != agentotp.EffectAutoApprove {
			b.Fatal(d, err)
		}
	}
}

// BenchmarkCompile measures loading and compiling n rules.
func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			data := []byte(benchRules(n))
			for b.Loop() {
				if _, err := Compile(Settings{}, []File{{Path: "bench.yaml", Data: data}}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
