package httpapi_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// Paging and date filters out of range are refused, not wrapped around
// (page 2^62+1 used to read as page 1, year 3000 as 2026).
func TestOutOfRangeQueriesAreRefused(t *testing.T) {
	e := newTestServer(t)
	for _, tc := range []struct {
		path, field string
	}{
		{"/api/v1/approvals?page=4611686018427387905", "page"},
		{"/api/v1/approvals?page=1000001", "page"},
		{"/api/v1/agents?limit=101", "limit"},
		{"/api/v1/audit?startDate=3000-01-01T00:00:00Z", "startDate"},
		{"/api/v1/audit?endDate=1969-12-31T00:00:00Z", "endDate"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			got := e.do("GET", tc.path, e.adminKey, nil).fail(t, http.StatusBadRequest, "VALIDATION_ERROR")
			require.Contains(t, got.Message, tc.field)
		})
	}
	e.do("GET", "/api/v1/approvals?page=1000000", e.adminKey, nil).data(t, http.StatusOK, nil)
	e.do("GET", "/api/v1/audit?startDate=2026-01-01T00:00:00Z", e.adminKey, nil).data(t, http.StatusOK, nil)
}
