package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/interpreter"

	"github.com/agentotp/agentotp"
)

// Counter counts an agent's permissions for budget functions. The store
// satisfies it (agentotp.Store.CountPermissions).
type Counter interface {
	CountPermissions(ctx context.Context, agent agentotp.AgentID, actionPattern string, since time.Time, statuses []agentotp.Status) (int, error)
}

// rule is one compiled rule.
type rule struct {
	name, description string
	priority          int
	agent             string
	effect            agentotp.Effect
	scopeTemplate     map[string]any
	approvers         []string
	quorum            int
	ttl               time.Duration
	uses              int
	useWhen           string
	conditionsCEL     string
	conds             []*condMatcher // the conditions (Go fast path of conditionsCEL)
	prg               cel.Program    // the `when` expression; nil: none
	key               actionKey

	file     string // file path, or "api:<policy id>"
	line     int
	policyID agentotp.PolicyID
	spec     *ruleSpec
}

// less is the evaluation order: priority (higher first); then
// agent-specific before global; then deny, require_approval, auto_approve;
// then by name; then by source, so the order never depends on how rules
// were listed.
func less(a, b *rule) bool {
	if a.priority != b.priority {
		return a.priority > b.priority
	}
	if (a.agent != "") != (b.agent != "") {
		return a.agent != ""
	}
	if a.effect != b.effect {
		return a.effect < b.effect // EffectDeny < RequireApproval < AutoApprove
	}
	if a.name != b.name {
		return a.name < b.name
	}
	if a.file != b.file {
		return a.file < b.file
	}
	return a.line < b.line
}

// Settings are the run-time settings of a Set.
type Settings struct {
	// Default is the effect when no rule matches (EffectRequireApproval
	// unless set; set DefaultSet to use EffectDeny, whose value is zero).
	Default    agentotp.Effect
	DefaultSet bool
	// Location is the time zone of `local` (UTC when nil).
	Location *time.Location
	// Counter serves budget functions; nil makes them evaluation errors.
	Counter Counter
}

// Set is a compiled, immutable rule set. It is safe for concurrent use.
type Set struct {
	rules    []*rule
	exact    map[string][]int32
	prefix   map[string][]int32
	anyRules []int32
	maxPfx   int
	version  string
	settings Settings
	useProgs map[string]cel.Program
}

// Version is the short hash identifying the compiled sources.
func (s *Set) Version() string { return s.version }

// Len is the number of rules.
func (s *Set) Len() int { return len(s.rules) }

// LoadFiles reads and compiles policy files and directories with default
// settings. The error is an ErrorList naming file, rule, line and column.
func LoadFiles(paths ...string) (*Set, error) {
	files, err := ReadFiles(paths...)
	if err != nil {
		return nil, err
	}
	return Compile(Settings{}, files, nil)
}

// Compile parses and compiles files and API-managed policies into one set.
// Any error rejects the whole set.
func Compile(st Settings, files []File, policies []*agentotp.Policy) (*Set, error) {
	var specs []*ruleSpec
	var errs ErrorList
	h := sha256.New()
	for _, f := range files {
		fs, ferrs := parseFile(f)
		errs = append(errs, ferrs...)
		specs = append(specs, fs...)
		fmt.Fprintf(h, "file %q %d\n", f.Path, len(f.Data))
		h.Write(f.Data)
	}
	for _, p := range policies {
		if !p.Active {
			continue
		}
		sp, perrs := specFromPolicy(p)
		errs = append(errs, perrs...)
		if len(perrs) == 0 {
			specs = append(specs, sp)
		}
		fmt.Fprintf(h, "api %s %s\n", p.ID, p.UpdatedAt.UTC().Format(time.RFC3339Nano))
	}
	set := &Set{settings: st, exact: map[string][]int32{}, prefix: map[string][]int32{}, useProgs: map[string]cel.Program{}}
	names := map[string]*ruleSpec{}
	for _, sp := range specs {
		if prev, dup := names[sp.name]; dup && sp.policyID == "" && prev.policyID == "" {
			errs = append(errs, &Error{File: sp.file, Line: sp.pos.line, Column: sp.pos.col, Rule: sp.name,
				Msg: fmt.Sprintf("another rule has the same name (%s:%d)", prev.file, prev.pos.line)})
			continue
		}
		names[sp.name] = sp
		r, rerrs := compileRule(sp)
		if len(rerrs) > 0 {
			errs = append(errs, rerrs...)
			continue
		}
		r.spec = sp
		set.rules = append(set.rules, r)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if _, useEnv, err := envs(); err == nil {
		for _, r := range set.rules {
			if r.useWhen != "" && set.useProgs[r.useWhen] == nil {
				if a, iss := compileExpr(useEnv, r.useWhen); iss == nil {
					if p, err := program(useEnv, a); err == nil {
						set.useProgs[r.useWhen] = p
					}
				}
			}
		}
	}
	sort.SliceStable(set.rules, func(i, j int) bool { return less(set.rules[i], set.rules[j]) })
	for i, r := range set.rules {
		idx := int32(i)
		switch {
		case r.key.any:
			set.anyRules = append(set.anyRules, idx)
		case r.key.prefix != "":
			set.prefix[r.key.prefix] = append(set.prefix[r.key.prefix], idx)
			set.maxPfx = max(set.maxPfx, len(r.key.prefix))
		default:
			for _, a := range r.key.exact {
				l := set.exact[a]
				if len(l) == 0 || l[len(l)-1] != idx {
					set.exact[a] = append(l, idx)
				}
			}
		}
	}
	fmt.Fprintf(h, "default %v %v\n", effectiveDefault(st), st.Location)
	set.version = hex.EncodeToString(h.Sum(nil))[:12]
	return set, nil
}

func effectiveDefault(st Settings) agentotp.Effect {
	if st.Default == agentotp.EffectDeny && !st.DefaultSet {
		return agentotp.EffectRequireApproval
	}
	return st.Default
}

// candidates returns, in evaluation order, the rules whose action index
// admits action.
func (s *Set) candidates(action string, buf []int32) []int32 {
	buf = append(buf, s.exact[action]...)
	n := min(len(action), s.maxPfx)
	for i := 1; i <= n; i++ {
		buf = append(buf, s.prefix[action[:i]]...)
	}
	buf = append(buf, s.anyRules...)
	if len(buf) > 1 {
		slices.Sort(buf)
	}
	return buf
}

// activation feeds one request to CEL and to the condition matchers;
// values are built once per decision, lazily.
type activation struct {
	in     *agentotp.EvalInput
	inV    agentotp.EvalInput // Evaluate's copy of the input (in points here)
	set    *Set
	ctx    context.Context
	reqObj *reqObj
	req    ref.Val
	now    ref.Val
	local  *localObj
	localV ref.Val
	tool   *toolObj
	toolV  ref.Val
	args   ref.Val
	budget *budgetVal
	mem    actMem
}

// actMem holds the objects of one decision, allocated with the activation
// in one piece and handed to CEL by pointer (so without boxing).
type actMem struct {
	req    reqObj
	agent  agentObj
	reqV   objVal[reqObj]
	agentV objVal[agentObj]
	local  localObj
	localV objVal[localObj]
	tool   toolObj
	toolV  objVal[toolObj]
}

var emptyMap = types.DefaultTypeAdapter.NativeToValue(map[string]any{})

func jsonVal(m map[string]any) ref.Val {
	if m == nil {
		return emptyMap
	}
	return types.DefaultTypeAdapter.NativeToValue(m)
}

// request is the request object, built at its first use.
func (a *activation) request() *reqObj {
	if a.reqObj == nil {
		in, m := a.in, &a.mem
		m.req = reqObj{action: lazyStr{s: in.Action}, resource: lazyStr{s: in.Resource}, scope: jsonObj{raw: in.Scope}, context: jsonObj{raw: in.Context}}
		if in.Agent != nil {
			m.agent = agentObj{id: lazyStr{s: string(in.Agent.ID)}, name: lazyStr{s: in.Agent.Name}, metadata: jsonObj{raw: in.Agent.Metadata}}
		}
		m.agentV = objVal[agentObj]{&m.agent, agentType}
		m.req.agentPtr = &m.agent
		m.req.agent = &m.agentV
		a.reqObj = &m.req
	}
	return a.reqObj
}

func (r *reqObj) agentObj() *agentObj { return r.agentPtr }

func newLocal(now time.Time, loc *time.Location) localObj {
	if loc == nil {
		loc = time.UTC
	}
	t := now.In(loc)
	return localObj{
		hour: int64(t.Hour()), minute: int64(t.Minute()), weekday: int64(t.Weekday()),
		day: int64(t.Day()), month: int64(t.Month()), year: int64(t.Year()),
		date: t.Format(time.DateOnly), zone: loc.String(),
	}
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "request":
		if a.req == nil {
			a.mem.reqV = objVal[reqObj]{a.request(), requestType}
			a.req = &a.mem.reqV
		}
		return a.req, true
	case "now":
		if a.now == nil {
			a.now = types.Timestamp{Time: a.in.Now}
		}
		return a.now, true
	case "local":
		if a.localV == nil {
			a.mem.local = newLocal(a.in.Now, a.set.settings.Location)
			a.mem.localV = objVal[localObj]{&a.mem.local, localType}
			a.local, a.localV = &a.mem.local, &a.mem.localV
		}
		return a.localV, true
	case "tool":
		if a.toolV == nil {
			if t := a.in.Tool; t != nil {
				a.mem.tool = toolObj{server: lazyStr{s: t.Server}, name: lazyStr{s: t.Name}, annotations: jsonObj{raw: t.Annotations}}
			}
			a.mem.toolV = objVal[toolObj]{&a.mem.tool, toolType}
			a.tool, a.toolV = &a.mem.tool, &a.mem.toolV
		}
		return a.toolV, true
	case "args":
		if a.args == nil {
			a.args = emptyMap
			if a.in.Tool != nil {
				a.args = jsonVal(a.in.Tool.Args)
			}
		}
		return a.args, true
	case "__budget":
		if a.budget == nil {
			a.budget = &budgetVal{ctx: a.ctx, counter: a.set.settings.Counter, now: a.in.Now}
			if c, ok := agentotp.CounterFrom(a.ctx); ok {
				// The service decides budget-dependent requests inside its
				// writer, counting through the transaction.
				a.budget.counter = c
			}
			if a.in.Agent != nil {
				a.budget.agent = a.in.Agent.ID
			}
		}
		return a.budget, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// Evaluate decides a request: the first matching rule in order wins; no
// match gives the default. An evaluation error stops the walk and fails
// closed: the Decision is a deny naming the rule, and the error is
// returned (the service denies and audits it) — never an approval.
func (s *Set) Evaluate(ctx context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	act := actPool.Get().(*activation)
	act.inV, act.set, act.ctx = in, s, ctx
	act.in = &act.inV
	d, err := s.evaluate(act)
	*act = activation{} // drop every reference to this request
	actPool.Put(act)
	return d, err
}

// actPool recycles activations: a decision's per-request objects are one
// activation, and nothing keeps a reference to it once Evaluate returns
// (CEL results are plain values; decisions copy what they need).
var actPool = sync.Pool{New: func() any { return new(activation) }}

func (s *Set) evaluate(act *activation) (agentotp.Decision, error) {
	in := act.in
	var buf [32]int32
	cands := s.candidates(in.Action, buf[:0])
	for _, i := range cands {
		r := s.rules[i]
		if r.agent != "" && (in.Agent == nil || (r.agent != in.Agent.Name && r.agent != string(in.Agent.ID))) {
			continue
		}
		if !r.matchConds(act) {
			continue
		}
		if r.prg != nil {
			v, _, err := r.prg.Eval(act)
			if err != nil {
				return s.failClosed(r, err)
			}
			b, ok := v.(types.Bool)
			if !ok {
				return s.failClosed(r, fmt.Errorf("result is %s, not bool", v.Type().TypeName()))
			}
			if !b {
				continue
			}
		}
		return s.decide(r, in), nil
	}
	eff := effectiveDefault(s.settings)
	return agentotp.Decision{Effect: eff, PolicyVersion: s.version, Reason: defaultReason(eff)}, nil
}

// matchConds reports whether all of the rule's conditions hold.
func (r *rule) matchConds(a *activation) bool {
	for _, c := range r.conds {
		if !c.match(a) {
			return false
		}
	}
	return true
}

func (s *Set) failClosed(r *rule, err error) (agentotp.Decision, error) {
	return agentotp.Decision{
			Effect: agentotp.EffectDeny, Rule: r.name, PolicyVersion: s.version,
			Reason: "policy evaluation failed; request denied",
		},
		fmt.Errorf("policy rule %q (%s): evaluation failed: %w", r.name, r.source(), err)
}

func (r *rule) source() string {
	if r.line > 0 {
		return fmt.Sprintf("%s:%d", r.file, r.line)
	}
	return r.file
}

func (s *Set) decide(r *rule, in *agentotp.EvalInput) agentotp.Decision {
	d := agentotp.Decision{Effect: r.effect, Rule: r.name, PolicyVersion: s.version, Reason: r.description}
	if d.Reason == "" {
		d.Reason = ruleReason(r.effect)
	}
	if r.effect == agentotp.EffectDeny {
		return d
	}
	if r.scopeTemplate != nil {
		d.Scope = agentotp.NarrowScope(in.Scope, r.scopeTemplate)
	}
	d.TokenTTL, d.Uses, d.UseWhen = r.ttl, r.uses, r.useWhen
	if r.effect == agentotp.EffectRequireApproval {
		d.Approvers = slices.Clone(r.approvers)
		d.Quorum = max(r.quorum, 1)
	}
	return d
}

func ruleReason(e agentotp.Effect) string {
	switch e {
	case agentotp.EffectAutoApprove:
		return "approved by policy"
	case agentotp.EffectRequireApproval:
		return "policy requires a human approval"
	}
	return "denied by policy"
}

func defaultReason(e agentotp.Effect) string {
	switch e {
	case agentotp.EffectAutoApprove:
		return "no policy matched; approved by default"
	case agentotp.EffectRequireApproval:
		return "no policy matched; a human must approve"
	}
	return "no policy matched; denied by default"
}

// FilePolicies lists the file rules as read-only policies.
func (s *Set) FilePolicies() []*agentotp.Policy {
	var out []*agentotp.Policy
	for _, r := range s.rules {
		if r.policyID != "" {
			continue
		}
		out = append(out, r.asPolicy())
	}
	return out
}

func (r *rule) asPolicy() *agentotp.Policy {
	conds := map[string]any{}
	if r.spec != nil {
		for _, c := range r.spec.conds {
			ops := map[string]any{}
			for _, o := range c.ops {
				ops[o.op] = o.value
			}
			conds[c.path] = ops
		}
	}
	when := ""
	if r.spec != nil {
		when = r.spec.when
	}
	var agentID agentotp.AgentID
	desc := r.description
	if id := agentotp.AgentID(r.agent); id.Valid() {
		agentID = id
	} else if r.agent != "" {
		desc = strings.TrimSpace(desc + " (agent " + r.agent + ")")
	}
	return &agentotp.Policy{
		AgentID: agentID, Name: r.name, Description: strings.TrimSpace(desc + " (read-only: " + r.source() + ")"),
		Priority: r.priority, Conditions: conds, When: when, Effect: r.effect, ScopeTemplate: r.scopeTemplate,
		Approvers: r.approvers, Quorum: r.quorum, TokenTTL: r.ttl, TokenUses: r.uses, UseWhen: r.useWhen, Active: true,
	}
}
