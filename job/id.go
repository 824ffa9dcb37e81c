package job

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxIDBytes is the longest job id accepted.
const MaxIDBytes = 128

// ValidID checks that id can be a job id: 1 to MaxIDBytes characters from
// A-Z, a-z, 0-9, '_', '-', '.' and ':', starting with a letter or digit,
// not ending with '.', with no "..". The API's ids (UUIDs) fit; so do ids such as
// "batch-7:item.12". An id becomes part of Redis keys and of the output
// object's key (OutputKey), so it can hold no '/', no space and nothing a
// path or a shell would read specially. The error wraps ErrInvalid and
// names the field "id".
func ValidID(id string) error {
	switch {
	case id == "":
		return fieldErr("id", "is empty")
	case len(id) > MaxIDBytes:
		return fieldErr("id", "%s is %d bytes, at most %d allowed", shortQuote(id), len(id), MaxIDBytes)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' && c != ':' {
			what := fmt.Sprintf("%q", c)
			if c >= utf8.RuneSelf {
				what = "a non-ASCII byte"
			}
			return fieldErr("id", "%s has %s at byte %d; a job id is 1 to %d of A-Z, a-z, 0-9, '_', '-', '.', ':'", shortQuote(id), what, i, MaxIDBytes)
		}
	}
	switch {
	case !isAlnum(id[0]):
		return fieldErr("id", "%s must start with a letter or digit", shortQuote(id))
	case strings.Contains(id, ".."):
		return fieldErr("id", "%s contains \"..\"", shortQuote(id))
	case id[len(id)-1] == '.':
		return fieldErr("id", "%s ends with '.'", shortQuote(id))
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// shortQuote quotes s for a message, cut to 64 bytes.
func shortQuote(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q...", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

// OutputKey is the object key of job id's image under prefix (the outputs
// URL's key, e.g. "outputs/"): prefix + id + ".png". It is the only place
// that key is made. An id that ValidID refuses yields its error, so no id
// can name an object outside prefix: a valid id holds no '/' and no "..".
func OutputKey(prefix, id string) (string, error) {
	if err := ValidID(id); err != nil {
		return "", err
	}
	return prefix + id + "." + FormatPNG, nil
}

// ImageKey is the object key of image k (0-based) of job id under prefix:
// OutputKey for the first, prefix + id + "/" + k + ".png" for the others.
// A job id holds no '/', so no job's first image can have another job's
// key; an id ValidID refuses, or a k outside 0..MaxN-1, yields an error.
func ImageKey(prefix, id string, k int) (string, error) {
	if k == 0 {
		return OutputKey(prefix, id)
	}
	if err := ValidID(id); err != nil {
		return "", err
	}
	if k < 0 || k >= MaxN {
		return "", fieldErr("k", "image index %d is outside 0..%d", k, MaxN-1)
	}
	return prefix + id + "/" + strconv.Itoa(k) + "." + FormatPNG, nil
}
