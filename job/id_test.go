package job

import (
	"errors"
	"path"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestValidID(t *testing.T) {
	tests := []struct {
		name, id string
		ok       bool
	}{
		{"uuid", uuid.NewString(), true},
		{"word", "raw-job-1", true},
		{"punctuation", "batch_7:item.12", true},
		{"upper case", "JOB-A", true},
		{"longest", strings.Repeat("a", MaxIDBytes), true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", MaxIDBytes+1), false},
		{"path traversal", "../../etc/x", false},
		{"slash", "a/b", false},
		{"space and non-ascii", "sp ace/ü", false},
		{"dot dot inside", "a..b", false},
		{"trailing dot", "a.", false},
		{"leading dot", ".hidden", false},
		{"leading dash", "-rf", false},
		{"newline", "a\nb", false},
		{"nul", "a\x00", false},
		{"backslash", `a\b`, false},
		{"percent", "a%2fb", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidID(tt.id)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
			}
			if err == nil {
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "id" || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not a FieldError on \"id\" wrapping ErrInvalid", err)
			}
		})
	}
}

// FuzzOutputKey: whatever the id, the output key is either refused or an
// object directly under the prefix, even read as a file path.
func FuzzOutputKey(f *testing.F) {
	for _, s := range []string{uuid.NewString(), "../../etc/x", "sp ace/ü", "a..b", "a/../../b", ".", "..", "x.png/..", strings.Repeat("a", 200)} {
		f.Add(s)
	}
	const prefix = "outputs/"
	f.Fuzz(func(t *testing.T, id string) {
		key, err := OutputKey(prefix, id)
		if err != nil {
			if ValidID(id) == nil {
				t.Fatalf("OutputKey refused valid id %q: %v", id, err)
			}
			return
		}
		name, ok := strings.CutPrefix(key, prefix)
		if !ok || name == "" || strings.Contains(name, "/") || strings.Contains(name, "..") || strings.ContainsAny(name, "\\ \x00") {
			t.Fatalf("OutputKey(%q) = %q: not a plain name under %s", id, key, prefix)
		}
		if clean := path.Clean("/" + key); clean != "/"+key || path.Dir(clean) != "/outputs" {
			t.Fatalf("OutputKey(%q) = %q, which a path join moves to %q", id, key, clean)
		}
		if key != prefix+id+".png" {
			t.Fatalf("OutputKey(%q) = %q, want %q", id, key, prefix+id+".png")
		}
	})
}

// A Go producer cannot enqueue a job whose id would reach a storage key
// unchecked.
func TestNewTaskRejectsBadID(t *testing.T) {
	for _, id := range []string{"", "../../etc/x", "sp ace/ü"} {
		_, _, err := NewTask(id, valid(), DefaultPool)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "id" {
			t.Errorf("NewTask(%q): %v, want a FieldError on id", id, err)
		}
	}
	if _, _, err := NewTask("ok-1", valid(), DefaultPool); err != nil {
		t.Fatal(err)
	}
}

// ParseImageKey takes back exactly the keys ImageKey makes, and nothing
// else under the prefix: uploads, other files, malformed indexes.
func TestParseImageKey(t *testing.T) {
	for _, c := range []struct {
		key string
		id  string
		k   int
		ok  bool
	}{
		{"outputs/j-1.png", "j-1", 0, true},
		{"outputs/j-1/1.png", "j-1", 1, true},
		{"outputs/batch-7:item.12/15.png", "batch-7:item.12", 15, true},
		{"outputs/j-1/0.png", "", 0, false},
		{"outputs/j-1/01.png", "", 0, false},
		{"outputs/j-1/16.png", "", 0, false},
		{"outputs/j-1/-1.png", "", 0, false},
		{"outputs/j-1/x/1.png", "", 0, false},
		{"outputs/j-1.jpg", "", 0, false},
		{"outputs/.png", "", 0, false},
		{"outputs/uploads/sha256-0123abcd", "", 0, false},
		{"other/j-1.png", "", 0, false},
	} {
		id, k, ok := ParseImageKey("outputs/", c.key)
		if id != c.id || k != c.k || ok != c.ok {
			t.Errorf("ParseImageKey(%q) = %q, %d, %v; want %q, %d, %v", c.key, id, k, ok, c.id, c.k, c.ok)
		}
		if ok {
			if back, err := ImageKey("outputs/", id, k); err != nil || back != c.key {
				t.Errorf("ImageKey(%q, %d) = %q, %v", id, k, back, err)
			}
		}
	}
}
