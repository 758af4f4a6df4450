package agentotp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// HiddenRune reports whether r, in text an agent supplied, would be
// invisible to the person approving it or would change how the text around
// it reads: C0 and C1 controls other than tab, zero-width characters, bidi
// marks, embeddings, overrides and isolates, invisible operators, line and
// paragraph separators, the BOM, the soft hyphen and a few other invisible
// format characters, and the replacement rune that stands for invalid
// UTF-8. Every approval channel shows or strips these the same way, so an
// approver sees what will run.
func HiddenRune(r rune) bool {
	switch {
	case r == '\t':
		return false
	case r < 0x20, r >= 0x7f && r < 0xa0:
		return true
	case r >= 0x200b && r <= 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2060 && r <= 0x2069:
		return true
	case r == 0x2028, r == 0x2029, r == 0xfeff, r == 0x00ad, r == 0x061c, r == 0x180e, r >= 0xfff9 && r <= 0xfffb:
		return true
	case r == utf8.RuneError:
		return true
	}
	return false
}

// DisplayJSON indents m for a person to read (nil reads as {}). Hidden
// runes inside strings are written as \u escapes: still the same JSON, so
// it parses back to the same value, but a hidden override in a recipient
// shows. HTML is not escaped; the caller escapes for where it shows it.
func DisplayJSON(m map[string]any) (string, error) {
	if m == nil {
		m = map[string]any{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return "", err
	}
	var b strings.Builder
	for _, r := range strings.TrimRight(buf.String(), "\n") {
		if r != '\n' && HiddenRune(r) {
			fmt.Fprintf(&b, `\u%04x`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String(), nil
}
