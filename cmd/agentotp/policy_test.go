package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func runPolicyCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := runPolicy(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestPolicyTestCommand(t *testing.T) {
	code, out, errs := runPolicyCmd("test", "../../policy/testdata")
	require.Equal(t, 0, code, "%s\n%s", out, errs)
	require.Contains(t, out, "0 failed, 0 invalid")
	require.Contains(t, out, "appendix/y13/policy_test.yaml")

	// A failing case: exit 1, naming the case, expected and got.
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("- {name: r, action: deny, conditions: {action: {equals: a}}}\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p_test.yaml"), []byte(
		"- {name: wrong, request: {action: a}, expect: {action: auto_approve, rule: r}}\n- {name: right, request: {action: a}, expect: {action: deny, rule: r}}\n"), 0o600))
	code, out, _ = runPolicyCmd("test", dir)
	require.Equal(t, 1, code)
	require.Contains(t, out, `"wrong": action: expected auto_approve; got action=deny rule="r"`)
	require.Contains(t, out, "1 passed, 1 failed")

	// Invalid input: exit 2.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p_test.yaml"), []byte("- {name: x, request: {action: a}, expect: {action: maybe}}\n"), 0o600))
	code, _, errs = runPolicyCmd("test", dir)
	require.Equal(t, 2, code)
	require.Contains(t, errs, "expect.action")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p_test.yaml"), []byte("- {name: x, request: {action: a}, expect: {action: deny}, extra: 1}\n"), 0o600))
	code, _, _ = runPolicyCmd("test", dir)
	require.Equal(t, 2, code)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p_test.yaml"), []byte("- {name: x, request: {action: a}, expect: {action: deny}}\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("- {name: r, action: nope}\n"), 0o600))
	code, _, _ = runPolicyCmd("test", dir)
	require.Equal(t, 2, code)
	code, _, _ = runPolicyCmd("test", t.TempDir())
	require.Equal(t, 2, code)
	code, _, _ = runPolicyCmd("test")
	require.Equal(t, 2, code)
}

func TestPolicyCheckCommand(t *testing.T) {
	code, out, _ := runPolicyCmd("check", "../../policy/testdata/readme")
	require.Equal(t, 0, code)
	require.Contains(t, out, "ok: 4 rule(s)")

	code, _, errs := runPolicyCmd("check", "../../policy/testdata/appendix/y01/policy.yaml")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "y01/policy.yaml:7:")

	code, _, _ = runPolicyCmd("check")
	require.Equal(t, 2, code)
	code, _, _ = runPolicyCmd("frobnicate")
	require.Equal(t, 2, code)
}

// policy check reports every problem of every file and rule in one run,
// not only the first.
func TestPolicyCheckReportsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(`
- name: typo
  conditon: {action: {equals: x}}
  action: deny
- name: bad cel
  when: request.action + 1
  action: deny
`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b.yaml"), []byte(`
- name: bad operator
  conditions: {action: {looksLike: x}}
  action: deny
- name: fine
  action: deny
`), 0o600))
	code, _, errs := run(t, "policy", "check", dir)
	require.Equal(t, 1, code)
	for _, want := range []string{`a.yaml:3`, `unknown field "conditon"`, `bad cel`, `b.yaml`, `looksLike`, "3 problem(s)"} {
		require.Contains(t, errs, want)
	}
}
