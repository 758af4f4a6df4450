package policy

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/agentotp/agentotp"
)

// FuzzLoad feeds arbitrary bytes to the loader: it must never panic, and
// whatever it accepts must be a well-formed set that evaluates without
// panicking and never auto-approves on an evaluation error.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*/*.yaml")
	for _, p := range seeds {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	for _, s := range []string{
		"- {name: r, action: deny}", "policies: []", "", "---\n---\n", "- name: r\n  when: 'request.scope.x > 1'\n  action: auto_approve",
		"- {name: r, action: auto_approve, conditions: {scope.x: {in: [1, '1', null, [2]]}}}", "{name: x, action: deny, agent_id: a}",
		"- &a {name: r, action: deny}\n- *a", "- {name: r, action: auto_approve, scopeTemplate: {a: {b: [1, {c: 2}]}}}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Compile(Settings{}, []File{{Path: "fuzz.yaml", Data: data}}, nil)
		if err != nil {
			if set != nil {
				t.Fatal("a set and an error")
			}
			return
		}
		for _, r := range set.rules {
			if r.name == "" {
				t.Fatal("accepted a rule without a name")
			}
			if r.effect != agentotp.EffectDeny && r.effect != agentotp.EffectRequireApproval && r.effect != agentotp.EffectAutoApprove {
				t.Fatal("accepted an unknown effect")
			}
		}
		if set.version == "" {
			t.Fatal("no version")
		}
		for _, in := range []agentotp.EvalInput{
			{Action: "a", Now: t0},
			{Action: "file.read", Resource: "x:y", Scope: map[string]any{"x": 1.0, "a": "b"}, Context: map[string]any{"recipient": "a@b"}, Agent: &agentotp.Agent{ID: "agt_1", Name: "n"}, Now: t0},
		} {
			requireSamePaths(t, set, in, "fuzz") // Go matchers == CEL conditions
			d, err := set.Evaluate(context.Background(), in)
			if err != nil && d.Effect != agentotp.EffectDeny {
				t.Fatalf("evaluation error did not fail closed: %v", d)
			}
		}
		// Same input, same set.
		again, err := Compile(Settings{}, []File{{Path: "fuzz.yaml", Data: data}}, nil)
		if err != nil || again.version != set.version || again.Len() != set.Len() {
			t.Fatalf("not deterministic: %v", err)
		}
	})
}
