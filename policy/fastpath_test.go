package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

var celCondsCache = map[string]cel.Program{} // tests are not parallel

// celConds evaluates a rule's conditions the reference way: their CEL form
// (conditionsCEL) as one program, as Evaluate did before the Go fast path.
func celConds(t testing.TB, r *rule, in agentotp.EvalInput) bool {
	t.Helper()
	if r.conditionsCEL == "" {
		return true
	}
	prg, ok := celCondsCache[r.conditionsCEL]
	if !ok {
		env, _, err := envs()
		require.NoError(t, err)
		a, iss := env.Compile(r.conditionsCEL)
		require.NoError(t, iss.Err(), r.conditionsCEL)
		prg, err = program(env, a)
		require.NoError(t, err)
		celCondsCache[r.conditionsCEL] = prg
	}
	act := &activation{in: &in, set: &Set{}, ctx: context.Background()}
	v, _, err := prg.Eval(act)
	require.NoError(t, err, r.conditionsCEL)
	return v == types.True
}

func goConds(r *rule, in agentotp.EvalInput) bool {
	act := &activation{in: &in, set: &Set{}, ctx: context.Background()}
	return r.matchConds(act)
}

func requireSamePaths(t *testing.T, s *Set, in agentotp.EvalInput, what string) {
	t.Helper()
	for _, r := range s.rules {
		want := celConds(t, r, in)
		require.Equal(t, want, goConds(r, in), "%s: rule %q, conditions %s, request %+v", what, r.name, r.conditionsCEL, in)
	}
}

// TestFastPathOperatorTable: the Go matchers agree with the CEL form on
// every row of the operator table.
func TestFastPathOperatorTable(t *testing.T) {
	for name, c := range operatorCases() {
		s := compileYAML(t, "- name: r\n  conditions:\n    "+c.cond+"\n  action: auto_approve\n")
		in := c.in
		if in.Agent == nil {
			in.Agent = &agentotp.Agent{ID: "agt_test", Name: "tester"}
		}
		require.Len(t, s.rules, 1)
		require.Equal(t, c.match, celConds(t, s.rules[0], in), name)
		require.Equal(t, c.match, goConds(s.rules[0], in), name)
	}
}

// TestFastPathTestdata: both paths agree on every rule of every testdata
// policy, for every request of its suites.
func TestFastPathTestdata(t *testing.T) {
	var dirs []string
	require.NoError(t, filepath.WalkDir("testdata", func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return err
	}))
	checked := 0
	for _, dir := range dirs {
		files, err := ReadFiles(dir)
		if err != nil || len(files) == 0 {
			continue
		}
		s, err := Compile(Settings{}, files, nil)
		if err != nil {
			continue // suites expecting a load error
		}
		tests, _ := filepath.Glob(filepath.Join(dir, "*_test.yaml"))
		for _, tf := range tests {
			suite, err := ParseCaseFile(tf)
			if err != nil {
				continue
			}
			for _, c := range suite.Cases {
				in := caseInput(c)
				requireSamePaths(t, s, in, tf+": "+c.Name)
				checked++
			}
		}
	}
	require.Greater(t, checked, 100)
}

func caseInput(c Case) agentotp.EvalInput {
	in := agentotp.EvalInput{
		Action: c.Request.Action, Resource: c.Request.Resource, Scope: c.Request.Scope, Context: c.Request.Context, Now: t0,
		Agent: &agentotp.Agent{ID: agentotp.AgentID(c.Request.Agent.ID), Name: c.Request.Agent.Name, Metadata: c.Request.Agent.Metadata},
	}
	if tl := c.Request.Tool; tl != nil {
		in.Tool = &agentotp.ToolCall{Server: tl.Server, Name: tl.Name, Annotations: tl.Annotations, Args: tl.Args}
	}
	return in
}

// TestMatchRegexp: dropping a leading .* never changes match/no-match.
func TestMatchRegexp(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []string{"a", "b", "A", "B", "@", ".", "\n", " ", "é", "x"}
	for _, p := range []string{`.*@corp1\.example$`, `.*`, `.*a|b`, `(?i).*abc`, `.*?x`, `(?s).*x.*`, `.*.*ab`, `^.*x`,
		`.*(a)`, `.*\bb`, `(.*)x`, `.*[a-c]+$`, `.*^a`, `.*$`, `(?m).*^b$`, `.*\Ab`, `(?U).*a+`, `.*a.*b`, `(?s:.*)\n`} {
		orig, err := cachedRegexp(p)
		require.NoError(t, err)
		short, err := matchRegexp(p)
		require.NoError(t, err)
		for range 2000 {
			var b strings.Builder
			for range r.IntN(8) {
				b.WriteString(alphabet[r.IntN(len(alphabet))])
			}
			s := b.String()
			require.Equal(t, orig.MatchString(s), short.MatchString(s), "pattern %q (as %q) on %q", p, short, s)
		}
	}
	short, _ := matchRegexp(`.*@corp1\.example$`)
	require.Equal(t, `(?-m:@corp1\.example$)`, short.String())
}

// Random conditions over every root and operator, with operands and
// inputs drawn from the values where the semantics are subtle (strings
// that look like numbers, int vs double, null, bool, lists, objects,
// missing keys, walks into non-objects).
var (
	fpPaths = []string{"action", "resource", "agentId", "agent.id", "agent.name", "tool.server", "tool.name",
		"scope.x", "scope.x.y", "context.r", "context.m.p", "args.a", "agent.metadata.team", "tool.annotations.ro"}
	fpOps     = []string{"equals", "notEquals", "lessThan", "greaterThan", "lessThanOrEqual", "greaterThanOrEqual", "startsWith", "endsWith", "contains", "matches", "in", "notIn", "exists"}
	fpStrings = []string{"", "a", "ab", "b", "100", "1", "gmail.send", "gmail.", ".send", "^a", "b+", "a.b", "héllo", "x\n\"q\"",
		`.*b`, `.*@a\.b$`, `(?i).*B`, `.*?b$`, `(?s).*\n`, `.*(a|b)`}
)

func fpScalar(r *rand.Rand) any {
	switch r.IntN(9) {
	case 0:
		return nil
	case 1:
		return r.IntN(2) == 0
	case 2:
		return int64(r.IntN(5) - 1)
	case 3:
		return []float64{0, 1, 1.5, 100, -1, 2}[r.IntN(6)]
	case 4:
		return 100
	default:
		return fpStrings[r.IntN(len(fpStrings))]
	}
}

func fpValue(r *rand.Rand, depth int) any {
	if depth < 2 {
		switch r.IntN(8) {
		case 0:
			n := r.IntN(3)
			l := make([]any, n)
			for i := range l {
				l[i] = fpValue(r, depth+1)
			}
			return l
		case 1:
			m := map[string]any{}
			for _, k := range []string{"y", "p", "z"}[:r.IntN(3)] {
				m[k] = fpValue(r, depth+1)
			}
			return m
		}
	}
	return fpScalar(r)
}

func fpOperand(r *rand.Rand, op string) any {
	switch op {
	case "lessThan", "greaterThan", "lessThanOrEqual", "greaterThanOrEqual":
		if r.IntN(2) == 0 {
			return int64(r.IntN(5) - 1)
		}
		return []float64{0.5, 1.5, 100, -1}[r.IntN(4)]
	case "startsWith", "endsWith", "contains", "matches":
		return fpStrings[r.IntN(len(fpStrings))]
	case "in", "notIn":
		n := r.IntN(4)
		l := make([]any, n)
		for i := range l {
			l[i] = fpValue(r, 1)
		}
		return l
	case "exists":
		return r.IntN(2) == 0
	}
	return fpValue(r, 0)
}

func fpObject(r *rand.Rand, keys ...string) map[string]any {
	if r.IntN(5) == 0 {
		return nil
	}
	m := map[string]any{}
	for _, k := range keys {
		if r.IntN(3) > 0 {
			m[k] = fpValue(r, 0)
		}
	}
	return m
}

func fpString(r *rand.Rand) string { return fpStrings[r.IntN(len(fpStrings))] }

func fpInput(r *rand.Rand) agentotp.EvalInput {
	in := agentotp.EvalInput{Action: fpString(r), Resource: fpString(r), Scope: fpObject(r, "x"), Context: fpObject(r, "r", "m"), Now: t0}
	if r.IntN(4) > 0 {
		in.Agent = &agentotp.Agent{ID: agentotp.AgentID(fpString(r)), Name: fpString(r), Metadata: fpObject(r, "team")}
	}
	if r.IntN(2) == 0 {
		in.Tool = &agentotp.ToolCall{Server: fpString(r), Name: fpString(r), Annotations: fpObject(r, "ro"), Args: fpObject(r, "a")}
	}
	return in
}

// TestFastPathRandom compares the two paths on random conditions and
// requests.
func TestFastPathRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	rules, evals := 0, 0
	for range 3000 {
		var conds []condSpec
		for _, p := range r.Perm(len(fpPaths))[:1+r.IntN(3)] {
			c := condSpec{path: fpPaths[p]}
			for _, o := range r.Perm(len(fpOps))[:1+r.IntN(2)] {
				c.ops = append(c.ops, opSpec{op: fpOps[o], value: fpOperand(r, fpOps[o])})
			}
			conds = append(conds, c)
		}
		ru, errs := compileRule(&ruleSpec{name: "r", effect: agentotp.EffectAutoApprove, conds: conds, fieldPos: map[string]position{}})
		if len(errs) > 0 {
			continue // rejected at load (e.g. a number compared with a string field)
		}
		rules++
		for range 20 {
			in := fpInput(r)
			want := celConds(t, ru, in)
			require.Equal(t, want, goConds(ru, in), "conditions %s, request %s", ru.conditionsCEL, fpDump(in))
			evals++
		}
	}
	t.Logf("%d rules, %d evaluations", rules, evals)
	require.Greater(t, rules, 1000)
}

func fpDump(in agentotp.EvalInput) string {
	var b strings.Builder
	fmt.Fprintf(&b, "action=%q resource=%q scope=%#v context=%#v", in.Action, in.Resource, in.Scope, in.Context)
	if in.Agent != nil {
		fmt.Fprintf(&b, " agent=%#v", *in.Agent)
	}
	if in.Tool != nil {
		fmt.Fprintf(&b, " tool=%#v", *in.Tool)
	}
	return b.String()
}

// TestEvaluateConcurrent: pooled activations never leak one request into
// another. Many goroutines decide different requests against one set and
// must get the decisions a sequential run gives.
func TestEvaluateConcurrent(t *testing.T) {
	s := compileYAML(t, benchRules(100)+`- name: by-name
  priority: 100
  agent: special
  when: request.scope.?amount.orValue(0) > 3.0 && local.hour >= 0 && tool.name == "" && size(args) == 0
  action: deny
`)
	r := rand.New(rand.NewPCG(5, 6))
	type job struct {
		in   agentotp.EvalInput
		want agentotp.Decision
	}
	var jobs []job
	for range 200 {
		name := []string{"special", "bench", "other"}[r.IntN(3)]
		in := agentotp.EvalInput{
			Agent:  &agentotp.Agent{ID: agentotp.AgentID(fmt.Sprintf("agt_%d", r.IntN(5))), Name: name, Metadata: map[string]any{"tier": fmt.Sprintf("gold-%d", r.IntN(8))}},
			Action: fmt.Sprintf("svc%d.op%d", r.IntN(4), r.IntN(10)), Resource: []string{"doc:1", "blocked"}[r.IntN(2)],
			Scope:   map[string]any{"amount": float64(r.IntN(60)), "currency": []string{"USD", "EUR", "GBP"}[r.IntN(3)], "flag": r.IntN(2) == 0},
			Context: map[string]any{"recipient": fmt.Sprintf("bob@corp%d.example", r.IntN(100))},
			Now:     t0,
		}
		d, err := s.Evaluate(context.Background(), in)
		require.NoError(t, err)
		jobs = append(jobs, job{in, d})
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 2000 {
				j := jobs[(g*7919+k*31)%len(jobs)]
				d, err := s.Evaluate(context.Background(), j.in)
				if err != nil || !reflect.DeepEqual(d, j.want) {
					errs <- fmt.Sprintf("got %+v, %v; want %+v", d, err, j.want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	rules := map[string]bool{}
	for _, j := range jobs {
		rules[j.want.Rule] = true
	}
	require.Greater(t, len(rules), 3, "the requests should reach several rules")
}

// TestJSONObjectsInCEL: JSON objects reach CEL as Go maps (jsonObj); every
// way of using one behaves as a CEL map.
func TestJSONObjectsInCEL(t *testing.T) {
	in := agentotp.EvalInput{
		Action: "a", Agent: &agentotp.Agent{ID: "agt_1", Metadata: map[string]any{"m": map[string]any{"n": 1.0}, "l": []any{"x"}}},
		Scope:   map[string]any{"a": 1.0, "s": "str", "z": nil, "o": map[string]any{"p": "q"}},
		Context: map[string]any{}, Now: t0,
		Tool: &agentotp.ToolCall{Name: "t", Annotations: map[string]any{"ro": true}, Args: map[string]any{"path": "/x"}},
	}
	for expr, want := range map[string]any{
		`request.scope == {"a": 1, "s": "str", "z": null, "o": {"p": "q"}}`:                       true,
		`request.scope == {"a": 1}`:                                                               false,
		`size(request.scope) == 4 && size(request.context) == 0`:                                  true,
		`"a" in request.scope && !("b" in request.scope)`:                                         true,
		`request.scope.all(k, k != "")`:                                                           true,
		`request.scope.exists(k, request.scope[k] == "str")`:                                      true,
		`has(request.scope.a) && !has(request.scope.b) && has(request.scope.z)`:                   true,
		`request.scope.?a.orValue(0) == 1 && request.scope.?b.orValue(7) == 7`:                    true,
		`request.scope.?o.?p.orValue("") == "q" && request.scope.?s.?p.orValue("none") == "none"`: true,
		`request.scope.z == null && request.scope.o.p == "q" && request.scope["s"] == "str"`:      true,
		`request.agent.metadata.m.n == 1 && request.agent.metadata.l[0] == "x"`:                   true,
		`type(request.scope) == map && type(request.scope.o) == map`:                              true,
		`request.context == {} && request.agent.metadata != {}`:                                   true,
		`tool.annotations.ro && args.path == "/x"`:                                                true,
		`request.scope.b == 1`:   "no such key: b",
		`request.scope.s.p == 1`: "no such key",
		`request.context.x > 1`:  "no such key: x",
	} {
		s := compileYAML(t, "- name: r\n  when: '"+strings.ReplaceAll(expr, "'", "''")+"'\n  action: auto_approve\n")
		d, err := s.Evaluate(context.Background(), in)
		switch w := want.(type) {
		case bool:
			require.NoError(t, err, expr)
			require.Equal(t, w, d.Rule == "r", expr)
		case string:
			require.ErrorContains(t, err, w, expr)
		}
	}
	// A missing object is the empty object.
	s := compileYAML(t, "- name: r\n  when: 'request.scope == {} && size(request.context) == 0 && !has(request.agent.metadata.x) && tool.annotations == {}'\n  action: auto_approve\n")
	d, err := s.Evaluate(context.Background(), agentotp.EvalInput{Action: "a", Now: t0})
	require.NoError(t, err)
	require.Equal(t, "r", d.Rule)
}
