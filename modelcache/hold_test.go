package modelcache

import "testing"

// A Hold keeps a model's blobs from eviction after the model is closed,
// until it is released: what an engine server that maps the files between
// jobs relies on.
func TestHoldOutlivesClose(t *testing.T) {
	e := newEnv(t)
	m, _ := e.push(t, "held", 100_000)
	root := t.TempDir()
	c := openCache(t, root, &testSource{Source: e.src})
	mod := acquire(t, c, m)
	release, err := mod.Hold()
	if err != nil {
		t.Fatal(err)
	}
	mod.Close()
	other := openCache(t, root, nil)
	if ok, err := other.TryEvict(m.Files[0].Digest); ok || err != nil {
		t.Fatalf("TryEvict while held = %v, %v; want false, nil", ok, err)
	}
	release()
	release() // idempotent
	if ok, err := other.TryEvict(m.Files[0].Digest); !ok || err != nil {
		t.Fatalf("TryEvict after release = %v, %v; want true, nil", ok, err)
	}
	// Holding a closed-and-evicted model fails, naming the blob.
	if _, err := mod.Hold(); err == nil {
		t.Error("Hold of an evicted blob succeeded")
	}
}
