package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

func compileYAML(t testing.TB, src string) *Set {
	t.Helper()
	s, err := Compile(Settings{}, []File{{Path: "test.yaml", Data: []byte(src)}}, nil)
	require.NoError(t, err)
	return s
}

func eval(t testing.TB, s *Set, in agentotp.EvalInput) (agentotp.Decision, error) {
	t.Helper()
	if in.Now.IsZero() {
		in.Now = t0
	}
	if in.Agent == nil {
		in.Agent = &agentotp.Agent{ID: "agt_test", Name: "tester"}
	}
	return s.Evaluate(context.Background(), in)
}

// TestTestdata runs every YAML suite under testdata, including each policy
// example of the v0.1.1 API reference (Appendix A) and the original README's four policies.
func TestTestdata(t *testing.T) {
	var out bytes.Buffer
	rep := RunTests(context.Background(), "testdata", &out)
	t.Log(out.String())
	require.Empty(t, rep.Invalid)
	require.Zero(t, rep.Failed)
	require.Greater(t, rep.Passed, 100)
	for i := 1; i <= 20; i++ {
		_, err := os.Stat(filepath.Join("testdata", "appendix", fmt.Sprintf("y%02d", i), "policy_test.yaml"))
		require.NoError(t, err, "Appendix A Y%d needs a suite", i)
	}
	require.Contains(t, out.String(), "testdata/readme/policy_test.yaml")
}

// operatorCase is one row of the operator table: a conditions mapping,
// a request, and whether the rule matches.
type operatorCase struct {
	cond  string // YAML for the conditions mapping
	in    agentotp.EvalInput
	match bool
}

func TestOperators(t *testing.T) {
	for name, c := range operatorCases() {
		t.Run(name, func(t *testing.T) {
			s := compileYAML(t, "- name: r\n  conditions:\n    "+c.cond+"\n  action: auto_approve\n")
			d, err := eval(t, s, c.in)
			require.NoError(t, err)
			if c.match {
				require.Equal(t, agentotp.EffectAutoApprove, d.Effect)
				require.Equal(t, "r", d.Rule)
			} else {
				require.Equal(t, agentotp.EffectRequireApproval, d.Effect)
				require.Equal(t, "", d.Rule)
			}
		})
	}
}

func operatorCases() map[string]operatorCase {
	type tc = operatorCase
	sc := func(m map[string]any) agentotp.EvalInput { return agentotp.EvalInput{Action: "a", Scope: m} }
	cx := func(m map[string]any) agentotp.EvalInput { return agentotp.EvalInput{Action: "a", Context: m} }
	cases := map[string]tc{
		"equals string":                     {`scope.x: {equals: "100"}`, sc(map[string]any{"x": "100"}), true},
		"equals strict string vs number":    {`scope.x: {equals: "100"}`, sc(map[string]any{"x": 100.0}), false},
		"equals strict number vs string":    {`scope.x: {equals: 100}`, sc(map[string]any{"x": "100"}), false},
		"equals int vs double":              {`scope.x: {equals: 100}`, sc(map[string]any{"x": 100.0}), true},
		"equals bool not number":            {`scope.x: {equals: true}`, sc(map[string]any{"x": 1.0}), false},
		"equals null":                       {`scope.x: {equals: null}`, sc(map[string]any{"x": nil}), true},
		"equals missing":                    {`scope.x: {equals: null}`, sc(map[string]any{}), false},
		"equals list deep":                  {`scope.x: {equals: [1, "a"]}`, sc(map[string]any{"x": []any{1.0, "a"}}), true},
		"notEquals missing passes":          {`scope.x: {not_equals: "blocked"}`, sc(map[string]any{}), true},
		"notEquals other type passes":       {`scope.x: {notEquals: 5}`, sc(map[string]any{"x": "5"}), true},
		"notEquals same fails":              {`scope.x: {notEquals: 5}`, sc(map[string]any{"x": 5.0}), false},
		"notEquals resource absent passes":  {`resource: {notEquals: "x"}`, agentotp.EvalInput{Action: "a"}, true},
		"lessThan":                          {`scope.x: {lessThan: 10}`, sc(map[string]any{"x": 9.5}), true},
		"lessThan boundary":                 {`scope.x: {less_than: 10}`, sc(map[string]any{"x": 10}), false},
		"lessThan string number":            {`scope.x: {lessThan: 10}`, sc(map[string]any{"x": "5"}), false},
		"lessThan missing":                  {`scope.x: {lessThan: 10}`, sc(map[string]any{}), false},
		"lessThan null":                     {`scope.x: {lessThan: 10}`, sc(map[string]any{"x": nil}), false},
		"lessThan bool":                     {`scope.x: {lessThan: 10}`, sc(map[string]any{"x": false}), false},
		"lessThanOrEqual boundary":          {`scope.x: {lessThanOrEqual: 10}`, sc(map[string]any{"x": 10.0}), true},
		"greaterThan":                       {`scope.x: {greater_than: 1.5}`, sc(map[string]any{"x": 2}), true},
		"greaterThanOrEqual boundary":       {`scope.x: {greater_than_or_equal: 2}`, sc(map[string]any{"x": 2.0}), true},
		"greaterThan negative":              {`scope.x: {greaterThan: -1}`, sc(map[string]any{"x": -2}), false},
		"startsWith":                        {`action: {starts_with: "a"}`, agentotp.EvalInput{Action: "abc"}, true},
		"startsWith number value":           {`scope.x: {startsWith: "1"}`, sc(map[string]any{"x": 12.0}), false},
		"endsWith":                          {`resource: {ends_with: ".pdf"}`, agentotp.EvalInput{Action: "a", Resource: "x.pdf"}, true},
		"endsWith missing resource":         {`resource: {endsWith: ""}`, agentotp.EvalInput{Action: "a"}, false},
		"contains substring":                {`context.reason: {contains: "voice"}`, cx(map[string]any{"reason": "invoices"}), true},
		"contains is not membership":        {`scope.x: {contains: "a"}`, sc(map[string]any{"x": []any{"a"}}), false},
		"matches unanchored":                {`context.r: {matches: "b+"}`, cx(map[string]any{"r": "abbbc"}), true},
		"matches anchored":                  {`context.r: {matches: "^b+$"}`, cx(map[string]any{"r": "abbbc"}), false},
		"matches non-string":                {`context.r: {matches: "1"}`, cx(map[string]any{"r": 1.0}), false},
		"in":                                {`scope.x: {in: [read, list]}`, sc(map[string]any{"x": "read"}), true},
		"in strict":                         {`scope.x: {in: ["1", "2"]}`, sc(map[string]any{"x": 1.0}), false},
		"in numbers":                        {`scope.x: {in: [1, 2]}`, sc(map[string]any{"x": 1.0}), true},
		"in missing fails":                  {`scope.x: {in: [a]}`, sc(map[string]any{}), false},
		"notIn missing passes":              {`scope.x: {not_in: [a]}`, sc(map[string]any{}), true},
		"notIn present":                     {`scope.x: {notIn: [a]}`, sc(map[string]any{"x": "a"}), false},
		"exists true":                       {`scope.x: {exists: true}`, sc(map[string]any{"x": 0.0}), true},
		"exists null is not":                {`scope.x: {exists: true}`, sc(map[string]any{"x": nil}), false},
		"exists false missing":              {`scope.x: {exists: false}`, sc(map[string]any{}), true},
		"exists false null":                 {`scope.x: {exists: false}`, sc(map[string]any{"x": nil}), true},
		"exists resource":                   {`resource: {exists: true}`, agentotp.EvalInput{Action: "a", Resource: "r"}, true},
		"nested path":                       {`context.metadata.priority: {greater_than: 5}`, cx(map[string]any{"metadata": map[string]any{"priority": 7.0}}), true},
		"walk into non-object is undefined": {`context.metadata.priority: {exists: false}`, cx(map[string]any{"metadata": "high"}), true},
		"walk into list is undefined":       {`scope.list.0: {exists: false}`, sc(map[string]any{"list": []any{"a"}}), true},
		"all operators ANDed":               {`scope.x: {greaterThan: 1, lessThan: 3}`, sc(map[string]any{"x": 5}), false},
		"all paths ANDed":                   {"action: {equals: a}\n    scope.x: {exists: true}", sc(map[string]any{}), false},
		"agentId":                           {`agentId: {equals: agt_test}`, agentotp.EvalInput{Action: "a"}, true},
		"agent.metadata":                    {`agent.metadata.team: {equals: ops}`, agentotp.EvalInput{Action: "a", Agent: &agentotp.Agent{ID: "agt_1", Metadata: map[string]any{"team": "ops"}}}, true},
		"dotted key is not addressable":     {`scope.a.b: {exists: true}`, sc(map[string]any{"a.b": 1}), false},
		"unicode":                           {`scope.x: {equals: "héllo \"q\" \\ \n"}`, sc(map[string]any{"x": "héllo \"q\" \\ \n"}), true},
	}
	return cases
}

func TestLoadErrors(t *testing.T) {
	cases := map[string]struct {
		src       string
		msg       string
		line, col int
	}{
		"unknown field":           {"- name: r\n  action: deny\n  prority: 5\n", `unknown field "prority"`, 3, 3},
		"unknown operator":        {"- name: r\n  conditions:\n    action: {equal: x}\n  action: deny\n", `unknown operator "equal"`, 3, 14},
		"empty operator map":      {"- name: r\n  conditions:\n    action: {}\n  action: deny\n", "no operator", 3, 13},
		"unknown path root":       {"- name: r\n  conditions:\n    amount: {lessThan: 5}\n  action: deny\n", "unknown condition path", 3, 5},
		"bad regex":               {"- name: r\n  conditions:\n    resource: {matches: '(['}\n  action: deny\n", "invalid regular expression", 3, 25},
		"lookahead is not RE2":    {"- name: r\n  conditions:\n    resource: {matches: '(?=x)'}\n  action: deny\n", "invalid regular expression", 3, 25},
		"number op needs number":  {"- name: r\n  conditions:\n    scope.x: {lessThan: '5'}\n  action: deny\n", "needs a number", 3, 25},
		"in needs list":           {"- name: r\n  conditions:\n    scope.x: {in: a}\n  action: deny\n", "needs a list", 3, 19},
		"exists needs bool":       {"- name: r\n  conditions:\n    scope.x: {exists: 1}\n  action: deny\n", "needs true or false", 3, 23},
		"action never a number":   {"- name: r\n  conditions:\n    action: {lessThan: 5}\n  action: deny\n", "never matches", 3, 24},
		"bad effect":              {"- name: r\n  action: allow\n", "action must be", 2, 11},
		"no action":               {"- name: r\n  priority: 1\n", "no action", 1, 3},
		"no name":                 {"- action: deny\n", "no name", 1, 3},
		"duplicate names":         {"- name: r\n  action: deny\n- name: r\n  action: deny\n", "same name", 3, 3},
		"alias twice":             {"- name: r\n  agent: a\n  agent_id: b\n  action: deny\n", "repeats", 3, 3},
		"when undeclared":         {"- name: r\n  when: request.actoin == 'x'\n  action: deny\n", "undefined field 'actoin'", 2, 16},
		"when type error":         {"- name: r\n  when: |\n    request.action == 'a' &&\n      request.scope + 1\n  action: deny\n", "no matching overload", 4, 21},
		"when not bool":           {"- name: r\n  when: request.action\n  action: deny\n", "must be a bool", 2, 9},
		"when syntax":             {"- name: r\n  when: 'request.action =='\n  action: deny\n", "Syntax error", 2, 0},
		"when bad regex literal":  {"- name: r\n  when: request.action.matches('([')\n  action: deny\n", "missing closing", 2, 9},
		"when too expensive":      {"- name: r\n  when: request.scope.all(a, request.scope.all(b, request.scope.all(c, a + b + c != '')))\n  action: deny\n", "exceeds the limit", 2, 9},
		"useWhen undeclared":      {"- name: r\n  useWhen: detail.x == 1\n  action: auto_approve\n", "undeclared reference to 'detail'", 2, 12},
		"quorum on auto":          {"- name: r\n  quorum: 2\n  action: auto_approve\n", "quorum applies only", 2, 11},
		"template on deny":        {"- name: r\n  scopeTemplate: {a: 1}\n  action: deny\n", "no effect on a deny rule", 2, 18},
		"ttl too long":            {"- name: r\n  token: {ttl: 2h}\n  action: auto_approve\n", "token.ttl", 2, 16},
		"ttl garbage":             {"- name: r\n  token: {ttl: soon}\n  action: auto_approve\n", "token.ttl", 2, 16},
		"uses zero":               {"- name: r\n  token: {uses: 0}\n  action: auto_approve\n", "token.uses", 2, 17},
		"unknown token field":     {"- name: r\n  token: {ttls: 60}\n  action: auto_approve\n", "token.ttls", 2, 11},
		"yaml escape":             {"- name: r\n  conditions:\n    resource: {matches: \"\\.\"}\n  action: deny\n", "unknown escape", 3, 1},
		"scalar file":             {"hello\n", "list of rules", 1, 1},
		"unknown top-level":       {"policies: []\nversion: 2\n", `unknown top-level field "version"`, 2, 1},
		"rule not a mapping":      {"- just a string\n", "must be a mapping", 1, 3},
		"priority not int":        {"- name: r\n  priority: high\n  action: deny\n", "priority must be an integer", 2, 13},
		"second document invalid": {"- name: a\n  action: deny\n---\n- name: b\n  action: nope\n", "action must be", 5, 11},
		"infinite number":         {"- name: r\n  conditions:\n    scope.x: {lessThan: .inf}\n  action: deny\n", "finite", 3, 25},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Compile(Settings{}, []File{{Path: "p.yaml", Data: []byte(c.src)}}, nil)
			require.Error(t, err)
			require.Contains(t, err.Error(), c.msg)
			var list ErrorList
			require.True(t, errors.As(err, &list))
			found := false
			for _, e := range list {
				if strings.Contains(e.Msg, c.msg) {
					found = true
					require.Equal(t, "p.yaml", e.File)
					require.Equal(t, c.line, e.Line, "line of %v", e)
					if c.col != 0 {
						require.Equal(t, c.col, e.Column, "column of %v", e)
					}
				}
			}
			require.True(t, found)
		})
	}
}

func TestErrorNamesRuleAndRejectsWholeFile(t *testing.T) {
	src := "- name: good\n  action: auto_approve\n- name: bad one\n  conditions:\n    scope.x: {lessThn: 1}\n  action: deny\n"
	_, err := Compile(Settings{}, []File{{Path: "dir/p.yaml", Data: []byte(src)}}, nil)
	require.EqualError(t, err, `dir/p.yaml:5:15: rule "bad one": condition "scope.x": unknown operator "lessThn"`)
	// Two files: one bad file rejects the set.
	_, err = Compile(Settings{}, []File{{Path: "a.yaml", Data: []byte("- name: a\n  action: deny\n")}, {Path: "b.yaml", Data: []byte(src)}}, nil)
	require.Error(t, err)
}

const orderingRules = `
- {name: z-auto, priority: 5, action: auto_approve, conditions: {action: {equals: x}}}
- {name: a-require, priority: 5, action: require_approval, conditions: {action: {equals: x}}}
- {name: m-deny, priority: 5, action: deny, conditions: {action: {equals: x}, scope.bad: {exists: true}}}
- {name: agent-auto, priority: 5, agent: special, action: auto_approve, conditions: {action: {equals: x}}}
- {name: high, priority: 9, action: auto_approve, conditions: {action: {starts_with: y.}}}
- {name: b-require, priority: 1, action: require_approval, conditions: {action: {starts_with: y}}}
- {name: a-require-2, priority: 1, action: require_approval, conditions: {action: {starts_with: y}}}
- {name: catch-all, priority: -100, action: deny}
- {name: y-deny, priority: 9, action: deny, conditions: {action: {equals: y.z}}}
`

func TestOrderingPermutations(t *testing.T) {
	reqs := []agentotp.EvalInput{
		{Action: "x"},
		{Action: "x", Scope: map[string]any{"bad": true}},
		{Action: "x", Agent: &agentotp.Agent{ID: "agt_1", Name: "special"}},
		{Action: "y.a"},
		{Action: "y.z"},
		{Action: "yy"},
		{Action: "q"},
	}
	want := []string{"a-require", "m-deny", "agent-auto", "high", "y-deny", "a-require-2", "catch-all"}
	lines := strings.Split(strings.TrimSpace(orderingRules), "\n")
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 50; i++ {
		rng.Shuffle(len(lines), func(a, b int) { lines[a], lines[b] = lines[b], lines[a] })
		s := compileYAML(t, strings.Join(lines, "\n"))
		for j, in := range reqs {
			d, err := eval(t, s, in)
			require.NoError(t, err)
			require.Equal(t, want[j], d.Rule, "request %d, order %v", j, lines)
		}
	}
}

func TestNarrowingMerge(t *testing.T) {
	s := compileYAML(t, `
- name: r
  action: require_approval
  approvers: [alice, admin]
  quorum: 2
  token: {ttl: 120, uses: 3}
  useWhen: details.n <= scope.max_n
  scopeTemplate:
    max_n: 10
    list: [a, b, c]
    flag: false
    mode: read
    nested: {limit: 5, tags: [x]}
    added: 1
    blocked_domains: [evil.example]
`)
	d, err := eval(t, s, agentotp.EvalInput{Action: "a", Scope: map[string]any{
		"max_n": 50.0, "list": []any{"c", "z", "a"}, "flag": true, "mode": "write",
		"nested": map[string]any{"limit": 2.0, "tags": []any{"x", "y"}, "other": "k"}, "kept": "v",
		// The agent's own blocked list does not lift the rule's.
		"blocked_domains": []any{"other.example"},
	}})
	require.NoError(t, err)
	require.Equal(t, agentotp.EffectRequireApproval, d.Effect)
	require.True(t, sameJSON(d.Scope, map[string]any{
		"max_n": 10, "list": []any{"c", "a"}, "flag": false, "mode": "read",
		"nested": map[string]any{"limit": 2, "tags": []any{"x"}, "other": "k"}, "kept": "v", "added": 1,
		"blocked_domains": []any{"other.example", "evil.example"},
	}), "%v", d.Scope)
	require.Equal(t, []string{"alice", "admin"}, d.Approvers)
	require.Equal(t, 2, d.Quorum)
	require.Equal(t, 120*time.Second, d.TokenTTL)
	require.Equal(t, 3, d.Uses)
	require.Equal(t, "details.n <= scope.max_n", d.UseWhen)
	require.NotEmpty(t, d.PolicyVersion)
	require.Equal(t, "policy requires a human approval", d.Reason)

	// Smaller requested numbers survive; booleans AND.
	d, err = eval(t, s, agentotp.EvalInput{Action: "a", Scope: map[string]any{"max_n": 3.0, "flag": false}})
	require.NoError(t, err)
	require.EqualValues(t, 3.0, d.Scope["max_n"])
	require.Equal(t, false, d.Scope["flag"])
}

type fakeCounter struct {
	mu    sync.Mutex
	perms []fakePerm
	err   error
	calls int
}

type fakePerm struct {
	agent   agentotp.AgentID
	action  string
	created time.Time
	status  agentotp.Status
}

func (f *fakeCounter) CountPermissions(_ context.Context, agent agentotp.AgentID, pattern string, since time.Time, statuses []agentotp.Status) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return 0, f.err
	}
	n := 0
	for _, p := range f.perms {
		if p.agent != agent || !agentotp.MatchPattern(pattern, p.action) || p.created.Before(since) {
			continue
		}
		if len(statuses) > 0 && !containsStatus(statuses, p.status) {
			continue
		}
		n++
	}
	return n, nil
}

func containsStatus(l []agentotp.Status, s agentotp.Status) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

const budgetRules = `
- name: within budget
  priority: 10
  conditions: {action: {starts_with: gmail.}}
  when: approvals("gmail.*", duration("1h")) < 3 && requests("gmail.*", duration("10m")) < 20 && permissions("gmail.send", duration("24h"), ["denied"]) == 0
  action: auto_approve
- name: ask
  conditions: {action: {starts_with: gmail.}}
  action: require_approval
`

func TestBudgetMovedClock(t *testing.T) {
	fc := &fakeCounter{}
	s, err := Compile(Settings{Counter: fc}, []File{{Path: "b.yaml", Data: []byte(budgetRules)}}, nil)
	require.NoError(t, err)
	agent := &agentotp.Agent{ID: "agt_a", Name: "a"}
	now := t0
	decide := func() agentotp.Decision {
		d, err := s.Evaluate(context.Background(), agentotp.EvalInput{Agent: agent, Action: "gmail.send", Now: now})
		require.NoError(t, err)
		return d
	}
	// Request splitting: each approval counts toward the budget.
	for i := 0; i < 3; i++ {
		d := decide()
		require.Equal(t, "within budget", d.Rule, "request %d", i)
		fc.perms = append(fc.perms, fakePerm{agent.ID, "gmail.send", now, agentotp.StatusApproved})
		now = now.Add(time.Minute)
	}
	require.Equal(t, "ask", decide().Rule)
	// Other agents and other actions do not count.
	fc.perms = append(fc.perms, fakePerm{"agt_other", "gmail.send", now, agentotp.StatusApproved})
	// Used permissions still count; pending ones do not count as approvals.
	fc.perms[0].status = agentotp.StatusUsed
	require.Equal(t, "ask", decide().Rule)
	// Move the clock: after an hour the first approval leaves the window.
	now = t0.Add(time.Hour + 30*time.Second)
	require.Equal(t, "within budget", decide().Rule)
	now = t0.Add(2 * time.Hour)
	require.Equal(t, "within budget", decide().Rule)
	// A denial in the last 24h blocks auto-approval.
	fc.perms = append(fc.perms, fakePerm{agent.ID, "gmail.send", now, agentotp.StatusDenied})
	require.Equal(t, "ask", decide().Rule)
	now = now.Add(25 * time.Hour)
	require.Equal(t, "within budget", decide().Rule)
}

func TestFailClosed(t *testing.T) {
	storeDown := &fakeCounter{err: errors.New("database is locked")}
	cases := map[string]struct {
		src     string
		in      agentotp.EvalInput
		counter Counter
	}{
		"missing key":              {"- {name: r, when: request.scope.amount < 10, action: auto_approve}", agentotp.EvalInput{Action: "a"}, nil},
		"runtime type mismatch":    {"- {name: r, when: request.scope.amount < 10, action: auto_approve}", agentotp.EvalInput{Action: "a", Scope: map[string]any{"amount": "5"}}, nil},
		"budget without store":     {"- {name: r, when: 'approvals(\"a\", duration(\"1h\")) < 10', action: auto_approve}", agentotp.EvalInput{Action: "a"}, nil},
		"budget store error":       {"- {name: r, when: 'approvals(\"a\", duration(\"1h\")) < 10', action: auto_approve}", agentotp.EvalInput{Action: "a"}, storeDown},
		"budget negative window":   {"- {name: r, when: 'approvals(\"a\", duration(\"-1h\")) < 10', action: auto_approve}", agentotp.EvalInput{Action: "a"}, &fakeCounter{}},
		"budget bad status":        {"- {name: r, when: 'permissions(\"a\", duration(\"1h\"), [\"nope\"]) < 10', action: auto_approve}", agentotp.EvalInput{Action: "a"}, &fakeCounter{}},
		"index out of range":       {"- {name: r, when: 'request.resource.split(\":\")[1] == \"x\"', action: auto_approve}", agentotp.EvalInput{Action: "a", Resource: "nocolon"}, nil},
		"division by zero":         {"- {name: r, when: '1 / size(request.scope) == 1', action: auto_approve}", agentotp.EvalInput{Action: "a"}, nil},
		"error shadows lower auto": {"- {name: r, priority: 5, when: request.scope.x == 1, action: deny}\n- {name: ok, action: auto_approve}", agentotp.EvalInput{Action: "a"}, nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := Compile(Settings{Counter: c.counter}, []File{{Path: "f.yaml", Data: []byte(c.src)}}, nil)
			require.NoError(t, err)
			d, err := eval(t, s, c.in)
			require.Error(t, err)
			require.Contains(t, err.Error(), `"r"`)
			require.Equal(t, agentotp.EffectDeny, d.Effect)
			require.Equal(t, "r", d.Rule)
			require.NotEmpty(t, d.PolicyVersion)
			require.NotContains(t, d.Reason, "request.")
		})
	}
	t.Run("runtime cost limit", func(t *testing.T) {
		old := runtimeCostLimit
		runtimeCostLimit = 50
		defer func() { runtimeCostLimit = old }()
		s := compileYAML(t, "- {name: r, when: 'request.scope.all(k, request.scope[k] != 0)', action: auto_approve}")
		scope := map[string]any{}
		for i := 0; i < 200; i++ {
			scope[fmt.Sprint("k", i)] = 1.0
		}
		d, err := eval(t, s, agentotp.EvalInput{Action: "a", Scope: scope})
		require.ErrorContains(t, err, "cost limit")
		require.Equal(t, agentotp.EffectDeny, d.Effect)
	})
	t.Run("an error after a match is never reached", func(t *testing.T) {
		s := compileYAML(t, "- {name: first, priority: 2, action: require_approval}\n- {name: r, when: request.scope.x == 1, action: deny}")
		d, err := eval(t, s, agentotp.EvalInput{Action: "a"})
		require.NoError(t, err)
		require.Equal(t, "first", d.Rule)
	})
	t.Run("engine passes the error to the service", func(t *testing.T) {
		e, err := New(context.Background(), Options{Source: staticSource{{ID: "pol_1", Name: "r", When: "request.scope.x == 1", Effect: agentotp.EffectAutoApprove, Active: true}}})
		require.NoError(t, err)
		d, err := e.Evaluate(context.Background(), agentotp.EvalInput{Action: "a", Agent: &agentotp.Agent{ID: "agt_1"}, Now: t0})
		require.Error(t, err)
		require.Equal(t, agentotp.EffectDeny, d.Effect)
		require.Equal(t, "r", d.Rule)
	})
}

func TestDefaults(t *testing.T) {
	s := compileYAML(t, "- {name: r, action: deny, conditions: {action: {equals: x}}}")
	d, err := eval(t, s, agentotp.EvalInput{Action: "unknown.thing"})
	require.NoError(t, err)
	require.Equal(t, agentotp.EffectRequireApproval, d.Effect)
	require.Equal(t, "", d.Rule)

	e, err := New(context.Background(), Options{DefaultDeny: true})
	require.NoError(t, err)
	d, err = e.Evaluate(context.Background(), agentotp.EvalInput{Action: "x", Now: t0})
	require.NoError(t, err)
	require.Equal(t, agentotp.EffectDeny, d.Effect)

	_, err = New(context.Background(), Options{Default: agentotp.EffectAutoApprove})
	require.Error(t, err)

	// Description is the reason; expressions never leak.
	s = compileYAML(t, "- {name: r, description: Small reads are fine, when: 'request.action == \"x\"', action: auto_approve}")
	d, _ = eval(t, s, agentotp.EvalInput{Action: "x"})
	require.Equal(t, "Small reads are fine", d.Reason)
}

type staticSource []*agentotp.Policy

func (s staticSource) Policies(context.Context, agentotp.PolicyFilter) ([]*agentotp.Policy, int, error) {
	return s, len(s), nil
}

func TestAPIPoliciesAndValidate(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("- {name: file rule, action: require_approval, conditions: {action: {equals: a}}}\n"), 0o600))
	src := staticSource{
		{ID: "pol_1", Name: "api rule", Priority: 5, AgentID: "agt_1", Effect: agentotp.EffectAutoApprove, Active: true,
			Conditions:    map[string]any{"action": map[string]any{"equals": "a"}, "scope.n": map[string]any{"less_than": 10.0}},
			ScopeTemplate: map[string]any{"max_n": 3.0}, TokenTTL: time.Minute},
		{ID: "pol_2", Name: "inactive", Priority: 100, Effect: agentotp.EffectDeny, Active: false},
	}
	e, err := New(context.Background(), Options{Paths: []string{dir}, Source: src})
	require.NoError(t, err)
	d, err := e.Evaluate(context.Background(), agentotp.EvalInput{Action: "a", Agent: &agentotp.Agent{ID: "agt_1"}, Scope: map[string]any{"n": 5.0}, Now: t0})
	require.NoError(t, err)
	require.Equal(t, "api rule", d.Rule)
	require.Equal(t, time.Minute, d.TokenTTL)
	require.EqualValues(t, 3.0, d.Scope["max_n"])
	d, _ = e.Evaluate(context.Background(), agentotp.EvalInput{Action: "a", Agent: &agentotp.Agent{ID: "agt_2"}, Now: t0})
	require.Equal(t, "file rule", d.Rule)

	fp := e.FilePolicies()
	require.Len(t, fp, 1)
	require.Equal(t, "file rule", fp[0].Name)
	require.Contains(t, fp[0].Description, "read-only")

	require.NoError(t, e.ValidatePolicy(&agentotp.Policy{Name: "ok", Effect: agentotp.EffectDeny, Conditions: map[string]any{"action": map[string]any{"starts_with": "x."}}}))
	for _, bad := range []*agentotp.Policy{
		{Name: "op", Effect: agentotp.EffectDeny, Conditions: map[string]any{"action": map[string]any{"startWith": "x"}}},
		{Name: "path", Effect: agentotp.EffectDeny, Conditions: map[string]any{"amount": map[string]any{"lessThan": 1.0}}},
		{Name: "when", Effect: agentotp.EffectDeny, When: "request.nope"},
		{Name: "use", Effect: agentotp.EffectAutoApprove, UseWhen: "details.x +"},
		{Name: "regex", Effect: agentotp.EffectDeny, Conditions: map[string]any{"resource": map[string]any{"matches": "(["}}},
		{Name: "empty", Effect: agentotp.EffectDeny, Conditions: map[string]any{"resource": map[string]any{}}},
	} {
		err := e.ValidatePolicy(bad)
		require.Error(t, err, bad.Name)
		require.Equal(t, agentotp.CodeValidation, agentotp.ErrorCode(err), bad.Name)
	}
}

func TestCheckUse(t *testing.T) {
	e, err := New(context.Background(), Options{})
	require.NoError(t, err)
	perm := &agentotp.Permission{
		AgentID: "agt_1", Action: "gmail.send", Resource: "mailto:bob@x.com",
		GrantedScope: map[string]any{"max_emails": 1.0},
		Decision:     agentotp.Decision{UseWhen: `details.recipient == request.resource.split(":")[1] && size(details) <= 2`},
	}
	require.NoError(t, e.CheckUse(context.Background(), nil, perm, map[string]any{"recipient": "bob@x.com"}, t0))
	err = e.CheckUse(context.Background(), nil, perm, map[string]any{"recipient": "eve@x.com"}, t0)
	require.Error(t, err)
	require.Equal(t, agentotp.CodeValidation, agentotp.ErrorCode(err))
	require.Contains(t, err.Error(), "outside the granted conditions")
	// Missing detail: evaluation error, rejected too.
	err = e.CheckUse(context.Background(), nil, perm, map[string]any{}, t0)
	require.Error(t, err)
	require.Equal(t, agentotp.CodeValidation, agentotp.ErrorCode(err))
	// An expression that does not compile rejects.
	perm.Decision.UseWhen = "details.x +"
	require.Error(t, e.CheckUse(context.Background(), nil, perm, map[string]any{}, t0))
	// No useWhen: nothing to check.
	perm.Decision.UseWhen = ""
	require.NoError(t, e.CheckUse(context.Background(), nil, perm, nil, t0))
	// now and local are available.
	perm.Decision.UseWhen = "now < timestamp('2027-01-01T00:00:00Z') && local.year == 2026"
	require.NoError(t, e.CheckUse(context.Background(), nil, perm, nil, t0))

	// The agent as it is at the use: its metadata counts, so a condition
	// on it cannot pass for want of it.
	perm.Decision.UseWhen = `request.agent.metadata.?tier.orValue("") != "restricted" || details.amount < 100.0`
	restricted := &agentotp.Agent{ID: "agt_1", Name: "payer", Metadata: map[string]any{"tier": "restricted"}}
	require.Error(t, e.CheckUse(context.Background(), restricted, perm, map[string]any{"amount": 5000.0}, t0))
	require.NoError(t, e.CheckUse(context.Background(), restricted, perm, map[string]any{"amount": 50.0}, t0))
	other := &agentotp.Agent{ID: "agt_2", Metadata: map[string]any{"tier": "gold"}}
	require.NoError(t, e.CheckUse(context.Background(), nil, perm, map[string]any{"amount": 5000.0}, t0), "no agent: its id alone")
	require.NoError(t, e.CheckUse(context.Background(), other, perm, map[string]any{"amount": 5000.0}, t0), "another agent is not taken for the permission's")
}

func TestReloadKeepsLastGoodSet(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	write := func(s string) { require.NoError(t, os.WriteFile(file, []byte(s), 0o600)) }
	write("- {name: v1, action: auto_approve, conditions: {action: {equals: a}}}\n")
	type ev struct {
		version string
		err     error
	}
	evs := make(chan ev, 16)
	e, err := New(context.Background(), Options{Paths: []string{dir}, Watch: true, Debounce: 20 * time.Millisecond,
		OnReload: func(_ context.Context, v string, err error) { evs <- ev{v, err} }})
	require.NoError(t, err)
	defer e.Close()
	v1 := e.Version()
	decide := func() string {
		d, err := e.Evaluate(context.Background(), agentotp.EvalInput{Action: "a", Now: t0})
		require.NoError(t, err)
		return d.Rule
	}
	require.Equal(t, "v1", decide())

	// Evaluate continuously while reloading (run with -race).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				d, err := e.Evaluate(context.Background(), agentotp.EvalInput{Action: "a", Now: t0})
				if err != nil || (d.Rule != "v1" && d.Rule != "v2") {
					panic(fmt.Sprint("bad decision during reload: ", d.Rule, err))
				}
			}
		}
	}()

	// A broken file is rejected by the watcher; v1 stays.
	write("- {name: v2, action: auto_approve, conditions: {action: {equls: a}}}\n")
	select {
	case x := <-evs:
		require.Error(t, x.err)
		require.Equal(t, v1, x.version)
		require.Contains(t, x.err.Error(), "p.yaml:1:")
	case <-time.After(5 * time.Second):
		t.Fatal("watcher did not report the broken file")
	}
	require.Equal(t, v1, e.Version())
	require.Equal(t, "v1", decide())
	require.Error(t, e.Reload(context.Background()))

	// A fixed file is picked up.
	write("- {name: v2, action: auto_approve, conditions: {action: {equals: a}}}\n")
	require.Eventually(t, func() bool { return e.Version() != v1 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, "v2", decide())
	close(stop)
	wg.Wait()
	for done := false; !done; {
		select {
		case x := <-evs:
			if x.err == nil {
				require.Equal(t, e.Version(), x.version)
				done = true
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no reload event")
		}
	}
	// An unchanged reload is quiet.
	require.NoError(t, e.Reload(context.Background()))
	require.NoError(t, e.Close())
}

// Every way a file changes reloads once, including the update of a
// Kubernetes ConfigMap volume, which swaps a symlink and names no policy
// file.
func TestWatchReloads(t *testing.T) {
	rule := func(name string) string {
		return "- {name: " + name + ", action: auto_approve, conditions: {action: {equals: a}}}\n"
	}
	write := func(t *testing.T, file, s string) { require.NoError(t, os.WriteFile(file, []byte(s), 0o600)) }
	// configMap projects policy.yaml into dir as the kubelet does: the file
	// in a new timestamped directory, ..data renamed to point at it, the old
	// directory removed, and policy.yaml -> ..data/policy.yaml.
	configMap := func(t *testing.T, dir, ts, s string) {
		require.NoError(t, os.Mkdir(filepath.Join(dir, ts), 0o755))
		write(t, filepath.Join(dir, ts, "policy.yaml"), s)
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		require.NoError(t, os.Symlink(ts, filepath.Join(dir, "..data_tmp")))
		require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
		if old == "" {
			require.NoError(t, os.Symlink(filepath.Join("..data", "policy.yaml"), filepath.Join(dir, "policy.yaml")))
		} else {
			require.NoError(t, os.RemoveAll(filepath.Join(dir, old)))
		}
	}
	for _, tc := range []struct {
		name   string
		watch  string // in the temp dir; "" watches the dir
		setup  func(t *testing.T, dir string)
		change func(t *testing.T, dir string)
	}{
		{"edit in place", "",
			func(t *testing.T, dir string) { write(t, filepath.Join(dir, "p.yaml"), rule("v1")) },
			func(t *testing.T, dir string) { write(t, filepath.Join(dir, "p.yaml"), rule("v2")) }},
		{"rename over", "p.yaml",
			func(t *testing.T, dir string) { write(t, filepath.Join(dir, "p.yaml"), rule("v1")) },
			func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "p.yaml.tmp"), rule("v2"))
				require.NoError(t, os.Rename(filepath.Join(dir, "p.yaml.tmp"), filepath.Join(dir, "p.yaml")))
			}},
		{"delete", "",
			func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "a.yaml"), rule("v1"))
				write(t, filepath.Join(dir, "b.yaml"), rule("v2"))
			},
			func(t *testing.T, dir string) { require.NoError(t, os.Remove(filepath.Join(dir, "a.yaml"))) }},
		{"configmap dir", "",
			func(t *testing.T, dir string) { configMap(t, dir, "..2026_03_10_12_00_00.1", rule("v1")) },
			func(t *testing.T, dir string) { configMap(t, dir, "..2026_03_10_12_05_00.2", rule("v2")) }},
		{"configmap file", "policy.yaml",
			func(t *testing.T, dir string) { configMap(t, dir, "..2026_03_10_12_00_00.1", rule("v1")) },
			func(t *testing.T, dir string) { configMap(t, dir, "..2026_03_10_12_05_00.2", rule("v2")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			reloads := make(chan error, 16)
			e, err := New(context.Background(), Options{Paths: []string{filepath.Join(dir, tc.watch)}, Watch: true, Debounce: 20 * time.Millisecond,
				OnReload: func(_ context.Context, _ string, err error) { reloads <- err }})
			require.NoError(t, err)
			defer e.Close()
			decide := func() string {
				d, err := e.Evaluate(context.Background(), agentotp.EvalInput{Action: "a", Now: t0})
				require.NoError(t, err)
				return d.Rule
			}
			require.Equal(t, "v1", decide())
			v1 := e.Version()
			tc.change(t, dir)
			require.Eventually(t, func() bool { return e.Version() != v1 }, 5*time.Second, 10*time.Millisecond)
			require.Equal(t, "v2", decide())
			// Wait out a late reload: the change is reported once and no
			// reload on the way failed.
			time.Sleep(100 * time.Millisecond)
			require.NoError(t, e.Close())
			require.Len(t, reloads, 1)
			require.NoError(t, <-reloads)
		})
	}
}

func TestLocalAndTime(t *testing.T) {
	loc, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	s, err := Compile(Settings{Location: loc}, []File{{Path: "t.yaml", Data: []byte(
		"- {name: r, when: 'local.hour == 8 && local.weekday == 2 && local.date == \"2026-03-10\" && local.zone == \"America/New_York\" && now.getHours() == 12', action: auto_approve}")}}, nil)
	require.NoError(t, err)
	d, err := eval(t, s, agentotp.EvalInput{Action: "a"})
	require.NoError(t, err)
	require.Equal(t, "r", d.Rule)
}

func TestIndex(t *testing.T) {
	s := compileYAML(t, `
- {name: exact, action: deny, conditions: {action: {equals: a.b}}}
- {name: in, action: deny, conditions: {action: {in: [a.c, a.d]}}}
- {name: prefix, action: deny, conditions: {action: {starts_with: a.}}}
- {name: any, action: deny, when: request.action.endsWith(".z")}
`)
	names := func(action string) []string {
		var out []string
		for _, i := range s.candidates(action, nil) {
			out = append(out, s.rules[i].name)
		}
		return out
	}
	require.ElementsMatch(t, []string{"exact", "prefix", "any"}, names("a.b"))
	require.ElementsMatch(t, []string{"in", "prefix", "any"}, names("a.d"))
	require.ElementsMatch(t, []string{"any"}, names("b.b"))
	require.ElementsMatch(t, []string{"prefix", "any"}, names("a.zz"))
}

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		p, s string
		ok   bool
	}{{"*", "", true}, {"gmail.*", "gmail.send", true}, {"gmail.*", "gmail", false}, {"*.send", "x.send", true},
		{"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false}, {"abc", "abc", true}, {"abc", "abcd", false}} {
		require.Equal(t, c.ok, agentotp.MatchPattern(c.p, c.s), "%q %q", c.p, c.s)
	}
}

func TestAliasBomb(t *testing.T) {
	src := "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n" +
		"policies:\n  - name: r\n    action: auto_approve\n    scopeTemplate: {bomb: *e}\n"
	start := time.Now()
	_, err := Compile(Settings{}, []File{{Path: "bomb.yaml", Data: []byte(src)}}, nil)
	require.Error(t, err)
	require.ErrorContains(t, err, "too large")
	require.Less(t, time.Since(start), 2*time.Second)
}
