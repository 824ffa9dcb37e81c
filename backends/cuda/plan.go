package cuda

import "fmt"

// chunk is one piece of a staged upload: bytes [Off, Off+Len) of the
// source go through a staging buffer to the same offset of the device
// allocation.
type chunk struct {
	Index int
	Off   int64
	Len   int64
}

// planChunks splits n bytes into chunks of size bytes, the last one
// shorter; the staging workers take them in order. n = 0 gives no
// chunks.
func planChunks(n, size int64) ([]chunk, error) {
	switch {
	case n < 0:
		return nil, fmt.Errorf("cuda: upload of %d bytes", n)
	case size <= 0:
		return nil, fmt.Errorf("cuda: staging chunk size %d must be positive", size)
	}
	out := make([]chunk, 0, (n+size-1)/size)
	for off, i := int64(0), 0; off < n; off, i = off+size, i+1 {
		out = append(out, chunk{Index: i, Off: off, Len: min(size, n-off)})
	}
	return out, nil
}

// pageRange widens [off, off+n) of a mapping of length total that starts
// at address base to whole pages of size page, clipped to the mapping,
// and returns the widened range as offsets into the mapping: what
// cuMemHostRegister is given, so registration covers whole pages without
// reaching outside memory the caller holds.
func pageRange(base, off, n, total, page int64) (lo, hi int64) {
	lo = max((base+off)/page*page-base, 0)
	hi = min((base+off+n+page-1)/page*page-base, total)
	return lo, hi
}
