package job

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// checkRawJSON catches, in the bytes of a request or payload before
// encoding/json decodes them, what that decode would hide: a body that is
// not a JSON object (encoding/json names the Go type it could not fill),
// and invalid UTF-8 inside a string, which it silently replaces with
// U+FFFD, so that Validate, seeing only the replaced text, would accept a
// prompt the client never sent. what names the value in messages
// ("request", "payload"). Other syntax errors are left to the decode.
func checkRawJSON(what string, b []byte) error {
	i := skipSpace(b, 0)
	if i < len(b) && b[i] != '{' {
		if kind := jsonKind(b[i]); kind != "" {
			return fmt.Errorf("%w: the %s must be a JSON object, got %s", ErrInvalid, what, kind)
		}
	}
	if utf8.Valid(b) {
		return nil
	}
	bad := invalidUTF8At(b)
	field, isKey := fieldAt(b, bad)
	switch {
	case field == "":
		return fmt.Errorf("%w: the %s is not valid UTF-8 (byte 0x%02x at offset %d)", ErrInvalid, what, b[bad], bad)
	case isKey:
		return fieldErr(strings.ToValidUTF8(field, "\uFFFD"), "field name is not valid UTF-8 (byte 0x%02x at offset %d of the %s)", b[bad], bad, what)
	}
	return fieldErr(field, "is not valid UTF-8 (byte 0x%02x at offset %d of the %s)", b[bad], bad, what)
}

// jsonKind names the JSON value that starts with c, or "" when none does.
func jsonKind(c byte) string {
	switch {
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || c >= '0' && c <= '9':
		return "a number"
	}
	return ""
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// invalidUTF8At returns the offset of the first byte of b that does not
// start a valid UTF-8 sequence; b must not be valid UTF-8.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// fieldAt returns the object key that owns offset off of the JSON text b:
// the key itself when off is inside a key (isKey), else the last key seen
// before the string that holds off. It scans string literals only (JSON's
// structure is ASCII, so a byte ≥ 0x80 can only be inside one); it returns
// "" when off is not inside a string or no key precedes it.
func fieldAt(b []byte, off int) (field string, isKey bool) {
	lastKey := ""
	for i := 0; i < len(b); i++ {
		if b[i] != '"' {
			continue
		}
		start := i + 1
		end := start
		for end < len(b) && b[end] != '"' {
			if b[end] == '\\' {
				end++
			}
			end++
		}
		if end > len(b) {
			end = len(b)
		}
		key := skipSpace(b, end+1) < len(b) && b[skipSpace(b, end+1)] == ':'
		if off >= start && off < end {
			if key {
				return string(b[start:end]), true
			}
			return lastKey, false
		}
		if key {
			lastKey = string(b[start:end])
		}
		i = end
	}
	return "", false
}
