package agentotp_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func TestCallbackURLValidation(t *testing.T) {
	cases := []struct {
		url     string
		problem string // "" = valid
	}{
		{"https://hooks.example.com/agentotp", ""},
		{"http://127.0.0.1:9999/cb?agent=7&x=%20y", ""},
		{"https://[::1]:8443/cb", ""},
		{"HTTPS://Hooks.Example.com", ""},
		{"https://hooks.example.com/" + strings.Repeat("a", agentotp.MaxCallbackURLLen-26), ""},
		{"https://hooks.example.com/" + strings.Repeat("a", agentotp.MaxCallbackURLLen-25), "at most 2048 bytes"},
		{"ftp://hooks.example.com/x", "absolute http or https"},
		{"javascript:alert(1)", "absolute http or https"},
		{"/relative/path", "absolute http or https"},
		{"hooks.example.com/cb", "absolute http or https"},
		{"https:opaque", "with a host"},
		{"https:///no-host", "with a host"},
		{"https://:443/no-host", "with a host"},
		{"https://user:pass@hooks.example.com/", "user information"},
		{"https://user@hooks.example.com/", "user information"},
		{"https://hooks.example.com/#frag", "fragment"},
		{"https://hooks.example.com/#", "fragment"},
		{"https://hooks.example.com/a b", "printable ASCII"},
		{"https://hooks.example.com/\x00", "printable ASCII"},
		{"https://hooks.example.com/\n", "printable ASCII"},
		{"https://hooks.example.com/é", "printable ASCII"},
		{"https://hooks.example.com:99999/", "invalid port"},
		{"https://hooks.example.com:x/", "valid URL"},
		{"https://hooks.example.com:0/", "invalid port"},
	}
	for _, tc := range cases {
		t.Run(tc.url[:min(len(tc.url), 40)], func(t *testing.T) {
			req := agentotp.PermissionRequest{Action: "a", CallbackURL: tc.url}
			err := req.Validate()
			if tc.problem == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, agentotp.ErrValidation)
			var e *agentotp.Error
			require.ErrorAs(t, err, &e)
			require.Contains(t, e.Details, "callbackUrl")
			require.Contains(t, e.Message, tc.problem)
		})
	}
}

func TestCallbackAllowList(t *testing.T) {
	entries := []struct {
		in   string
		want agentotp.CallbackHost
		bad  bool
	}{
		{in: "hooks.example.com", want: agentotp.CallbackHost{Host: "hooks.example.com"}},
		{in: " Hooks.Example.COM:8443 ", want: agentotp.CallbackHost{Host: "hooks.example.com", Port: "8443"}},
		{in: "127.0.0.1:9999", want: agentotp.CallbackHost{Host: "127.0.0.1", Port: "9999"}},
		{in: "[::1]:9999", want: agentotp.CallbackHost{Host: "::1", Port: "9999"}},
		{in: "[0:0::1]", want: agentotp.CallbackHost{Host: "::1"}},
		{in: "::1", want: agentotp.CallbackHost{Host: "::1"}},
		{in: "", bad: true},
		{in: "https://hooks.example.com", bad: true},
		{in: "hooks.example.com/cb", bad: true},
		{in: "user@hooks.example.com", bad: true},
		{in: "hooks.example.com:", bad: true},
		{in: "hooks.example.com:http", bad: true},
		{in: "hooks.example.com:70000", bad: true},
		{in: "hooks.example.com:08443", bad: true},
		{in: "[fe80::1%eth0]:80", bad: true},
		{in: "hooks_example!.com", bad: true},
	}
	for _, tc := range entries {
		got, err := agentotp.ParseCallbackHost(tc.in)
		if tc.bad {
			require.ErrorIs(t, err, agentotp.ErrValidation, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}

	allow, err := agentotp.ParseCallbackHosts([]string{"hooks.example.com", "127.0.0.1:9999", "[::1]:9999", "LOCALHOST:8080"})
	require.NoError(t, err)
	matches := map[string]bool{
		"https://hooks.example.com/x":      true,
		"https://HOOKS.example.com:443/x":  true,
		"http://hooks.example.com/x":       true, // port 80, the scheme's default
		"https://hooks.example.com:8443/x": false,
		"http://hooks.example.com:443/x":   false, // not http's default port
		"https://hooks.example.com.evil/":  false,
		"https://evil.hooks.example.com/":  false,
		"http://127.0.0.1:9999/cb":         true,
		"http://127.0.0.1:9998/cb":         false,
		"http://127.0.0.1/cb":              false,
		"http://localhost:9999/cb":         false, // a name is not its address
		"http://[::1]:9999/cb":             true,
		"http://[0::1]:9999/cb":            true,
		"http://localhost:8080/":           true,
	}
	for raw, want := range matches {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		require.Equal(t, want, agentotp.CallbackListed(allow, u), raw)
	}
	require.False(t, agentotp.CallbackListed(nil, &url.URL{Scheme: "https", Host: "hooks.example.com"}))
}

func TestCallbackURLRefusedUnlessListed(t *testing.T) {
	cases := []struct {
		name  string
		hosts []string
		url   string
		ok    bool
	}{
		{"no allow-list", nil, "https://hooks.example.com/cb", false},
		{"listed", []string{"hooks.example.com"}, "https://hooks.example.com/cb", true},
		{"listed with port", []string{"127.0.0.1:9999"}, "http://127.0.0.1:9999/cb", true},
		{"other host", []string{"hooks.example.com"}, "https://evil.example/cb", false},
		{"other port", []string{"hooks.example.com"}, "https://hooks.example.com:8443/cb", false},
		{"loopback by name when only the address is listed", []string{"127.0.0.1:9999"}, "http://localhost:9999/cb", false},
		{"bad entries match nothing", []string{"https://hooks.example.com"}, "https://hooks.example.com/cb", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *agentotp.Options) { o.CallbackHosts = tc.hosts })
			a := f.agent("a")
			perm, _, err := f.svc.RequestPermission(f.ctx, a, agentotp.PermissionRequest{Action: "gmail.send", CallbackURL: tc.url})
			if tc.ok {
				require.NoError(t, err)
				require.Equal(t, tc.url, perm.CallbackURL)
				got, _, err := f.svc.GetPermission(f.ctx, a, perm.ID, 0)
				require.NoError(t, err)
				require.Equal(t, tc.url, got.CallbackURL)
				return
			}
			require.ErrorIs(t, err, agentotp.ErrValidation)
			var e *agentotp.Error
			require.ErrorAs(t, err, &e)
			require.Contains(t, e.Details, "callbackUrl")
			require.Contains(t, e.Message, "not on the callback allow-list (--callback-allow)")
			n, err := f.store.CountPermissions(f.ctx, a.Agent.ID, "*", f.clock.Now().Add(-1e12), nil)
			require.NoError(t, err)
			require.Zero(t, n, "a refused request is not stored")
		})
	}
}

func TestCallbackURLInIdempotentReplay(t *testing.T) {
	f := newFixture(t, func(o *agentotp.Options) { o.CallbackHosts = []string{"hooks.example.com"} })
	a := f.agent("a")
	req := agentotp.PermissionRequest{Action: "gmail.send", IdempotencyKey: "k1", CallbackURL: "https://hooks.example.com/one"}
	first, _, err := f.svc.RequestPermission(f.ctx, a, req)
	require.NoError(t, err)
	again, _, err := f.svc.RequestPermission(f.ctx, a, req)
	require.NoError(t, err)
	require.Equal(t, first.ID, again.ID)

	for name, cb := range map[string]string{"other URL": "https://hooks.example.com/two", "none": ""} {
		req := req
		req.CallbackURL = cb
		_, _, err = f.svc.RequestPermission(f.ctx, a, req)
		require.ErrorIs(t, err, agentotp.ErrConflict, name)
	}
	// And the other way round: a key first used without a callback.
	req = agentotp.PermissionRequest{Action: "gmail.send", IdempotencyKey: "k2"}
	_, _, err = f.svc.RequestPermission(f.ctx, a, req)
	require.NoError(t, err)
	req.CallbackURL = "https://hooks.example.com/one"
	_, _, err = f.svc.RequestPermission(f.ctx, a, req)
	require.ErrorIs(t, err, agentotp.ErrConflict)
}

func TestCallbackSecret(t *testing.T) {
	f := newFixture(t)
	key := []byte(strings.Repeat("k", 32))
	ag, _, err := f.svc.CreateAgent(f.ctx, f.admin, agentotp.AgentInput{Name: "a"})
	require.NoError(t, err)
	other, _, err := f.svc.CreateAgent(f.ctx, f.admin, agentotp.AgentInput{Name: "b"})
	require.NoError(t, err)

	s1 := agentotp.CallbackSecret(key, ag)
	require.True(t, strings.HasPrefix(s1.Reveal(), agentotp.CallbackSecretPrefix))
	require.Len(t, s1.Reveal(), len(agentotp.CallbackSecretPrefix)+43) // 256 bits, base64url
	require.Equal(t, "[redacted]", s1.String())
	stored, err := f.store.Agent(f.ctx, ag.ID)
	require.NoError(t, err)
	require.Equal(t, s1, agentotp.CallbackSecret(key, stored), "derived, so the same on every read")
	require.NotEqual(t, s1, agentotp.CallbackSecret(key, other), "per agent")
	require.NotEqual(t, s1, agentotp.CallbackSecret([]byte(strings.Repeat("K", 32)), ag), "per server key")

	rotated, _, err := f.svc.RotateAgentKey(f.ctx, f.admin, ag.ID)
	require.NoError(t, err)
	require.NotEqual(t, s1, agentotp.CallbackSecret(key, rotated), "rotating the API key rotates the callback secret")
}

func TestCallbackSignature(t *testing.T) {
	secret := agentotp.Secret("whsec_test")
	body := []byte(`{"event":"permission.approved"}`)
	m := hmac.New(sha256.New, []byte("whsec_test"))
	m.Write([]byte("1700000000." + string(body)))
	require.Equal(t, hex.EncodeToString(m.Sum(nil)), agentotp.CallbackSignature(secret, 1700000000, body))
	require.NotEqual(t, agentotp.CallbackSignature(secret, 1700000001, body), agentotp.CallbackSignature(secret, 1700000000, body))
}
