package lineprefix

import (
	"bytes"
	"testing"
)

func TestWriterPrefixesCompleteLines(t *testing.T) {
	var out bytes.Buffer
	w := New(&out, "w1 | ")
	for _, s := range []string{"first line\nsec", "ond line\n", "", "third\nfourth\npartial"} {
		if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	want := "w1 | first line\nw1 | second line\nw1 | third\nw1 | fourth\n"
	if out.String() != want {
		t.Fatalf("wrote %q, want %q (the partial line held back)", out.String(), want)
	}
}
