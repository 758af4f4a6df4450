package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/agentotp/agentotp"
)

// MaxBodyBytes bounds every request body (413 above it).
const MaxBodyBytes = 1 << 20

type envelope struct {
	Success bool       `json:"success"`
	Data    any        `json:"data,omitempty"`
	Meta    any        `json:"meta,omitempty"`
	Error   *errorBody `json:"error,omitempty"`
}

type errorBody struct {
	Code    agentotp.Code     `json:"code"`
	Message string            `json:"message"`
	Details map[string]string `json:"details,omitempty"`
}

type pageMeta struct {
	Page       int `json:"page"`
	Limit      int `json:"limit"`
	Total      int `json:"total"`
	TotalPages int `json:"totalPages"`
}

func newPageMeta(p agentotp.Page, total int) pageMeta {
	return pageMeta{Page: p.Page, Limit: p.Limit, Total: total, TotalPages: (total + p.Limit - 1) / p.Limit}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeData(w http.ResponseWriter, status int, data any) {
	writeJSON(w, status, envelope{Success: true, Data: data})
}

func writeList(w http.ResponseWriter, data, meta any) {
	writeJSON(w, http.StatusOK, envelope{Success: true, Data: data, Meta: meta})
}

var statusByCode = map[agentotp.Code]int{
	agentotp.CodeValidation:   http.StatusBadRequest,
	agentotp.CodeUnauthorized: http.StatusUnauthorized,
	agentotp.CodeForbidden:    http.StatusForbidden,
	agentotp.CodeNotFound:     http.StatusNotFound,
	agentotp.CodeConflict:     http.StatusConflict,
	agentotp.CodeTooLarge:     http.StatusRequestEntityTooLarge,
	agentotp.CodeRateLimited:  http.StatusTooManyRequests,
	agentotp.CodeInternal:     http.StatusInternalServerError,
	agentotp.CodeUnavailable:  http.StatusServiceUnavailable,
}

// writeError maps err to the v0.1.1 error envelope. Errors that are not an
// *agentotp.Error are internal: logged by the caller, shown as a generic 500.
func writeError(w http.ResponseWriter, err error) {
	var e *agentotp.Error
	if !errors.As(err, &e) || e.Code == agentotp.CodeInternal || e.Message == "" {
		e = &agentotp.Error{Code: agentotp.CodeInternal, Message: "an unexpected error occurred"}
	}
	status, ok := statusByCode[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="agentotp"`)
	}
	if status == http.StatusTooManyRequests && w.Header().Get("Retry-After") == "" {
		// Limits the service enforces (e.g. the pending-approval cap)
		// clear as humans decide; a minute is a sensible pause.
		w.Header().Set("Retry-After", "60")
	}
	writeJSON(w, status, envelope{Error: &errorBody{Code: e.Code, Message: e.Message, Details: e.Details}})
}

// decode reads a JSON object body into v: at most MaxBodyBytes, valid UTF-8,
// no unknown fields, nothing after the object.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return &agentotp.Error{Code: agentotp.CodeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes)}
	}
	if err != nil {
		return agentotp.Errorf(agentotp.CodeValidation, "could not read request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	if !utf8.Valid(body) {
		return agentotp.Errorf(agentotp.CodeValidation, "request body is not valid UTF-8")
	}
	if err := checkKeys(body, reflect.TypeOf(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return agentotp.Errorf(agentotp.CodeValidation, "malformed JSON in request body: data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return agentotp.Errorf(agentotp.CodeValidation, "malformed JSON in request body: data after the object")
	}
	return nil
}

func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
		return agentotp.Errorf(agentotp.CodeValidation, "malformed JSON in request body")
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return agentotp.Errorf(agentotp.CodeValidation, "request body must be a JSON object")
		}
		return agentotp.ValidationError(field, "must be "+jsonKind(typ.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json reports unknown fields only as text; the field
		// name is the quoted part.
		name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		return agentotp.ValidationError(name, "is not a known field")
	}
	return agentotp.Errorf(agentotp.CodeValidation, "malformed JSON in request body")
}

func jsonKind(k string) string {
	switch k {
	case "int", "int64", "int32":
		return "an integer"
	case "float64":
		return "a number"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	case "ptr":
		return "of the documented type"
	}
	return "of the documented type"
}
