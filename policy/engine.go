// Package policy decides permission requests: rules from YAML files and
// API-managed policies, written with the v0.1.1 condition operators or CEL,
// compiled once, indexed by action and evaluated first match wins.
//
// See README.md in this directory for the policy format.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"

	"github.com/agentotp/agentotp"
)

var (
	_ agentotp.Evaluator        = (*Engine)(nil)
	_ agentotp.UseChecker       = (*Engine)(nil)
	_ agentotp.PolicyValidator  = (*Engine)(nil)
	_ agentotp.PolicyReloader   = (*Engine)(nil)
	_ agentotp.FilePolicySource = (*Engine)(nil)
	_ agentotp.Evaluator        = (*Set)(nil)
	_ Source                    = (agentotp.Store)(nil)
	_ Counter                   = (agentotp.Store)(nil)
)

// Source lists API-managed policies; the store satisfies it.
type Source interface {
	Policies(ctx context.Context, f agentotp.PolicyFilter) ([]*agentotp.Policy, int, error)
}

// Options configure an Engine.
type Options struct {
	// Paths are policy files or directories of *.yaml / *.yml files.
	Paths []string
	// Source supplies API-managed policies (nil: none).
	Source Source
	// Counter serves the budget functions (nil: calling one is an
	// evaluation error, so the request fails closed).
	Counter Counter
	// Default is the effect when no rule matches. Its zero value (deny)
	// is read as "unset" and means require_approval; set DefaultDeny to
	// deny instead. auto_approve is refused.
	Default     agentotp.Effect
	DefaultDeny bool
	// Location is the time zone of `local` (default UTC).
	Location *time.Location
	// Clock is used for `now` in CheckUse when the caller passes a zero time.
	Clock func() time.Time
	// Logger receives reload results (default: discard).
	Logger *slog.Logger
	// OnReload is called after every reload attempt that changed the set
	// or failed: version is the active set's (the new one on success, the
	// kept one on failure).
	OnReload func(ctx context.Context, version string, err error)
	// Watch reloads when the policy files change (debounced).
	Watch bool
	// Debounce is the quiet time before a watched change reloads (default
	// 200ms).
	Debounce time.Duration
}

// Engine is the policy evaluator of the service. Reloads swap the
// compiled set atomically; evaluations never wait for them.
type Engine struct {
	opts     Options
	settings Settings
	active   atomic.Pointer[Set]
	reloadMu sync.Mutex
	useCache sync.Map // useWhen source -> cel.Program
	useCount atomic.Int64
	watcher  *fsnotify.Watcher
	stop     chan struct{}
	done     chan struct{}
	closeMu  sync.Once
}

// New loads and compiles the initial set; any error is fatal here (there
// is no last good set to keep yet).
func New(ctx context.Context, opts Options) (*Engine, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Location == nil {
		opts.Location = time.UTC
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 200 * time.Millisecond
	}
	if opts.Default == agentotp.EffectAutoApprove {
		// An unknown action is never auto-approved.
		return nil, errors.New("policy: the default effect must be require_approval or deny")
	}
	e := &Engine{opts: opts}
	e.settings = Settings{Default: agentotp.EffectRequireApproval, DefaultSet: true, Location: opts.Location, Counter: opts.Counter}
	if opts.DefaultDeny {
		e.settings.Default = agentotp.EffectDeny
	}
	set, err := e.build(ctx)
	if err != nil {
		return nil, err
	}
	e.active.Store(set)
	if opts.Watch && len(opts.Paths) > 0 {
		if err := e.startWatch(); err != nil {
			return nil, fmt.Errorf("watch policies: %w", err)
		}
	}
	return e, nil
}

func (e *Engine) build(ctx context.Context) (*Set, error) {
	var files []File
	if len(e.opts.Paths) > 0 {
		var err error
		files, err = ReadFiles(e.opts.Paths...)
		if err != nil {
			return nil, err
		}
	}
	var pols []*agentotp.Policy
	if e.opts.Source != nil {
		for page := 1; ; page++ {
			ps, total, err := e.opts.Source.Policies(ctx, agentotp.PolicyFilter{ActiveOnly: true, Page: agentotp.Page{Page: page, Limit: 100}})
			if err != nil {
				return nil, fmt.Errorf("list API policies: %w", err)
			}
			pols = append(pols, ps...)
			if len(ps) == 0 || len(pols) >= total {
				break
			}
		}
	}
	return Compile(e.settings, files, pols)
}

// Set returns the active compiled set.
func (e *Engine) Set() *Set { return e.active.Load() }

// Version returns the active set's version.
func (e *Engine) Version() string { return e.active.Load().version }

// Evaluate implements agentotp.Evaluator.
func (e *Engine) Evaluate(ctx context.Context, in agentotp.EvalInput) (agentotp.Decision, error) {
	return e.active.Load().Evaluate(ctx, in)
}

// Reload recompiles files and API policies. An invalid new set is
// rejected, logged and reported through OnReload; the last good set stays
// active.
func (e *Engine) Reload(ctx context.Context) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	old := e.active.Load()
	set, err := e.build(ctx)
	if err != nil {
		e.opts.Logger.Error("policy reload rejected; keeping the last good set", "version", old.version, "err", err)
		if e.opts.OnReload != nil {
			e.opts.OnReload(ctx, old.version, err)
		}
		return err
	}
	if set.version == old.version {
		return nil
	}
	e.active.Store(set)
	e.opts.Logger.Info("policies reloaded", "version", set.version, "previous", old.version, "rules", set.Len())
	if e.opts.OnReload != nil {
		e.opts.OnReload(ctx, set.version, nil)
	}
	return nil
}

// ValidatePolicy implements agentotp.PolicyValidator: the policy must
// compile on its own with the same checks as a file rule.
func (e *Engine) ValidatePolicy(p *agentotp.Policy) error {
	cp := *p
	if cp.ID == "" {
		cp.ID = "pol_new"
	}
	cp.Active = true
	spec, errs := specFromPolicy(&cp)
	if len(errs) == 0 {
		_, errs = compileRule(spec)
	}
	if len(errs) == 0 {
		return nil
	}
	msg := errs[0].Msg
	details := map[string]string{}
	for _, x := range errs {
		details["policy"] = x.Msg
	}
	if len(errs) > 1 {
		msg = fmt.Sprintf("%s (and %d more problems)", msg, len(errs)-1)
	}
	return &agentotp.Error{Code: agentotp.CodeValidation, Message: "policy does not compile: " + msg, Details: details}
}

// FilePolicies implements agentotp.FilePolicySource.
func (e *Engine) FilePolicies() []*agentotp.Policy { return e.active.Load().FilePolicies() }

// maxUseCache bounds the useWhen programs cached beyond the active set's.
const maxUseCache = 1024

// CheckUse implements agentotp.UseChecker: the permission's useWhen is
// evaluated with request (rebuilt from the permission, with agent as its
// agent), scope (the granted scope), details and now. False or an error
// rejects the use.
func (e *Engine) CheckUse(ctx context.Context, agent *agentotp.Agent, p *agentotp.Permission, details map[string]any, now time.Time) error {
	expr := p.Decision.UseWhen
	if expr == "" {
		return nil
	}
	if now.IsZero() {
		now = e.opts.Clock()
	}
	prg, err := e.useProgram(expr)
	if err != nil {
		return &agentotp.Error{Code: agentotp.CodeValidation, Message: "use refused: the grant's use condition does not compile", Err: err}
	}
	if agent == nil || agent.ID != p.AgentID {
		// request.agent must be the permission's: without the agent at
		// hand, its id alone (name and metadata empty).
		agent = &agentotp.Agent{ID: p.AgentID}
	}
	in := agentotp.EvalInput{Agent: agent, Action: p.Action, Resource: p.Resource, Scope: p.Scope, Context: p.Context, Now: now}
	act := &useActivation{activation: activation{in: &in, set: e.active.Load(), ctx: ctx}, scope: jsonVal(p.GrantedScope), details: jsonVal(details)}
	v, _, err := prg.Eval(act)
	if err != nil {
		return &agentotp.Error{Code: agentotp.CodeValidation, Message: "use refused: the grant's use condition could not be evaluated", Err: err}
	}
	if v != types.True {
		return &agentotp.Error{Code: agentotp.CodeValidation, Message: "the use is outside the granted conditions (useWhen)",
			Details: map[string]string{"actionDetails": "outside the granted conditions"}}
	}
	return nil
}

func (e *Engine) useProgram(expr string) (cel.Program, error) {
	if p, ok := e.active.Load().useProgs[expr]; ok {
		return p, nil
	}
	if p, ok := e.useCache.Load(expr); ok {
		return p.(cel.Program), nil
	}
	_, useEnv, err := envs()
	if err != nil {
		return nil, err
	}
	a, iss := compileExpr(useEnv, expr)
	if len(iss) > 0 {
		return nil, errors.New(iss[0].msg)
	}
	prg, err := program(useEnv, a)
	if err != nil {
		return nil, err
	}
	if e.useCount.Add(1) <= maxUseCache {
		e.useCache.Store(expr, prg)
	}
	return prg, nil
}

type useActivation struct {
	activation
	scope, details any
}

func (a *useActivation) ResolveName(name string) (any, bool) {
	switch name {
	case "scope":
		return a.scope, true
	case "details":
		return a.details, true
	}
	return a.activation.ResolveName(name)
}

// Close stops watching files.
func (e *Engine) Close() error {
	var err error
	e.closeMu.Do(func() {
		if e.watcher != nil {
			close(e.stop)
			err = e.watcher.Close()
			<-e.done
		}
	})
	return err
}

func (e *Engine) startWatch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	// Watch directories (a file's parent too: editors replace files by
	// renaming, which drops a watch on the file itself).
	dirs := map[string]bool{}
	for _, p := range e.opts.Paths {
		st, err := os.Stat(p)
		if err != nil {
			w.Close()
			return err
		}
		d := p
		if !st.IsDir() {
			d = filepath.Dir(p)
		}
		if !dirs[d] {
			dirs[d] = true
			if err := w.Add(d); err != nil {
				w.Close()
				return err
			}
		}
	}
	e.watcher, e.stop, e.done = w, make(chan struct{}), make(chan struct{})
	go e.watchLoop()
	return nil
}

func (e *Engine) relevant(name string) bool {
	// A Kubernetes ConfigMap or Secret volume updates by swapping its
	// ..data symlink, which the visible files point through, so no event
	// names them. Only the watched directories report events, so any
	// ..name is one of theirs.
	if strings.HasPrefix(filepath.Base(name), "..") {
		return true
	}
	for _, p := range e.opts.Paths {
		if filepath.Clean(p) == filepath.Clean(name) {
			return true
		}
		if filepath.Dir(name) == filepath.Clean(p) && IsPolicyFile(filepath.Base(name)) {
			return true
		}
	}
	return false
}

func (e *Engine) watchLoop() {
	defer close(e.done)
	var timer *time.Timer
	fire := make(chan struct{}, 1)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-e.stop:
			return
		case ev, ok := <-e.watcher.Events:
			if !ok {
				return
			}
			if !e.relevant(ev.Name) {
				continue
			}
			if timer == nil {
				timer = time.AfterFunc(e.opts.Debounce, func() {
					select {
					case fire <- struct{}{}:
					default:
					}
				})
			} else {
				timer.Reset(e.opts.Debounce)
			}
		case err, ok := <-e.watcher.Errors:
			if !ok {
				return
			}
			e.opts.Logger.Error("policy watcher", "err", err)
		case <-fire:
			_ = e.Reload(context.Background())
		}
	}
}
