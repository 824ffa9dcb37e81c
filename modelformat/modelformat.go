// Package modelformat reads and writes the model file formats genfleet
// handles: safetensors (parse, summarise and write) and GGUF (header
// inspection only).
//
// Parsers take an io.ReaderAt and the file size so they work the same on an
// *os.File, a bytes.Reader over a read-only mapping, or a section of a
// larger blob. They treat every byte as hostile: any input yields either a
// result or an error, never a panic, and allocations are bounded by the
// size of the input, not by counts the input claims.
//
// Every error caused by the bytes of the file wraps ErrMalformed and names
// the problem; I/O errors from the reader are wrapped as they are.
package modelformat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Format names returned by Detect.
const (
	FormatSafetensors = "safetensors"
	FormatGGUF        = "gguf"
)

var (
	// ErrMalformed means the file's bytes break the format's rules; the
	// error wrapping it says which rule.
	ErrMalformed = errors.New("malformed model file")
	// ErrUnknownFormat means Detect recognised neither format.
	ErrUnknownFormat = errors.New("unknown model file format")
	// ErrTruncated means the file is shorter than its own header says: it
	// was cut off (an interrupted copy or download). It wraps ErrMalformed.
	ErrTruncated error = truncatedError{}
)

type truncatedError struct{}

func (truncatedError) Error() string { return "truncated model file" }
func (truncatedError) Unwrap() error { return ErrMalformed }

// truncated returns an error wrapping ErrTruncated (and so ErrMalformed)
// that reads "<format>: file is truncated: <reason>".
func truncated(format, reason string, args ...any) error {
	return fmt.Errorf("%s: file is truncated: %s: %w", format, fmt.Sprintf(reason, args...), ErrTruncated)
}

// malformed returns an error wrapping ErrMalformed that reads
// "<format>: <reason>: malformed model file".
func malformed(format, reason string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", format, fmt.Sprintf(reason, args...), ErrMalformed)
}

// Detect reports the format of the file of the given size read through r:
// FormatGGUF when it starts with the GGUF magic, FormatSafetensors when it
// starts with a plausible safetensors header length followed by '{' (also
// when that length runs past the end of the file: a truncated safetensors
// file, which ParseSafetensors then reports as such).
// Detect only looks at the first bytes; parse the file to validate it.
// Otherwise it returns an error wrapping ErrUnknownFormat, or the reader's
// error.
func Detect(r io.ReaderAt, size int64) (string, error) {
	if size < 4 {
		return "", fmt.Errorf("%w: file is %d bytes, too short to hold any model", ErrUnknownFormat, size)
	}
	n := int64(9)
	if size < n {
		n = size
	}
	buf := make([]byte, n)
	if err := readFull(r, buf, 0); err != nil {
		return "", fmt.Errorf("detecting model format: %w", err)
	}
	if string(buf[:4]) == ggufMagic {
		return FormatGGUF, nil
	}
	if n == 9 {
		hlen := binary.LittleEndian.Uint64(buf)
		if hlen > 0 && hlen <= MaxSafetensorsHeader && buf[8] == '{' {
			return FormatSafetensors, nil
		}
	}
	return "", fmt.Errorf("%w: first bytes %q are neither a GGUF magic nor a safetensors header", ErrUnknownFormat, buf)
}

// readFull reads exactly len(buf) bytes at off. A short read is reported
// as io.ErrUnexpectedEOF: the caller checked the size, so the reader
// shrank or lied about it.
func readFull(r io.ReaderAt, buf []byte, off int64) error {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading %d bytes at offset %d: %w", len(buf), off, err)
}

// humanBytes formats n as "1.5 MiB (1572864 bytes)" style text.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// truncate shortens s to at most n bytes of text for display, marking the
// cut, and quotes it.
func truncate(s string, n int) string {
	if len(s) <= n {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:n], len(s))
}
