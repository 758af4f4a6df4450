package agentotp_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func TestNarrowScope(t *testing.T) {
	tests := []struct {
		name         string
		base, limits map[string]any
		want         map[string]any
	}{
		{"numbers take the smaller", map[string]any{"max": 100.0}, map[string]any{"max": 1048576.0}, map[string]any{"max": 100.0}},
		{"template lowers a number", map[string]any{"max": 5.0}, map[string]any{"max": 1.0}, map[string]any{"max": 1.0}},
		{"lists intersect in base order", map[string]any{"ext": []any{".md", ".exe", ".txt"}}, map[string]any{"ext": []any{".txt", ".md"}}, map[string]any{"ext": []any{".md", ".txt"}}},
		{"disjoint lists give empty", map[string]any{"ext": []any{".exe"}}, map[string]any{"ext": []any{".txt"}}, map[string]any{"ext": []any{}}},
		{"booleans AND", map[string]any{"a": true, "b": false}, map[string]any{"a": false, "b": true}, map[string]any{"a": false, "b": false}},
		{"strings take the template's", map[string]any{"to": "x@y"}, map[string]any{"to": "a@b"}, map[string]any{"to": "a@b"}},
		{"new keys are added", map[string]any{}, map[string]any{"max_emails": 1.0}, map[string]any{"max_emails": 1.0}},
		{"untouched keys stay", map[string]any{"keep": "me"}, nil, map[string]any{"keep": "me"}},
		{"objects narrow recursively", map[string]any{"o": map[string]any{"n": 9.0, "s": "x"}}, map[string]any{"o": map[string]any{"n": 3.0}}, map[string]any{"o": map[string]any{"n": 3.0, "s": "x"}}},
		{"ints and floats compare", map[string]any{"n": 3}, map[string]any{"n": 7.0}, map[string]any{"n": 3}},
		// An agent's own blocked list cannot lift the template's blocks.
		{"blocked lists unite", map[string]any{"blocked_domains": []any{"other.com", "evil.com"}}, map[string]any{"blocked_domains": []any{"evil.com", "worse.com"}},
			map[string]any{"blocked_domains": []any{"other.com", "evil.com", "worse.com"}}},
		{"blocked lists unite when nested", map[string]any{"o": map[string]any{"blocked_paths": []any{}}}, map[string]any{"o": map[string]any{"blocked_paths": []any{"/etc"}}},
			map[string]any{"o": map[string]any{"blocked_paths": []any{"/etc"}}}},
		{"a blocked value that is no list takes the limit's", map[string]any{"blocked_paths": "/tmp"}, map[string]any{"blocked_paths": []any{"/etc"}},
			map[string]any{"blocked_paths": []any{"/etc"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, agentotp.NarrowScope(tt.base, tt.limits))
		})
	}
}

func TestCheckDetails(t *testing.T) {
	var (
		maxEmails = map[string]any{"max_emails": 1.0}
		subject   = map[string]any{"subject_pattern": "^Invoice"}
		domains   = map[string]any{"allowed_domains": []any{"example.com"}}
		paths     = map[string]any{"blocked_paths": []any{"/etc"}}
		plain     = map[string]any{"recipient": "client@example.com", "attachments": false, "regions": []any{"eu", "us"}}
		maxN      = map[string]any{"max_n": 1.0}
	)
	tests := []struct {
		name    string
		scope   map[string]any
		details map[string]any
		bad     string // offending key, "" when allowed
	}{
		{"what the scope fixes, stated", plain, map[string]any{"recipient": "client@example.com", "attachments": false, "regions": []any{"eu"}}, ""},
		{"within every limit", map[string]any{"max_emails": 1.0, "subject_pattern": "^Invoice", "allowed_domains": []any{"example.com"},
			"blocked_paths": []any{"/etc"}, "recipient": "client@example.com", "regions": []any{"eu", "us"}},
			map[string]any{"emails": 1.0, "subject": "Invoice #1", "domains": "example.com", "paths": "/tmp",
				"recipient": "client@example.com", "regions": []any{"eu"}}, ""},
		{"unmentioned keys pass", plain, map[string]any{"recipient": "client@example.com", "attachments": false, "regions": []any{"us"}, "body": "hi"}, ""},
		{"over a max", maxEmails, map[string]any{"emails": 2.0}, "emails"},
		{"list counted against max", maxEmails, map[string]any{"emails": []any{"a", "b"}}, "emails"},
		{"max needs a number", maxEmails, map[string]any{"emails": "one"}, "emails"},
		{"pattern mismatch", subject, map[string]any{"subject": "Hello"}, "subject"},
		{"not in allowed list", domains, map[string]any{"domains": "evil.com"}, "domains"},
		{"in blocked list", paths, map[string]any{"paths": []any{"/tmp", "/etc"}}, "paths"},
		{"different recipient", plain, map[string]any{"recipient": "attacker@evil.com", "attachments": false, "regions": []any{"eu"}}, "recipient"},
		{"bool widened", plain, map[string]any{"attachments": true}, "attachments"},
		{"list widened", plain, map[string]any{"recipient": "client@example.com", "attachments": false, "regions": []any{"eu", "apac"}}, "regions"},
		{"echoed limit wider than granted", maxEmails, map[string]any{"max_emails": 50.0, "emails": 1.0}, "max_emails"},
		{"echoed limit within granted", maxEmails, map[string]any{"max_emails": 1.0, "emails": 1.0}, ""},
		{"echoed allow list wider", domains, map[string]any{"allowed_domains": []any{"example.com", "evil.com"}, "domains": "example.com"}, "allowed_domains"},
		{"numbers in a list are not a count", maxEmails, map[string]any{"emails": []any{1e9}}, "emails"},
		// Fail closed: a constrained subject left out, misspelt or negative.
		{"max subject missing", maxN, map[string]any{}, "n"},
		{"keys match exactly", maxN, map[string]any{"N": 500.0}, "n"},
		{"negative count", maxN, map[string]any{"n": -1000.0}, "n"},
		{"echo alone does not satisfy a max", maxEmails, map[string]any{"max_emails": 1.0}, "emails"},
		{"pattern subject missing", subject, map[string]any{"body": "x"}, "subject"},
		{"allowed subject missing", domains, map[string]any{}, "domains"},
		{"blocked subject missing", paths, map[string]any{}, "paths"},
		{"pattern needs a string", subject, map[string]any{"subject": 7.0}, "subject"},
		// An object's rules hold too: the object cannot be left out.
		{"nested limit within", map[string]any{"limits": map[string]any{"max_amount": 100.0}},
			map[string]any{"limits": map[string]any{"amount": 50.0}}, ""},
		{"nested limit exceeded", map[string]any{"limits": map[string]any{"max_amount": 100.0}},
			map[string]any{"limits": map[string]any{"amount": 1e9}}, "limits"},
		{"object holding a limit left out", map[string]any{"limits": map[string]any{"max_amount": 100.0}},
			map[string]any{"amount": 1e9}, "limits"},
		{"object holding a deeper limit left out", map[string]any{"a": map[string]any{"b": map[string]any{"to_pattern": "@corp$"}}},
			map[string]any{}, "a"},
		// What the scope fixes cannot be left out: a recipient, an object.
		{"recipient left out", plain, map[string]any{"attachments": false, "regions": []any{"eu"}}, "recipient"},
		{"object left out", map[string]any{"meta": map[string]any{"note": "x"}}, map[string]any{}, "meta"},
		{"null fixes nothing", map[string]any{"note": nil}, map[string]any{}, ""},
		{"a rule key need not be echoed", maxEmails, map[string]any{"emails": 1.0}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := agentotp.CheckDetails(tt.scope, tt.details)
			if tt.bad == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, agentotp.ErrValidation)
			require.Contains(t, err.Error(), "actionDetails."+tt.bad+" ")
		})
	}
}

func TestValidateRequest(t *testing.T) {
	big := map[string]any{}
	for i := range 300 {
		big[string(rune('a'+i%26))+string(rune('A'+i/26))] = i
	}
	deep := map[string]any{}
	cur := deep
	for range 20 {
		next := map[string]any{}
		cur["x"] = next
		cur = next
	}
	tests := []struct {
		name  string
		req   agentotp.PermissionRequest
		field string
	}{
		{"no action", agentotp.PermissionRequest{}, "action"},
		{"control char", agentotp.PermissionRequest{Action: "a\x00b"}, "action"},
		{"invalid utf8", agentotp.PermissionRequest{Action: "a\xffb"}, "action"},
		{"ttl low", agentotp.PermissionRequest{Action: "a", TTL: 29e9}, "ttl"},
		{"ttl high", agentotp.PermissionRequest{Action: "a", TTL: 3601e9}, "ttl"},
		{"uses high", agentotp.PermissionRequest{Action: "a", Uses: 1001}, "uses"},
		{"too many keys", agentotp.PermissionRequest{Action: "a", Scope: big}, "scope"},
		{"too deep", agentotp.PermissionRequest{Action: "a", Context: deep}, "context"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			require.ErrorIs(t, err, agentotp.ErrValidation)
			require.Contains(t, err.Error(), tt.field)
		})
	}
	ok := agentotp.PermissionRequest{Action: "gmail.send"}
	require.NoError(t, ok.Validate())
	require.Equal(t, agentotp.DefaultTokenTTL, ok.TTL)
	require.Equal(t, 1, ok.Uses)
}

func TestMalformedLimitsRefuse(t *testing.T) {
	for key, c := range map[string]struct {
		limit   any
		details map[string]any
	}{
		"max_amount":      {"10", map[string]any{"amount": 1e9}},
		"allowed_to":      {"a@x", map[string]any{"to": "evil@y"}},
		"subject_pattern": {"(", map[string]any{"subject": "x"}},
		"blocked_paths":   {3.0, map[string]any{"paths": "/etc"}},
	} {
		err := agentotp.CheckDetails(map[string]any{key: c.limit}, c.details)
		require.ErrorIs(t, err, agentotp.ErrValidation, key)
		require.Contains(t, err.Error(), "cannot be checked", key)
		// Leaving the subject out does not get around a malformed limit.
		require.ErrorIs(t, agentotp.CheckDetails(map[string]any{key: c.limit}, map[string]any{"other": 1.0}), agentotp.ErrValidation, key)
	}
}

func TestCheckNarrowing(t *testing.T) {
	base := map[string]any{"max_amount": 10.0, "allowed": []any{"a"}, "o": map[string]any{"n": 1.0, "p": "^a$"}, "s": "x",
		"to_pattern": `^alice@corp\.example$`, "none": nil}
	for _, bad := range []map[string]any{
		{"max_amount": "5"}, {"allowed": "b"}, {"o": map[string]any{"n": "1"}}, {"s": 1.0}, {"o": []any{}},
		// A replaced string could widen the limit.
		{"to_pattern": ".*"}, {"s": "y"}, {"o": map[string]any{"p": ".*"}},
	} {
		require.ErrorIs(t, agentotp.CheckNarrowing("scopeModifications", base, bad), agentotp.ErrValidation, "%v", bad)
	}
	require.NoError(t, agentotp.CheckNarrowing("scopeModifications", base,
		map[string]any{"max_amount": 5.0, "allowed": []any{}, "o": map[string]any{"n": 0.0, "p": "^a$"}, "new": "key",
			"s": "x", "none": "a new constraint"}))
}

// A refused use spends nothing and says so: usesRemaining is the true
// count, not 0.
func TestRefusedUseTellsTheUsesLeft(t *testing.T) {
	f := newFixture(t)
	f.eff.Store(int32(agentotp.EffectAutoApprove))
	a := f.agent("counter")
	perm, tok, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "x", Uses: 3, Scope: map[string]any{"max_n": 1.0}})
	require.NoError(t, err)
	res, err := f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), map[string]any{"n": 2.0})
	require.NoError(t, err)
	require.False(t, res.Success)
	require.Equal(t, 3, res.UsesRemaining)
	res, err = f.svc.Use(f.ctx, a, perm.ID, tok.Reveal(), map[string]any{"n": 1.0})
	require.NoError(t, err)
	require.Equal(t, agentotp.UseResult{Success: true, UsesRemaining: 2}, res)
	res, err = f.svc.Use(f.ctx, a, perm.ID, "otp_wrong", map[string]any{"n": 1.0})
	require.NoError(t, err)
	require.Equal(t, 2, res.UsesRemaining)
}
