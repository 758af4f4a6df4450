package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/agentotp/agentotp"
)

// JSONErrors wraps a listener so that the few errors net/http answers by
// itself, before any handler runs — 431 for oversized headers, 400 for a
// malformed request, 501 for an unknown transfer encoding — are the API's
// JSON envelope too instead of text/plain.
func JSONErrors(l net.Listener) net.Listener { return errorListener{l} }

type errorListener struct{ net.Listener }

func (l errorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &errorConn{Conn: c}, nil
}

type errorConn struct {
	net.Conn
}

// serverErrorHeaders is what net/http writes right after the status line of
// its own error answers (and nothing a handler writes looks like it: a
// handler's answer carries a Date header first).
var serverErrorHeaders = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

func (c *errorConn) Write(b []byte) (int, error) {
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 ")) {
		return c.Conn.Write(b)
	}
	i := bytes.Index(b, serverErrorHeaders)
	if i < 0 || bytes.IndexByte(b[:i], '\n') >= 0 {
		return c.Conn.Write(b)
	}
	status, err := strconv.Atoi(string(b[len("HTTP/1.1 "):min(i, len("HTTP/1.1 ")+3)]))
	if err != nil {
		return c.Conn.Write(b)
	}
	code, msg := agentotp.CodeValidation, "malformed HTTP request"
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		code, msg = agentotp.CodeTooLarge, "request headers are too large"
	case http.StatusNotImplemented:
		msg = "unsupported transfer encoding"
	}
	body, _ := json.Marshal(envelope{Error: &errorBody{Code: code, Message: msg}})
	out := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
