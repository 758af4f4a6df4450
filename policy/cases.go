package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/agentotp/agentotp"
)

// Case is one policy test case: a request and the decision expected.
type Case struct {
	Name    string      `yaml:"name"`
	Request CaseRequest `yaml:"request"`
	// Now is the evaluation time (RFC 3339); default: the current time.
	Now string `yaml:"now"`
	// Counts feeds the budget functions: action pattern -> the count the
	// store reports for this agent (any window, any statuses).
	Counts map[string]int `yaml:"counts"`
	Expect Expect         `yaml:"expect"`
}

// CaseRequest is the request of a Case.
type CaseRequest struct {
	Action   string         `yaml:"action"`
	Resource string         `yaml:"resource"`
	Scope    map[string]any `yaml:"scope"`
	Context  map[string]any `yaml:"context"`
	Agent    struct {
		ID       string         `yaml:"id"`
		Name     string         `yaml:"name"`
		Metadata map[string]any `yaml:"metadata"`
	} `yaml:"agent"`
	Tool *struct {
		Server      string         `yaml:"server"`
		Name        string         `yaml:"name"`
		Annotations map[string]any `yaml:"annotations"`
		Args        map[string]any `yaml:"args"`
	} `yaml:"tool"`
}

// Expect is what a Case must decide. Rule is checked when present ("" is
// the default decision); Scope when present (the applied scope).
type Expect struct {
	Action string         `yaml:"action"`
	Rule   *string        `yaml:"rule"`
	Scope  map[string]any `yaml:"scope"`
	// Error expects an evaluation error (which fails closed).
	Error bool `yaml:"error"`
}

// CaseFile is a *_test.yaml file: a list of cases, or this mapping.
type CaseFile struct {
	// LoadError, when set, says the policies next to this file must fail
	// to load with an error containing this text.
	LoadError string `yaml:"loadError"`
	// Default is the no-match effect (require_approval unless set).
	Default string `yaml:"default"`
	// Location is the IANA time zone of `local`.
	Location string `yaml:"location"`
	Cases    []Case `yaml:"cases"`
}

// IsCaseFile reports whether name is a test-case file (*_test.yaml).
func IsCaseFile(name string) bool {
	ext := filepath.Ext(name)
	return (ext == ".yaml" || ext == ".yml") && strings.HasSuffix(strings.TrimSuffix(name, ext), "_test")
}

// ParseCaseFile reads a case file strictly (unknown fields are errors).
func ParseCaseFile(path string) (*CaseFile, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cf := &CaseFile{}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%s: no cases", path)
	}
	dec := func(n *yaml.Node, v any) error {
		b, err := yaml.Marshal(n)
		if err != nil {
			return err
		}
		d := yaml.NewDecoder(strings.NewReader(string(b)))
		d.KnownFields(true)
		return d.Decode(v)
	}
	if root.Content[0].Kind == yaml.SequenceNode {
		err = dec(root.Content[0], &cf.Cases)
	} else {
		err = dec(root.Content[0], cf)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(cf.Cases) == 0 && cf.LoadError == "" {
		return nil, fmt.Errorf("%s: no cases", path)
	}
	for i, c := range cf.Cases {
		if c.Name == "" {
			return nil, fmt.Errorf("%s: case %d has no name", path, i+1)
		}
		if _, ok := agentotp.ParseEffect(c.Expect.Action); !ok {
			return nil, fmt.Errorf("%s: case %q: expect.action must be auto_approve, require_approval or deny", path, c.Name)
		}
		if c.Request.Action == "" {
			return nil, fmt.Errorf("%s: case %q: request.action is required", path, c.Name)
		}
		if c.Now != "" {
			if _, err := time.Parse(time.RFC3339, c.Now); err != nil {
				return nil, fmt.Errorf("%s: case %q: now: %v", path, c.Name, err)
			}
		}
	}
	return cf, nil
}

// TestReport counts the outcome of RunTests.
type TestReport struct {
	Passed, Failed int
	// Invalid lists problems with the input itself (unreadable case files,
	// policies that do not load when they should).
	Invalid []string
}

// RunTests runs every *_test.yaml under dir (recursively). Each directory
// holding case files is a suite: its cases run against the policy files of
// that same directory. Results go to w, one line per case.
func RunTests(ctx context.Context, dir string, w io.Writer) TestReport {
	var rep TestReport
	suites := map[string][]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && IsCaseFile(d.Name()) {
			suites[filepath.Dir(p)] = append(suites[filepath.Dir(p)], p)
		}
		return nil
	})
	if err != nil {
		rep.Invalid = append(rep.Invalid, err.Error())
		return rep
	}
	if len(suites) == 0 {
		rep.Invalid = append(rep.Invalid, fmt.Sprintf("%s: no *_test.yaml case files found", dir))
		return rep
	}
	dirs := make([]string, 0, len(suites))
	for d := range suites {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		sort.Strings(suites[d])
		for _, cfPath := range suites[d] {
			runCaseFile(ctx, d, cfPath, w, &rep)
		}
	}
	return rep
}

func runCaseFile(ctx context.Context, dir, cfPath string, w io.Writer, rep *TestReport) {
	cf, err := ParseCaseFile(cfPath)
	if err != nil {
		rep.Invalid = append(rep.Invalid, err.Error())
		fmt.Fprintf(w, "INVALID %v\n", err)
		return
	}
	st := Settings{Default: agentotp.EffectRequireApproval, DefaultSet: true, Location: time.UTC}
	if cf.Default != "" {
		eff, ok := agentotp.ParseEffect(cf.Default)
		if !ok || eff == agentotp.EffectAutoApprove {
			rep.Invalid = append(rep.Invalid, cfPath+": default must be require_approval or deny")
			return
		}
		st.Default = eff
	}
	if cf.Location != "" {
		loc, err := time.LoadLocation(cf.Location)
		if err != nil {
			rep.Invalid = append(rep.Invalid, fmt.Sprintf("%s: location: %v", cfPath, err))
			return
		}
		st.Location = loc
	}
	files, err := ReadFiles(dir)
	var set *Set
	if err == nil {
		set, err = Compile(st, files, nil)
	}
	if cf.LoadError != "" {
		switch {
		case err == nil:
			rep.Failed++
			fmt.Fprintf(w, "FAIL %s: expected the policies to fail to load with %q, but they loaded\n", cfPath, cf.LoadError)
		case !strings.Contains(err.Error(), cf.LoadError):
			rep.Failed++
			fmt.Fprintf(w, "FAIL %s: expected a load error containing %q, got:\n%v\n", cfPath, cf.LoadError, err)
		default:
			rep.Passed++
			fmt.Fprintf(w, "ok   %s: policies rejected as expected (%s)\n", cfPath, cf.LoadError)
		}
		if err != nil {
			return
		}
	}
	if err != nil {
		rep.Invalid = append(rep.Invalid, fmt.Sprintf("%s: policies do not load:\n%v", dir, err))
		fmt.Fprintf(w, "INVALID %s: policies do not load:\n%v\n", dir, err)
		return
	}
	for _, c := range cf.Cases {
		if msg := runCase(ctx, set, c); msg != "" {
			rep.Failed++
			fmt.Fprintf(w, "FAIL %s: %q: %s\n", cfPath, c.Name, msg)
		} else {
			rep.Passed++
			fmt.Fprintf(w, "ok   %s: %q\n", cfPath, c.Name)
		}
	}
}

type mapCounter map[string]int

func (m mapCounter) CountPermissions(_ context.Context, _ agentotp.AgentID, pattern string, _ time.Time, _ []agentotp.Status) (int, error) {
	return m[pattern], nil
}

// asJSON returns m as encoding/json would decode it (nil stays nil).
func asJSON(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	data, err := json.Marshal(m)
	if err != nil {
		return m
	}
	var out map[string]any
	if json.Unmarshal(data, &out) != nil {
		return m
	}
	return out
}

// runCase evaluates one case; "" means it passed.
func runCase(ctx context.Context, set *Set, c Case) string {
	// The server sees requests decoded from JSON, where every number is a
	// float64 (a CEL double); YAML would give ints. Decode the case the same
	// way so that a case decides exactly as the server would.
	in := agentotp.EvalInput{
		Action: c.Request.Action, Resource: c.Request.Resource, Scope: asJSON(c.Request.Scope), Context: asJSON(c.Request.Context), Now: time.Now(),
		Agent: &agentotp.Agent{ID: agentotp.AgentID(c.Request.Agent.ID), Name: c.Request.Agent.Name, Metadata: asJSON(c.Request.Agent.Metadata)},
	}
	if in.Scope == nil {
		in.Scope = map[string]any{}
	}
	if in.Context == nil {
		in.Context = map[string]any{}
	}
	if c.Now != "" {
		in.Now, _ = time.Parse(time.RFC3339, c.Now)
	}
	if t := c.Request.Tool; t != nil {
		in.Tool = &agentotp.ToolCall{Server: t.Server, Name: t.Name, Annotations: asJSON(t.Annotations), Args: asJSON(t.Args)}
	}
	s := *set
	if c.Counts != nil {
		s.settings.Counter = mapCounter(c.Counts)
	}
	d, err := s.Evaluate(ctx, in)
	var problems []string
	if (err != nil) != c.Expect.Error {
		if err != nil {
			problems = append(problems, fmt.Sprintf("unexpected evaluation error: %v", err))
		} else {
			problems = append(problems, "expected an evaluation error, got none")
		}
	}
	got := fmt.Sprintf("action=%s rule=%q", d.Effect, d.Rule)
	if d.Effect.String() != c.Expect.Action {
		problems = append(problems, fmt.Sprintf("action: expected %s", c.Expect.Action))
	}
	if c.Expect.Rule != nil && *c.Expect.Rule != d.Rule {
		problems = append(problems, fmt.Sprintf("rule: expected %q", *c.Expect.Rule))
	}
	if c.Expect.Scope != nil {
		applied := d.Scope
		if applied == nil {
			applied = in.Scope
		}
		if !sameJSON(applied, c.Expect.Scope) {
			a, _ := json.Marshal(applied)
			e, _ := json.Marshal(c.Expect.Scope)
			problems = append(problems, fmt.Sprintf("scope: expected %s, got %s", e, a))
		}
	}
	if len(problems) == 0 {
		return ""
	}
	return strings.Join(problems, "; ") + "; got " + got
}

func sameJSON(a, b any) bool {
	norm := func(v any) any {
		data, err := json.Marshal(v)
		if err != nil {
			return errors.New("unencodable")
		}
		var out any
		_ = json.Unmarshal(data, &out)
		return out
	}
	return reflect.DeepEqual(norm(a), norm(b))
}
