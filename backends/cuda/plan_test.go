package cuda

import (
	"reflect"
	"testing"
)

func TestPlanChunks(t *testing.T) {
	tests := []struct {
		name          string
		n, size       int64
		bufs, streams int
		want          []chunk
		wantErr       bool
	}{
		{name: "empty", n: 0, size: 10, bufs: 2, streams: 2, want: []chunk{}},
		{name: "one short chunk", n: 7, size: 10, bufs: 2, streams: 2, want: []chunk{{0, 0, 7, 0, 0}}},
		{name: "exact multiple", n: 30, size: 10, bufs: 2, streams: 3, want: []chunk{
			{0, 0, 10, 0, 0}, {1, 10, 10, 1, 1}, {2, 20, 10, 0, 2},
		}},
		{name: "ragged tail, buffers wrap", n: 45, size: 10, bufs: 3, streams: 2, want: []chunk{
			{0, 0, 10, 0, 0}, {1, 10, 10, 1, 1}, {2, 20, 10, 2, 0}, {3, 30, 10, 0, 1}, {4, 40, 5, 1, 0},
		}},
		{name: "single buffer and stream", n: 25, size: 10, bufs: 1, streams: 1, want: []chunk{
			{0, 0, 10, 0, 0}, {1, 10, 10, 0, 0}, {2, 20, 5, 0, 0},
		}},
		{name: "negative size", n: 10, size: -1, bufs: 1, streams: 1, wantErr: true},
		{name: "zero size", n: 10, size: 0, bufs: 1, streams: 1, wantErr: true},
		{name: "no buffers", n: 10, size: 4, bufs: 0, streams: 1, wantErr: true},
		{name: "no streams", n: 10, size: 4, bufs: 1, streams: 0, wantErr: true},
		{name: "negative length", n: -1, size: 4, bufs: 1, streams: 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := planChunks(tt.n, tt.size, tt.bufs, tt.streams)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestPlanChunksCovers checks the invariants on sizes a table can't list:
// chunks tile [0, n) in order and no buffer repeats within bufs chunks.
func TestPlanChunksCovers(t *testing.T) {
	for _, n := range []int64{1, 4095, 4096, 64<<20 + 3, 4 << 30} {
		for _, bufs := range []int{1, 2, 4, 7} {
			plan, err := planChunks(n, 64<<20, bufs, 3)
			if err != nil {
				t.Fatal(err)
			}
			var off int64
			for i, c := range plan {
				if c.Index != i || c.Off != off || c.Len <= 0 || c.Len > 64<<20 {
					t.Fatalf("n=%d bufs=%d: chunk %d = %+v at offset %d", n, bufs, i, c, off)
				}
				for j := max(0, i-bufs+1); j < i; j++ {
					if plan[j].Buf == c.Buf {
						t.Fatalf("n=%d bufs=%d: buffer %d reused by chunks %d and %d", n, bufs, c.Buf, j, i)
					}
				}
				off += c.Len
			}
			if off != n {
				t.Fatalf("n=%d bufs=%d: chunks cover %d bytes", n, bufs, off)
			}
		}
	}
}

func TestSplitSpans(t *testing.T) {
	tests := []struct {
		name  string
		n     int64
		parts int
		align int64
		want  []span
	}{
		{name: "empty", n: 0, parts: 4, align: 4096, want: nil},
		{name: "one part", n: 10000, parts: 1, align: 4096, want: []span{{0, 10000}}},
		{name: "fewer pages than parts", n: 5000, parts: 16, align: 4096, want: []span{{0, 4096}, {4096, 904}}},
		{name: "even pages", n: 4 * 4096, parts: 2, align: 4096, want: []span{{0, 8192}, {8192, 8192}}},
		{name: "uneven pages", n: 3 * 4096, parts: 2, align: 4096, want: []span{{0, 4096}, {4096, 8192}}},
		{name: "ragged end", n: 3*4096 + 1, parts: 4, align: 4096, want: []span{{0, 4096}, {4096, 4096}, {8192, 4096}, {12288, 1}}},
		{name: "zero parts counts as one", n: 100, parts: 0, align: 4096, want: []span{{0, 100}}},
		{name: "no alignment", n: 10, parts: 3, align: 0, want: []span{{0, 3}, {3, 3}, {6, 4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := splitSpans(tt.n, tt.parts, tt.align)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSplitSpansCovers(t *testing.T) {
	for _, n := range []int64{1, 4095, 4097, 64 << 20, 64<<20 - 1} {
		for _, parts := range []int{1, 3, 8, 16, 33} {
			spans := splitSpans(n, parts, 4096)
			if len(spans) > parts {
				t.Fatalf("n=%d parts=%d: %d spans", n, parts, len(spans))
			}
			var off int64
			for i, s := range spans {
				if s.Off != off || s.Len <= 0 || (i < len(spans)-1 && (s.Off+s.Len)%4096 != 0) {
					t.Fatalf("n=%d parts=%d: span %d = %+v", n, parts, i, s)
				}
				off += s.Len
			}
			if off != n {
				t.Fatalf("n=%d parts=%d: spans cover %d", n, parts, off)
			}
		}
	}
}

func TestPageRange(t *testing.T) {
	tests := []struct {
		name                string
		base, off, n, total int64
		wantLo, wantHi      int64
	}{
		{name: "whole aligned mapping", base: 1 << 20, off: 0, n: 10000, total: 10000, wantLo: 0, wantHi: 10000},
		{name: "inner range widened to pages", base: 1 << 20, off: 5000, n: 100, total: 20000, wantLo: 4096, wantHi: 8192},
		{name: "clipped at the end", base: 1 << 20, off: 9000, n: 1000, total: 10000, wantLo: 8192, wantHi: 10000},
		{name: "unaligned base clipped at the start", base: 1<<20 + 100, off: 10, n: 10, total: 5000, wantLo: 0, wantHi: 3996},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo, hi := pageRange(tt.base, tt.off, tt.n, tt.total, 4096)
			if lo != tt.wantLo || hi != tt.wantHi {
				t.Errorf("got [%d, %d), want [%d, %d)", lo, hi, tt.wantLo, tt.wantHi)
			}
		})
	}
}

func TestFill(t *testing.T) {
	src := make([]byte, 3<<20+17)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for _, threads := range []int{1, 2, 16} {
		dst := make([]byte, len(src))
		fill(dst, src, threads)
		if !reflect.DeepEqual(dst, src) {
			t.Errorf("threads=%d: copy differs", threads)
		}
	}
}
