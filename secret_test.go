package agentotp_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func TestSecretNeverPrints(t *testing.T) {
	tok := agentotp.NewToken()
	raw := tok.Reveal()
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "token", tok, "nested", map[string]any{"t": tok})
	js, err := json.Marshal(struct{ T agentotp.Secret }{tok})
	require.NoError(t, err)
	for name, out := range map[string]string{
		"%v": fmt.Sprintf("%v", tok), "%s": fmt.Sprintf("%s", tok), "%q": fmt.Sprintf("%q", tok),
		"%x": fmt.Sprintf("%x", tok), "%#v": fmt.Sprintf("%#v", tok), "%+v struct": fmt.Sprintf("%+v", struct{ T agentotp.Secret }{tok}),
		"json": string(js), "slog": logs.String(), "error wrap": fmt.Errorf("use %v: failed", tok).Error(),
	} {
		require.NotContains(t, out, raw, name)
		require.Contains(t, out, "[redacted]", name)
	}
}

func TestCredentialFormats(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		tok := agentotp.NewToken().Reveal()
		require.True(t, agentotp.ValidTokenFormat(tok), tok)
		require.Len(t, tok, 36)
		require.False(t, seen[tok])
		seen[tok] = true
		ak, uk := agentotp.NewAgentKey().Reveal(), agentotp.NewUserKey().Reveal()
		require.True(t, strings.HasPrefix(ak, "ak_") && len(ak) == 35 && agentotp.ValidKeyFormat(ak), ak)
		require.True(t, strings.HasPrefix(uk, "uk_") && len(uk) == 35 && agentotp.ValidKeyFormat(uk), uk)
	}
	for _, bad := range []string{"", "otp_", "otp_short", "otp_" + strings.Repeat("a", 33), "otx_" + strings.Repeat("a", 32),
		"otp_" + strings.Repeat("a", 31) + "-", "otp_" + strings.Repeat("é", 16)} {
		require.False(t, agentotp.ValidTokenFormat(bad), bad)
	}
	require.Len(t, agentotp.HashSecret("x"), 64)
	require.True(t, agentotp.EqualHash(agentotp.HashSecret("x"), agentotp.HashSecret("x")))
	require.False(t, agentotp.EqualHash(agentotp.HashSecret("x"), agentotp.HashSecret("y")))
	require.False(t, agentotp.EqualHash("", agentotp.HashSecret("y")))
}

// FuzzTokenMutation checks that no mutation of a token other than the token
// itself matches its hash, and that parsing never panics.
func FuzzTokenMutation(f *testing.F) {
	tok := agentotp.NewToken().Reveal()
	hash := agentotp.HashSecret(tok)
	f.Add(tok)
	f.Add(strings.ToUpper(tok))
	f.Add(tok[:len(tok)-1])
	f.Add(tok + "=")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		_ = agentotp.ValidTokenFormat(s)
		_ = agentotp.ValidKeyFormat(s)
		if s != tok && agentotp.EqualHash(hash, agentotp.HashSecret(s)) {
			t.Fatalf("mutation %q matched the token's hash", s)
		}
	})
}
