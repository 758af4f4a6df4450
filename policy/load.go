package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/agentotp/agentotp"
)

// Error is one problem found while loading policies. It names the file,
// the rule and the position (1-based line and column) when known.
type Error struct {
	File   string
	Line   int
	Column int
	Rule   string
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
		}
		b.WriteString(": ")
	}
	if e.Rule != "" {
		fmt.Fprintf(&b, "rule %q: ", e.Rule)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in one load; a set with any error is
// rejected whole.
type ErrorList []*Error

func (l ErrorList) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// File is one policy file's contents.
type File struct {
	Path string
	Data []byte
}

// MaxFileSize bounds one policy file.
const MaxFileSize = 4 << 20

// IsPolicyFile reports whether name is read as a policy file in a
// directory: *.yaml or *.yml, but not test-case files (*_test.yaml).
func IsPolicyFile(name string) bool {
	ext := filepath.Ext(name)
	if ext != ".yaml" && ext != ".yml" {
		return false
	}
	return !strings.HasSuffix(strings.TrimSuffix(name, ext), "_test") && !strings.HasPrefix(filepath.Base(name), ".")
}

// ReadFiles reads paths: files as given, directories as their *.yaml and
// *.yml files (not recursive, test-case files and dotfiles skipped), in
// name order.
func ReadFiles(paths ...string) ([]File, error) {
	var out []File
	var errs ErrorList
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			errs = append(errs, &Error{File: p, Msg: err.Error()})
			continue
		}
		names := []string{p}
		if st.IsDir() {
			ents, err := os.ReadDir(p)
			if err != nil {
				errs = append(errs, &Error{File: p, Msg: err.Error()})
				continue
			}
			names = names[:0]
			for _, e := range ents {
				if !e.IsDir() && IsPolicyFile(e.Name()) {
					names = append(names, filepath.Join(p, e.Name()))
				}
			}
			sort.Strings(names)
		}
		for _, n := range names {
			data, err := readLimited(n)
			if err != nil {
				errs = append(errs, &Error{File: n, Msg: err.Error()})
				continue
			}
			out = append(out, File{Path: n, Data: data})
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}

func readLimited(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("file is larger than %d bytes", MaxFileSize)
	}
	return data, nil
}

// position locates a value in a file; for expressions it also says how
// CEL's positions inside the text map to the file.
type position struct {
	line, col int
	style     yaml.Style
	indent    int // block scalars: the indentation of the content
}

// ruleSpec is a rule as written, before compilation: from a YAML file or
// from an API-managed agentotp.Policy.
type ruleSpec struct {
	file     string
	pos      position
	policyID agentotp.PolicyID

	name, description string
	priority          int
	agent             string
	effect            agentotp.Effect
	hasEffect         bool
	conds             []condSpec
	when              string
	whenPos           position
	scopeTemplate     map[string]any
	approvers         []string
	quorum            int
	ttl               time.Duration
	uses              int
	useWhen           string
	useWhenPos        position
	fieldPos          map[string]position
}

type condSpec struct {
	path string
	pos  position
	ops  []opSpec
}

type opSpec struct {
	op    string // canonical camelCase
	value any
	pos   position
}

// operators maps every accepted spelling to the canonical one.
var operators = map[string]string{
	"equals": "equals", "notEquals": "notEquals", "not_equals": "notEquals",
	"lessThan": "lessThan", "less_than": "lessThan",
	"greaterThan": "greaterThan", "greater_than": "greaterThan",
	"lessThanOrEqual": "lessThanOrEqual", "less_than_or_equal": "lessThanOrEqual",
	"greaterThanOrEqual": "greaterThanOrEqual", "greater_than_or_equal": "greaterThanOrEqual",
	"startsWith": "startsWith", "starts_with": "startsWith",
	"endsWith": "endsWith", "ends_with": "endsWith",
	"contains": "contains", "matches": "matches",
	"in": "in", "notIn": "notIn", "not_in": "notIn",
	"exists": "exists",
}

// ruleFields maps every accepted field spelling to the canonical one.
var ruleFields = map[string]string{
	"name": "name", "description": "description", "priority": "priority",
	"agent": "agent", "agent_id": "agent", "agentId": "agent",
	"conditions": "conditions", "when": "when", "action": "action",
	"scopeTemplate": "scopeTemplate", "scope_template": "scopeTemplate",
	"approvers": "approvers", "quorum": "quorum", "token": "token",
	"useWhen": "useWhen", "use_when": "useWhen",
}

type fileParser struct {
	file  string
	lines []string
	errs  ErrorList
}

func (p *fileParser) errAt(n *yaml.Node, rule, format string, args ...any) {
	e := &Error{File: p.file, Rule: rule, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	p.errs = append(p.errs, e)
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseFile reads one YAML policy file into rule specs.
func parseFile(f File) ([]*ruleSpec, ErrorList) {
	p := &fileParser{file: f.Path, lines: strings.Split(string(f.Data), "\n")}
	if !utf8.Valid(f.Data) {
		return nil, ErrorList{{File: f.Path, Msg: "file is not valid UTF-8"}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(f.Data))
	var specs []*ruleSpec
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			e := &Error{File: f.Path, Msg: err.Error()}
			if m := yamlLineRe.FindStringSubmatch(err.Error()); m != nil {
				e.Line, _ = strconv.Atoi(m[1])
				e.Column = 1
				e.Msg = "invalid YAML: " + m[2]
			}
			return nil, ErrorList{e}
		}
		if len(doc.Content) == 0 {
			continue
		}
		specs = append(specs, p.parseDocument(doc.Content[0])...)
	}
	// The rules that parsed are compiled too, so one run reports every
	// problem, not only the first file's.
	return specs, p.errs
}

func (p *fileParser) parseDocument(root *yaml.Node) []*ruleSpec {
	switch root.Kind {
	case yaml.SequenceNode:
		return p.parseRules(root)
	case yaml.MappingNode:
		if findKey(root, "policies") != nil {
			var out []*ruleSpec
			for i := 0; i+1 < len(root.Content); i += 2 {
				k, v := root.Content[i], root.Content[i+1]
				if k.Value != "policies" {
					p.errAt(k, "", "unknown top-level field %q (expected only \"policies\")", k.Value)
					continue
				}
				if v.Kind != yaml.SequenceNode {
					p.errAt(v, "", "policies must be a list of rules")
					continue
				}
				out = append(out, p.parseRules(v)...)
			}
			return out
		}
		// A single rule, as in the v0.1.1 documentation snippets.
		if s := p.parseRule(root); s != nil {
			return []*ruleSpec{s}
		}
		return nil
	case yaml.ScalarNode:
		if root.ShortTag() == "!!null" {
			return nil
		}
	}
	p.errAt(root, "", "a policy file must hold a list of rules or {policies: [...]}")
	return nil
}

func (p *fileParser) parseRules(seq *yaml.Node) []*ruleSpec {
	var out []*ruleSpec
	for _, n := range seq.Content {
		if s := p.parseRule(n); s != nil {
			out = append(out, s)
		}
	}
	return out
}

func findKey(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func (p *fileParser) pos(n *yaml.Node) position {
	ps := position{line: n.Line, col: n.Column, style: n.Style}
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 && n.Line < len(p.lines) {
		l := p.lines[n.Line] // the first content line (0-based index = next line)
		ps.indent = len(l) - len(strings.TrimLeft(l, " "))
	}
	return ps
}

func (p *fileParser) parseRule(n *yaml.Node) *ruleSpec {
	if n.Kind != yaml.MappingNode {
		p.errAt(n, "", "a rule must be a mapping with name, conditions, action, ...")
		return nil
	}
	nerr := len(p.errs)
	s := &ruleSpec{file: p.file, pos: position{line: n.Line, col: n.Column}, fieldPos: map[string]position{}}
	if nn := findKey(n, "name"); nn != nil && nn.Kind == yaml.ScalarNode {
		s.name = nn.Value
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		canon, ok := ruleFields[k.Value]
		if !ok {
			p.errAt(k, s.name, "unknown field %q", k.Value)
			continue
		}
		if prev, dup := seen[canon]; dup {
			p.errAt(k, s.name, "field %q repeats %q (line %d)", k.Value, prev.Value, prev.Line)
			continue
		}
		seen[canon] = k
		s.fieldPos[canon] = p.pos(v)
		switch canon {
		case "name":
			s.name = p.str(v, s.name, "name")
		case "description":
			s.description = p.str(v, s.name, "description")
		case "priority":
			s.priority = p.integer(v, s.name, "priority")
		case "agent":
			s.agent = p.str(v, s.name, k.Value)
		case "conditions":
			s.conds = p.conditions(v, s.name)
		case "when":
			s.when = p.str(v, s.name, "when")
			s.whenPos = p.pos(v)
		case "useWhen":
			s.useWhen = p.str(v, s.name, k.Value)
			s.useWhenPos = p.pos(v)
		case "action":
			a := p.str(v, s.name, "action")
			e, ok := agentotp.ParseEffect(a)
			if !ok {
				p.errAt(v, s.name, "action must be auto_approve, require_approval or deny, not %q", a)
			}
			s.effect, s.hasEffect = e, ok
		case "scopeTemplate":
			val, err := nodeValue(v)
			if err != nil {
				p.errAt(v, s.name, "%s: %v", k.Value, err)
				break
			}
			m, ok := val.(map[string]any)
			if !ok && val != nil {
				p.errAt(v, s.name, "%s must be a mapping", k.Value)
			}
			s.scopeTemplate = m
		case "approvers":
			if v.Kind != yaml.SequenceNode {
				p.errAt(v, s.name, "approvers must be a list of user names or roles")
				break
			}
			for _, a := range v.Content {
				if x := p.str(a, s.name, "approvers"); x != "" {
					s.approvers = append(s.approvers, x)
				}
			}
		case "quorum":
			s.quorum = p.integer(v, s.name, "quorum")
			if s.quorum < 1 || s.quorum > 10 {
				p.errAt(v, s.name, "quorum must be between 1 and 10")
			}
		case "token":
			p.token(v, s)
		}
	}
	if findKey(n, "name") == nil {
		p.errAt(n, "", "rule has no name")
	}
	if _, ok := seen["action"]; !ok {
		p.errAt(n, s.name, "rule has no action (auto_approve, require_approval or deny)")
	}
	if len(p.errs) > nerr {
		return nil
	}
	return s
}

func (p *fileParser) str(n *yaml.Node, rule, field string) string {
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		p.errAt(n, rule, "%s must be a string", field)
		return ""
	}
	return n.Value
}

func (p *fileParser) integer(n *yaml.Node, rule, field string) int {
	var i int
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
		p.errAt(n, rule, "%s must be an integer", field)
		return 0
	}
	return i
}

func (p *fileParser) token(n *yaml.Node, s *ruleSpec) {
	if n.Kind != yaml.MappingNode {
		p.errAt(n, s.name, "token must be a mapping {ttl, uses}")
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "ttl":
			d, err := parseTTL(v)
			if err != nil {
				p.errAt(v, s.name, "token.ttl: %v", err)
			}
			s.ttl = d
			s.fieldPos["token.ttl"] = p.pos(v)
		case "uses":
			s.uses = p.integer(v, s.name, "token.uses")
			if s.uses < 1 || s.uses > agentotp.MaxUses {
				p.errAt(v, s.name, "token.uses must be between 1 and %d", agentotp.MaxUses)
			}
		default:
			p.errAt(k, s.name, "unknown field token.%s (expected ttl, uses)", k.Value)
		}
	}
}

func parseTTL(v *yaml.Node) (time.Duration, error) {
	var d time.Duration
	switch {
	case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!int":
		var secs int64
		if err := v.Decode(&secs); err != nil || secs > int64(agentotp.MaxTokenTTL/time.Second) {
			return 0, fmt.Errorf("must be between %d and %d seconds", int(agentotp.MinTokenTTL/time.Second), int(agentotp.MaxTokenTTL/time.Second))
		}
		d = time.Duration(secs) * time.Second
	case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!str":
		var err error
		d, err = time.ParseDuration(v.Value)
		if err != nil {
			return 0, fmt.Errorf("must be seconds or a duration such as \"10m\": %v", err)
		}
	default:
		return 0, errors.New("must be seconds or a duration such as \"10m\"")
	}
	if d < agentotp.MinTokenTTL || d > agentotp.MaxTokenTTL {
		return 0, fmt.Errorf("must be between %s and %s", agentotp.MinTokenTTL, agentotp.MaxTokenTTL)
	}
	return d, nil
}

func (p *fileParser) conditions(n *yaml.Node, rule string) []condSpec {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.errAt(n, rule, "conditions must be a mapping of field path to operators")
		return nil
	}
	var out []condSpec
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		if seen[k.Value] {
			p.errAt(k, rule, "condition path %q appears twice", k.Value)
			continue
		}
		seen[k.Value] = true
		c := condSpec{path: k.Value, pos: p.pos(k)}
		if v.Kind != yaml.MappingNode {
			p.errAt(v, rule, "condition %q must be a mapping of operators, e.g. {equals: \"x\"}", k.Value)
			continue
		}
		seenOp := map[string]bool{}
		for j := 0; j+1 < len(v.Content); j += 2 {
			ok, ov := v.Content[j], v.Content[j+1]
			canon, known := operators[ok.Value]
			if !known {
				p.errAt(ok, rule, "condition %q: unknown operator %q", k.Value, ok.Value)
				continue
			}
			if seenOp[canon] {
				p.errAt(ok, rule, "condition %q: operator %q given twice", k.Value, canon)
				continue
			}
			seenOp[canon] = true
			val, err := nodeValue(ov)
			if err != nil {
				p.errAt(ov, rule, "condition %q %s: %v", k.Value, ok.Value, err)
				continue
			}
			c.ops = append(c.ops, opSpec{op: canon, value: val, pos: p.pos(ov)})
		}
		if len(c.ops) == 0 && len(v.Content) == 0 {
			p.errAt(v, rule, "condition %q has no operator (it would match everything)", k.Value)
			continue
		}
		out = append(out, c)
	}
	return out
}

// nodeValue converts a YAML node to the JSON-like values CEL and the
// scope merge use: string, int64, float64, bool, nil, []any, map[string]any.
func nodeValue(n *yaml.Node) (any, error) {
	budget := maxValueNodes
	return nodeValueDepth(n, 0, &budget)
}

// maxValueNodes bounds the nodes of one value, aliases expanded, so that
// an alias bomb ("billion laughs") is an error, not a hang.
const maxValueNodes = 10000

func nodeValueDepth(n *yaml.Node, depth int, budget *int) (any, error) {
	if depth > agentotp.MaxObjectDepth {
		return nil, errors.New("value is nested too deeply")
	}
	if *budget--; *budget < 0 {
		return nil, errors.New("value is too large (aliases expand to too many nodes)")
	}
	switch n.Kind {
	case yaml.AliasNode:
		return nodeValueDepth(n.Alias, depth+1, budget)
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := nodeValueDepth(c, depth+1, budget)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.MappingNode:
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
				return nil, fmt.Errorf("line %d: keys must be plain strings", k.Line)
			}
			if _, dup := out[k.Value]; dup {
				return nil, fmt.Errorf("line %d: key %q repeats", k.Line, k.Value)
			}
			v, err := nodeValueDepth(n.Content[i+1], depth+1, budget)
			if err != nil {
				return nil, err
			}
			out[k.Value] = v
		}
		return out, nil
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil, nil
		case "!!bool":
			var b bool
			err := n.Decode(&b)
			return b, err
		case "!!int":
			var i int64
			if err := n.Decode(&i); err != nil {
				return nil, fmt.Errorf("integer %s is out of range", n.Value)
			}
			return i, nil
		case "!!float":
			var f float64
			if err := n.Decode(&f); err != nil {
				return nil, err
			}
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, fmt.Errorf("%s is not a finite number", n.Value)
			}
			return f, nil
		case "!!str", "!!timestamp":
			return n.Value, nil
		case "!!binary":
			return nil, errors.New("binary values are not supported")
		}
		return n.Value, nil
	}
	return nil, fmt.Errorf("unsupported YAML node")
}
