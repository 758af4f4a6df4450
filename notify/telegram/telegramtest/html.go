package telegramtest

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
)

// tags Telegram's HTML parse mode accepts.
var tags = map[string]bool{
	"b": true, "strong": true, "i": true, "em": true, "u": true, "ins": true,
	"s": true, "strike": true, "del": true, "span": true, "tg-spoiler": true,
	"a": true, "code": true, "pre": true, "blockquote": true, "tg-emoji": true,
}

// parseHTML checks text the way Telegram's HTML parse mode does (only the
// supported tags, balanced, every '<' and '&' part of a tag or an entity)
// and returns the visible text. Errors read like Telegram's.
func parseHTML(s string) (string, error) {
	var out strings.Builder
	var stack []string
	for i := 0; i < len(s); {
		switch c := s[i]; c {
		case '<':
			j := strings.IndexByte(s[i:], '>')
			if j < 0 {
				return "", fmt.Errorf("unclosed start tag at byte offset %d", i)
			}
			tag := s[i+1 : i+j]
			closing := strings.HasPrefix(tag, "/")
			f := strings.Fields(strings.TrimPrefix(tag, "/"))
			if len(f) == 0 {
				return "", fmt.Errorf("empty tag at byte offset %d", i)
			}
			name := strings.ToLower(f[0])
			if !tags[name] {
				return "", fmt.Errorf("unsupported start tag %q at byte offset %d", name, i)
			}
			if closing {
				if len(stack) == 0 || stack[len(stack)-1] != name {
					return "", fmt.Errorf("unmatched end tag at byte offset %d, found \"</%s>\"", i, name)
				}
				stack = stack[:len(stack)-1]
			} else {
				if name == "a" && !strings.Contains(tag, "href=") {
					return "", fmt.Errorf("tag \"a\" at byte offset %d has no href", i)
				}
				stack = append(stack, name)
			}
			i += j + 1
		case '&':
			j := strings.IndexByte(s[i:], ';')
			if j < 0 || j > 12 {
				return "", fmt.Errorf("can't find end of the entity starting at byte offset %d", i)
			}
			r, ok := entity(s[i+1 : i+j])
			if !ok {
				return "", fmt.Errorf("unsupported HTML entity %q at byte offset %d", s[i:i+j+1], i)
			}
			out.WriteRune(r)
			i += j + 1
		default:
			out.WriteByte(c)
			i++
		}
	}
	if len(stack) > 0 {
		return "", fmt.Errorf("can't find end tag corresponding to start tag %q", stack[len(stack)-1])
	}
	return out.String(), nil
}

func entity(e string) (rune, bool) {
	switch e {
	case "lt":
		return '<', true
	case "gt":
		return '>', true
	case "amp":
		return '&', true
	case "quot":
		return '"', true
	}
	if h, ok := strings.CutPrefix(e, "#x"); ok {
		n, err := strconv.ParseUint(h, 16, 32)
		return rune(n), err == nil
	}
	if d, ok := strings.CutPrefix(e, "#"); ok {
		n, err := strconv.ParseUint(d, 10, 32)
		return rune(n), err == nil
	}
	return 0, false
}

// Units counts UTF-16 code units, the unit of Telegram's length limits.
func Units(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}
