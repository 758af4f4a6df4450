package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
)

func TestCallbackKey(t *testing.T) {
	raw := []byte(strings.Repeat("\x01\x02\x03\x04", 8))
	t.Run("generated once into the data directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		k1, err := callbackKey(Config{Data: dir})
		require.NoError(t, err)
		require.Len(t, k1, 32)
		fi, err := os.Stat(filepath.Join(dir, "callback.key"))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		k2, err := callbackKey(Config{Data: dir})
		require.NoError(t, err)
		require.Equal(t, k1, k2)
	})
	for name, s := range map[string]string{
		"hex":           hex.EncodeToString(raw),
		"base64":        base64.StdEncoding.EncodeToString(raw),
		"base64url raw": base64.RawURLEncoding.EncodeToString(raw),
		"padded spaces": "  " + hex.EncodeToString(raw) + "\n",
	} {
		t.Run("from the environment: "+name, func(t *testing.T) {
			dir := t.TempDir()
			k, err := callbackKey(Config{Data: dir, CallbackKey: agentotp.Secret(s)})
			require.NoError(t, err)
			require.Equal(t, raw, k)
			_, err = os.Stat(filepath.Join(dir, "callback.key"))
			require.ErrorIs(t, err, os.ErrNotExist, "no file when the environment has the key")
		})
	}
	for name, s := range map[string]string{"short": hex.EncodeToString(raw[:31]), "garbage": "not a key!", "empty": ""} {
		t.Run("refused: "+name, func(t *testing.T) {
			_, err := decodeCallbackKey(s)
			require.Error(t, err)
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "callback.key"), []byte(s), 0o600))
			_, err = callbackKey(Config{Data: dir})
			require.ErrorContains(t, err, "callback.key")
		})
	}
}

func TestCallbackConfig(t *testing.T) {
	load := func(t *testing.T, vars map[string]string, args ...string) (Config, error) {
		withEnv(t, vars)
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		l := configFlags(fs)
		require.NoError(t, fs.Parse(args))
		return l(env)
	}
	cfg, err := load(t, map[string]string{"AGENTOTP_CALLBACK_ALLOW": "hooks.example.com, 127.0.0.1:9999,,"})
	require.NoError(t, err)
	require.Equal(t, []string{"hooks.example.com", "127.0.0.1:9999"}, cfg.CallbackHosts())

	cfg, err = load(t, map[string]string{"AGENTOTP_CALLBACK_ALLOW": "env.example"}, "--callback-allow", "flag.example:8443")
	require.NoError(t, err)
	require.Equal(t, []string{"flag.example:8443"}, cfg.CallbackHosts(), "flag beats env")

	file := filepath.Join(t.TempDir(), "agentotp.yaml")
	require.NoError(t, os.WriteFile(file, []byte("callbackAllow: file.example\n"), 0o600))
	cfg, err = load(t, nil, "--config", file)
	require.NoError(t, err)
	require.Equal(t, []string{"file.example"}, cfg.CallbackHosts())

	_, err = load(t, nil, "--callback-allow", "https://hooks.example.com/cb")
	require.ErrorContains(t, err, "callback-allow:")
	require.ErrorContains(t, err, "without scheme or path")
	_, err = load(t, map[string]string{"AGENTOTP_CALLBACK_KEY": "abcd"})
	require.ErrorContains(t, err, "AGENTOTP_CALLBACK_KEY")
	keyFile := filepath.Join(t.TempDir(), "k")
	require.NoError(t, os.WriteFile(keyFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600))
	cfg, err = load(t, map[string]string{"AGENTOTP_CALLBACK_KEY_FILE": keyFile})
	require.NoError(t, err)
	require.Equal(t, "[redacted]", cfg.CallbackKey.String())
	require.NoError(t, os.WriteFile(file, []byte("callbackKey: abcd\n"), 0o600))
	_, err = load(t, nil, "--config", file)
	require.Error(t, err, "the key is a secret: never from the config file")
}

func TestCallbackSetup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "agentotp.db"), sqlite.Options{})
	require.NoError(t, err)
	defer st.Close()
	logger := slog.New(slog.DiscardHandler)

	hosts, key, n, err := callbackSetup(Config{Data: dir}, st, logger)
	require.NoError(t, err)
	require.Nil(t, hosts)
	require.Nil(t, n, "nothing to send to without an allow-list")
	require.Len(t, key, 32, "the key exists anyway, so agents get their secret from the start")

	hosts, key2, n, err := callbackSetup(Config{Data: dir, CallbackAllow: "hooks.example.com,127.0.0.1:9999"}, st, logger)
	require.NoError(t, err)
	require.Equal(t, []string{"hooks.example.com", "127.0.0.1:9999"}, hosts)
	require.Equal(t, key, key2)
	require.NotNil(t, n)
	require.NoError(t, n.Close())
}

// TestAgentsPrintCallbackSecret: `agents create` and `rotate` print the
// callback secret beside the key, locally (derived with the data
// directory's key, as serve derives it) and over the API.
func TestAgentsPrintCallbackSecret(t *testing.T) {
	ctx := context.Background()
	secretRe := regexp.MustCompile(`callback secret \(shown once.*\): (whsec_\S+)`)
	idRe := regexp.MustCompile(`\((agt_\S+)\)`)

	t.Run("local", func(t *testing.T) {
		withEnv(t, nil)
		dir := filepath.Join(t.TempDir(), "data")
		code, out, errs := run(t, "agents", "create", "signer", "--data", dir)
		require.Equal(t, 0, code, errs)
		m := secretRe.FindStringSubmatch(out)
		require.NotNil(t, m, out)
		id := idRe.FindStringSubmatch(out)[1]

		key, err := callbackKey(Config{Data: dir})
		require.NoError(t, err)
		st, err := sqlite.Open(ctx, filepath.Join(dir, "agentotp.db"), sqlite.Options{})
		require.NoError(t, err)
		a, err := st.Agent(ctx, agentotp.AgentID(id))
		require.NoError(t, err)
		require.NoError(t, st.Close())
		require.Equal(t, agentotp.CallbackSecret(key, a).Reveal(), m[1])

		code, out, errs = run(t, "agents", "rotate", id, "--data", dir)
		require.Equal(t, 0, code, errs)
		m2 := secretRe.FindStringSubmatch(out)
		require.NotNil(t, m2, out)
		require.NotEqual(t, m[1], m2[1], "a new key, a new callback secret")
	})

	t.Run("remote", func(t *testing.T) {
		st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "agentotp.db"), sqlite.Options{})
		require.NoError(t, err)
		defer st.Close()
		svc := agentotp.NewService(st, agentotp.Options{})
		key := []byte(strings.Repeat("r", 32))
		srv := httptest.NewServer(httpapi.New(svc, httpapi.Options{RateLimit: -1, CallbackKey: key}))
		defer srv.Close()
		admin := agentotp.NewUserKey()
		_, err = svc.EnsureAdmin(ctx, admin)
		require.NoError(t, err)
		withEnv(t, map[string]string{"AGENTOTP_URL": srv.URL, "AGENTOTP_ADMIN_KEY": admin.Reveal()})

		code, out, errs := run(t, "agents", "create", "remote-signer")
		require.Equal(t, 0, code, errs)
		m := secretRe.FindStringSubmatch(out)
		require.NotNil(t, m, out)
		a, err := st.Agent(ctx, agentotp.AgentID(idRe.FindStringSubmatch(out)[1]))
		require.NoError(t, err)
		require.Equal(t, agentotp.CallbackSecret(key, a).Reveal(), m[1])
		code, out, errs = run(t, "agents", "rotate", string(a.ID))
		require.Equal(t, 0, code, errs)
		require.Regexp(t, secretRe, out)
	})
}
