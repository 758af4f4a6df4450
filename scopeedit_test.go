package agentotp_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentotp/agentotp"
)

func TestCheckScopeEdit(t *testing.T) {
	granted := `{"max_emails": 5, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
		"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`
	for _, tc := range []struct {
		name   string
		edited string
		field  string // "" = accepted
	}{
		{"unchanged", granted, ""},
		{"number lowered", `{"max_emails": 1, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, ""},
		{"list entry removed, bool off, nested lowered, key added", `{"max_emails": 5, "to": ["b@x.io"], "blocked_domains": ["evil.io"],
			"subject": "hi", "attach": false, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 10, "dry": true},
			"none": null, "max_size": 3}`, ""},
		{"number raised", `{"max_emails": 6, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.max_emails"},
		{"list entry added", `{"max_emails": 5, "to": ["a@x.io", "b@x.io", "c@evil.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.to"},
		{"blocked entry dropped", `{"max_emails": 5, "to": ["a@x.io", "b@x.io"], "blocked_domains": [], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.blocked_domains"},
		{"string changed", `{"max_emails": 5, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "other",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.subject"},
		{"pattern changed", `{"max_emails": 5, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": ".*", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.path_pattern"},
		{"false turned on", `{"max_emails": 5, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": true, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.draft"},
		{"nested raised", `{"max_emails": 5, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 1000, "dry": true}, "none": null}`, "scope.limits.max_bytes"},
		{"key removed", `{"to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.max_emails"},
		{"type changed", `{"max_emails": "5", "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": null}`, "scope.max_emails"},
		{"null given a value", `{"max_emails": 5, "to": ["a@x.io", "b@x.io"], "blocked_domains": ["evil.io"], "subject": "hi",
			"attach": true, "draft": false, "path_pattern": "^/tmp/", "limits": {"max_bytes": 100, "dry": true}, "none": "x"}`, "scope.none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g, e map[string]any
			require.NoError(t, json.Unmarshal([]byte(granted), &g))
			require.NoError(t, json.Unmarshal([]byte(tc.edited), &e))
			err := agentotp.CheckScopeEdit("scope", g, e)
			if tc.field == "" {
				require.NoError(t, err)
				// What Decide stores is then exactly what was typed.
				require.Equal(t, e, agentotp.NarrowScope(g, e))
				return
			}
			var ae *agentotp.Error
			require.ErrorAs(t, err, &ae)
			require.Equal(t, agentotp.CodeValidation, ae.Code)
			require.Contains(t, ae.Details, tc.field, ae.Message)
		})
	}
}
