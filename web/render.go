package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/agentotp/agentotp"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// pages holds one template set per page, each the layout plus the page.
type pages struct {
	byName map[string]*template.Template
}

func parsePages(a *assets) *pages {
	funcs := template.FuncMap{
		"asset": a.path,
		"text":  textPieces,
	}
	layout := template.Must(template.New("layout").Funcs(funcs).ParseFS(templateFiles, "templates/layout.html"))
	names, err := fs.Glob(templateFiles, "templates/*.html")
	if err != nil {
		panic(err)
	}
	p := &pages{byName: map[string]*template.Template{}}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		p.byName[name] = template.Must(template.Must(layout.Clone()).ParseFS(templateFiles, n))
	}
	return p
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// render writes a page whole: a template that fails midway sends a 500,
// never half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	t := c.pages.byName[name]
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	if err := t.ExecuteTemplate(buf, "layout", data); err != nil {
		c.log.Error("render console page", "page", name, "request_id", agentotp.RequestID(r.Context()), "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// assets serves the embedded stylesheet, script and icon. Their URLs carry
// a digest of the content, so browsers may cache them for long.
type assets struct {
	fs     fs.FS
	digest map[string]string
	files  http.Handler
}

func loadAssets() *assets {
	sub, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err)
	}
	a := &assets{fs: sub, digest: map[string]string{}, files: http.StripPrefix("/ui/static/", http.FileServerFS(sub))}
	err = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(sub, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		a.digest[p] = hex.EncodeToString(sum[:6])
		return nil
	})
	if err != nil {
		panic(err)
	}
	return a
}

// path is the URL of an asset, for templates.
func (a *assets) path(name string) (string, error) {
	d, ok := a.digest[name]
	if !ok {
		return "", fmt.Errorf("no asset %q", name)
	}
	return "/ui/static/" + name + "?v=" + d, nil
}

func (a *assets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/") {
		http.NotFound(w, r) // no directory listings
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=86400")
	a.files.ServeHTTP(w, r)
}

// piece is a run of text: visible, or one invisible character shown by its
// code point.
type piece struct {
	Text   string
	Hidden bool
}

// textPieces splits text an agent supplied so that characters a reader
// cannot see — controls, zero-width characters, bidi overrides and
// isolates, the BOM, invalid UTF-8 — are shown as U+XXXX markers instead
// of silently reordering or hiding what the person approves.
func textPieces(s string) []piece {
	var (
		out   []piece
		start int
	)
	for i, r := range s {
		if !agentotp.HiddenRune(r) {
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		if i > start {
			out = append(out, piece{Text: s[start:i]})
		}
		out = append(out, piece{Text: fmt.Sprintf("U+%04X", r), Hidden: true})
		start = i + size
	}
	if start < len(s) {
		out = append(out, piece{Text: s[start:]})
	}
	return out
}

// nonASCII is the warning shown under an action or resource that holds
// characters beyond printable ASCII, where look-alike letters hide: the
// value spelled in ASCII escapes. "" when there are none.
func nonASCII(s string) string {
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return strconv.QuoteToASCII(s)
		}
	}
	return ""
}

// prettyJSON indents an object for reading and for the scope editor, with
// hidden characters as \u escapes (agentotp.DisplayJSON): an unchanged
// editor parses back to the same value.
func prettyJSON(m map[string]any) string {
	out, err := agentotp.DisplayJSON(m)
	if err != nil {
		return "(cannot be shown)"
	}
	return out
}

// clip shortens text for a list cell; the request page shows it whole.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return strings.TrimRightFunc(string(r[:n-1]), unicode.IsSpace) + "…"
}

// until says how long until t, from now: "in 4m 59s", "expired".
func until(now, t time.Time) string {
	d := t.Sub(now)
	if d <= 0 {
		return "expired"
	}
	return "in " + span(d)
}

// ago says how long ago t was.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return span(d) + " ago"
}

func span(d time.Duration) string {
	d = d.Round(time.Second)
	h, m, s := int(d/time.Hour), int(d%time.Hour/time.Minute), int(d%time.Minute/time.Second)
	switch {
	case h >= 48:
		return fmt.Sprintf("%dd", h/24)
	case h > 0:
		return fmt.Sprintf("%dh %02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

// stamp is a time as shown: UTC, to the second.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// machine is a time for a datetime attribute.
func machine(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func asError(err error, target **agentotp.Error) bool { return errors.As(err, target) }

// sentence is an error's message as a sentence for a page.
func sentence(err error) string {
	var e *agentotp.Error
	if !asError(err, &e) || e.Message == "" {
		return "Something went wrong, so nothing changed."
	}
	msg := e.Message
	r, n := utf8.DecodeRuneInString(msg)
	msg = string(unicode.ToUpper(r)) + msg[n:]
	if !strings.HasSuffix(msg, ".") {
		msg += "."
	}
	return msg
}
