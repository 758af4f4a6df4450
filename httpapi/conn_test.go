package httpapi_test

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Every error is the JSON envelope, including the ones net/http answers
// before a handler runs and the paths the mux would redirect.
func TestEveryErrorIsTheEnvelope(t *testing.T) {
	e := newTestServer(t)
	addr := e.srv.Listener.Addr().String()
	raw := func(req string) (*http.Response, map[string]any) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte(req))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		defer resp.Body.Close()
		var body map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		return resp, body
	}
	for _, tc := range []struct {
		name, req string
		status    int
		code      string
	}{
		{"malformed request line", "GARBAGE\r\n\r\n", 400, "VALIDATION_ERROR"},
		{"bad header", "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "VALIDATION_ERROR"},
		{"headers too large", "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", 431, "PAYLOAD_TOO_LARGE"},
		{"unknown transfer encoding", "POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: rot13\r\n\r\n", 501, "VALIDATION_ERROR"},
		{"unclean path", "GET /api//v1/agents HTTP/1.1\r\nHost: x\r\n\r\n", 404, "NOT_FOUND"},
		{"dot segments", "GET /api/v1/../v1/agents HTTP/1.1\r\nHost: x\r\n\r\n", 404, "NOT_FOUND"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := raw(tc.req)
			require.Equal(t, tc.status, resp.StatusCode)
			require.Contains(t, resp.Header.Get("Content-Type"), "application/json")
			require.Equal(t, false, body["success"])
			require.Equal(t, tc.code, body["error"].(map[string]any)["code"])
		})
	}
}
