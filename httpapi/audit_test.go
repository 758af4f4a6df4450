package httpapi_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
	"github.com/agentotp/agentotp/httpapi"
	"github.com/agentotp/agentotp/store/sqlite"
)

// TestAuditVerifyRoute: GET /api/v1/audit/verify checks the keyed chain,
// a checkpoint given as ?checkpoint=, and every permission against its
// events, and names those that disagree.
func TestAuditVerifyRoute(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agentotp.db")
	key, err := agentotp.NewAuditKey([]byte(strings.Repeat("route key ", 4)))
	require.NoError(t, err)
	st, err := sqlite.Open(ctx, path, sqlite.Options{Synchronous: "NORMAL", AuditKey: key})
	require.NoError(t, err)
	defer st.Close()
	svc := agentotp.NewService(st, agentotp.Options{Evaluator: agentotp.EvaluatorFunc(
		func(context.Context, agentotp.EvalInput) (agentotp.Decision, error) {
			return agentotp.Decision{Effect: agentotp.EffectAutoApprove, Rule: "all"}, nil
		})})
	srv := httptest.NewServer(httpapi.New(svc, httpapi.Options{RateLimit: -1}))
	defer srv.Close()
	adminKey := agentotp.NewUserKey()
	_, err = svc.EnsureAdmin(ctx, adminKey)
	require.NoError(t, err)
	admin, err := svc.Authenticate(ctx, adminKey.Reveal())
	require.NoError(t, err)
	_, agentKey, err := svc.CreateAgent(ctx, admin, agentotp.AgentInput{Name: "bot"})
	require.NoError(t, err)
	agent, err := svc.Authenticate(ctx, agentKey.Reveal())
	require.NoError(t, err)
	p, tok, err := svc.RequestPermission(ctx, agent, agentotp.PermissionRequest{Action: "db.query"})
	require.NoError(t, err)
	_, err = svc.Use(ctx, agent, p.ID, tok.Reveal(), nil)
	require.NoError(t, err)

	verify := func(query string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequest("GET", srv.URL+"/api/v1/audit/verify"+query, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+adminKey.Reveal())
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		var env struct {
			Data  map[string]any `json:"data"`
			Error map[string]any `json:"error"`
		}
		require.NoError(t, json.NewDecoder(res.Body).Decode(&env))
		if env.Error != nil {
			return res.StatusCode, env.Error
		}
		return res.StatusCode, env.Data
	}

	status, v := verify("")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, true, v["ok"], "%v", v)
	require.Equal(t, true, v["keyed"])
	require.Equal(t, key.ID(), v["keyId"])
	require.Equal(t, float64(1), v["keyedFrom"])
	require.Equal(t, float64(1), v["permissionsChecked"])
	cp, _ := v["checkpoint"].(string)
	require.True(t, strings.HasPrefix(cp, "agentotp-checkpoint v1 "), cp)

	status, v = verify("?checkpoint=" + url.QueryEscape(cp))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, true, v["ok"], "%v", v)
	status, v = verify("?checkpoint=" + url.QueryEscape(strings.Replace(cp, "seq=", "seq=9", 1)))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, false, v["ok"])
	require.Contains(t, v["reason"], "checkpoint refused")
	status, v = verify("?checkpoint=garbage")
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "VALIDATION_ERROR", v["code"])

	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	_, err = db.Exec(`UPDATE permissions SET status = 'approved', uses_remaining = 1 WHERE id = ?`, string(p.ID))
	require.NoError(t, err)
	require.NoError(t, db.Close())
	status, v = verify("")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, false, v["ok"])
	require.NotContains(t, v, "badSeq", "the chain itself is intact")
	require.Equal(t, float64(1), v["mismatchCount"])
	require.Equal(t, []any{map[string]any{"permissionId": string(p.ID), "problems": []any{
		"stored status approved, events say used", "stored uses remaining 1, events say 0"}}}, v["mismatches"])
	require.Contains(t, v["reason"], "permission "+string(p.ID)+": stored status approved, events say used")
}
