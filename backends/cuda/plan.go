package cuda

import "fmt"

// chunk is one piece of a staged upload: bytes [Off, Off+Len) of the
// source go through staging buffer Buf to the same offset of the device
// allocation, copied on stream Stream.
type chunk struct {
	Index  int
	Off    int64
	Len    int64
	Buf    int
	Stream int
}

// planChunks splits n bytes into chunks of size bytes (the last one
// shorter), assigning staging buffers and streams round-robin: chunk i
// uses buffer i mod bufs and stream i mod streams, so a buffer is reused
// only after bufs-1 other chunks, which is what lets the host fill one
// buffer while the device copies the others. n = 0 gives no chunks.
func planChunks(n, size int64, bufs, streams int) ([]chunk, error) {
	switch {
	case n < 0:
		return nil, fmt.Errorf("cuda: upload of %d bytes", n)
	case size <= 0:
		return nil, fmt.Errorf("cuda: staging chunk size %d must be positive", size)
	case bufs < 1 || streams < 1:
		return nil, fmt.Errorf("cuda: %d staging buffers and %d streams: need at least one of each", bufs, streams)
	}
	out := make([]chunk, 0, (n+size-1)/size)
	for off, i := int64(0), 0; off < n; off, i = off+size, i+1 {
		out = append(out, chunk{Index: i, Off: off, Len: min(size, n-off), Buf: i % bufs, Stream: i % streams})
	}
	return out, nil
}

// span is a byte range [Off, Off+Len) that one host goroutine copies.
type span struct{ Off, Len int64 }

// splitSpans splits n bytes into at most parts spans of nearly equal
// length whose inner boundaries are multiples of align (a page, so no
// two goroutines fault the same page in); it never returns an empty
// span, so small n gives fewer spans. align < 1 counts as 1.
func splitSpans(n int64, parts int, align int64) []span {
	if n <= 0 {
		return nil
	}
	parts = max(parts, 1)
	align = max(align, 1)
	units := (n + align - 1) / align
	if int64(parts) > units {
		parts = int(units)
	}
	out := make([]span, 0, parts)
	var off int64
	for k := range parts {
		// Units [k·units/parts, (k+1)·units/parts), clipped to n.
		end := min((int64(k)+1)*units/int64(parts)*align, n)
		if end > off {
			out = append(out, span{Off: off, Len: end - off})
		}
		off = end
	}
	return out
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
