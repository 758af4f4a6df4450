//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// The fault, memory and soak tests run `agentotp serve` as a separate
// process, built once per test binary without -race: they kill it, limit
// its files and read its memory, which must be the production build's.
var plainBuild struct {
	once      sync.Once
	dir, path string
	err       error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if plainBuild.dir != "" {
		os.RemoveAll(plainBuild.dir)
	}
	os.Exit(code)
}

func plainAgentotp(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		missingTool(t, "go is not on PATH: cannot build the agentotp binary")
	}
	plainBuild.once.Do(func() {
		plainBuild.dir, plainBuild.err = os.MkdirTemp("", "agentotp-bin-")
		if plainBuild.err != nil {
			return
		}
		plainBuild.path = filepath.Join(plainBuild.dir, "agentotp")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, goBin, "build", "-o", plainBuild.path, ".").CombinedOutput()
		if err != nil {
			plainBuild.err = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	require.NoError(t, plainBuild.err)
	return plainBuild.path
}

// serveProc is one `agentotp serve` process.
type serveProc struct {
	cmd    *exec.Cmd
	url    string
	admin  string // printed on a data directory's first start only
	stderr *syncBuffer
	done   chan struct{} // closed once the process has exited
	err    error         // cmd.Wait's result, set before done closes
}

// startServe runs bin serve on a free port with the rate limit off and
// waits until it listens. The test's end stops it if it still runs.
func startServe(t *testing.T, bin string, args ...string) *serveProc {
	t.Helper()
	return startServeEnv(t, bin, nil, args...)
}

// startServeEnv is startServe with AGENTOTP_ variables (KEY=VALUE) for the
// child.
func startServeEnv(t *testing.T, bin string, vars []string, args ...string) *serveProc {
	t.Helper()
	p := &serveProc{stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--rate-limit", "-1"}, args...)...)
	p.cmd.Env = childEnv(vars...)
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	lines := make(chan string, 8)
	go func() {
		// Keep reading to the end: a full pipe would block the server.
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t, false) })
	deadline := time.After(30 * time.Second)
	for p.url == "" {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "serve exited before listening: %s", p.stderr)
			if m := regexp.MustCompile(`listening on (http://\S+)`).FindStringSubmatch(l); m != nil {
				p.url = m[1]
			}
		case <-deadline:
			t.Fatalf("serve did not start: %s", p.stderr)
		}
	}
	// The admin key line follows the listening line on a first start.
	select {
	case l := <-lines:
		if m := regexp.MustCompile(`admin key \(shown once.*\): (uk_\S+)`).FindStringSubmatch(l); m != nil {
			p.admin = m[1]
		}
	case <-time.After(200 * time.Millisecond):
	}
	return p
}

func (p *serveProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill9 ends the server the way a power cut or an OOM kill would.
func (p *serveProc) kill9(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done
}

// stop shuts the server down with SIGINT; when check is set it must exit
// cleanly within 15 s.
func (p *serveProc) stop(t *testing.T, check bool) {
	t.Helper()
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
		if check {
			require.NoError(t, p.err, "serve exit; stderr: %s", p.stderr)
		}
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		if check {
			t.Fatalf("serve did not shut down: %s", p.stderr)
		}
	}
}

// status reads one field (in kB) of /proc/<pid>/status, e.g. VmRSS.
func (p *serveProc) status(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB`).FindSubmatch(b)
	require.NotNil(t, m, "no %s in /proc status", field)
	n, err := strconv.ParseInt(string(m[1]), 10, 64)
	require.NoError(t, err)
	return n
}

// metric reads one unlabelled sample from the server's /metrics, which
// answers loopback callers without a key.
func (p *serveProc) metric(t *testing.T, name string) float64 {
	t.Helper()
	res, err := http.Get(p.url + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	require.NotNil(t, m, "no %s in /metrics", name)
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

// setFileSizeLimit sets the soft RLIMIT_FSIZE of the server process
// (prlimit(2) works on a process of the same user without privileges):
// its writes past limit bytes of any file fail with EFBIG, which SQLite
// reports as a write error, as it does for a read-only or full file
// system. The signal the kernel also sends (SIGXFSZ) is ignored by Go
// programs that do not ask for it.
func (p *serveProc) setFileSizeLimit(t *testing.T, limit uint64) {
	t.Helper()
	type rlimit struct{ cur, max uint64 }
	var old rlimit
	_, _, e := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(p.cmd.Process.Pid), syscall.RLIMIT_FSIZE,
		0, uintptr(unsafe.Pointer(&old)), 0, 0)
	require.Zero(t, e, "prlimit: %v", e)
	lim := rlimit{cur: min(limit, old.max), max: old.max}
	_, _, e = syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(p.cmd.Process.Pid), syscall.RLIMIT_FSIZE,
		uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
	require.Zero(t, e, "prlimit: %v", e)
}

// noLimit is RLIM_INFINITY.
const noLimit = ^uint64(0)

// apiClient calls the API without failing the test on transport errors,
// for load that outlives a killed server.
type apiClient struct{ http *http.Client }

func newAPIClient() *apiClient {
	return &apiClient{http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute,
	}}}
}

// do sends body as JSON and decodes the envelope; err is a transport or
// decoding error only.
func (c *apiClient) do(ctx context.Context, method, url, key string, body any) (int, apiResp, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, apiResp{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, apiResp{}, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.http.Do(req)
	if err != nil {
		return 0, apiResp{}, err
	}
	defer res.Body.Close()
	var r apiResp
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		return res.StatusCode, r, fmt.Errorf("%s %s: HTTP %d, body: %w", method, url, res.StatusCode, err)
	}
	return res.StatusCode, r, nil
}

// must is do for calls that have to succeed with status want; it decodes
// data into out when out is not nil.
func (c *apiClient) must(t *testing.T, method, url, key string, body any, want int, out any) {
	t.Helper()
	status, r, err := c.do(context.Background(), method, url, key, body)
	require.NoError(t, err)
	require.Equal(t, want, status, "%s %s: %+v", method, url, r.Error)
	if out != nil {
		require.NoError(t, json.Unmarshal(r.Data, out))
	}
}

// wirePerm is the part of a permission the process tests read.
type wirePerm struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Token  string `json:"token"`
	Use    *struct {
		Success       bool `json:"success"`
		UsesRemaining int  `json:"usesRemaining"`
	} `json:"use"`
}

// createAgents makes n agents through the admin API and returns their keys.
func createAgents(t *testing.T, c *apiClient, url, admin, prefix string, n int) []string {
	t.Helper()
	keys := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			status, r, err := c.do(context.Background(), "POST", url+"/api/v1/agents", admin, map[string]any{"name": fmt.Sprintf("%s-%d", prefix, i)})
			if err == nil && status != http.StatusCreated {
				err = fmt.Errorf("create agent: HTTP %d %+v", status, r.Error)
			}
			var a struct{ APIKey string }
			if err == nil {
				err = json.Unmarshal(r.Data, &a)
			}
			keys[i] = a.APIKey
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for _, k := range keys {
		require.True(t, strings.HasPrefix(k, "ak_"))
	}
	return keys
}
