package modelformat

import "io"

// Header is a parsed model file header: *Safetensors or *GGUF. Both
// summarise themselves (what `genfleet models inspect` prints).
type Header interface {
	Summary(w io.Writer)
}

// ParseHeader detects the format of the file of size bytes read through r
// (Detect) and parses its header: it returns the format (FormatSafetensors
// or FormatGGUF) and the header. A file of neither format is an error
// wrapping ErrUnknownFormat; one that breaks its format's rules, an error
// wrapping ErrMalformed.
func ParseHeader(r io.ReaderAt, size int64) (string, Header, error) {
	format, err := Detect(r, size)
	if err != nil {
		return "", nil, err
	}
	if format == FormatGGUF {
		g, err := ParseGGUFHeader(r, size)
		if err != nil {
			return "", nil, err
		}
		return format, g, nil
	}
	s, err := ParseSafetensors(r, size)
	if err != nil {
		return "", nil, err
	}
	return format, s, nil
}
