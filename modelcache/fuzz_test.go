package modelcache

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseManifest feeds outside bytes to the manifest parser: it must not
// panic, and what it accepts must validate and survive a round trip.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"schema":1,"name":"m","format":"safetensors","files":[{"name":"m","url":"s3://models/m","size":3,"digest":"sha256:` + strings.Repeat("0", 64) + `"}]}`))
	f.Add([]byte(`{"schema":1,"format":"","files":[{"name":"x","url":"s3://b-b/k/x.gguf","size":0}]}`))
	f.Add([]byte(`{"schema":1,"files":[{"name":"x","url":"s3://b/../x","size":1}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted manifest does not validate: %v", err)
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseManifest(out)
		if err != nil || !reflect.DeepEqual(m.Files, m2.Files) || m.Name != m2.Name {
			t.Fatalf("round trip changed the manifest: %+v -> %+v (%v)", m, m2, err)
		}
	})
}

// FuzzValidName checks that an accepted name can never leave the manifests
// prefix.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"sdxl", "../x", "a/b", "A", "", "a..b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidName(name) != nil {
			return
		}
		r := &Registry{}
		if key := r.ManifestURL(name).Key; strings.Count(key, "/") != 1 || !strings.HasPrefix(key, "manifests/") {
			t.Fatalf("name %q gives manifest key %q", name, key)
		}
	})
}
