package cuda

import (
	"reflect"
	"testing"
)

func TestPlanChunks(t *testing.T) {
	tests := []struct {
		name    string
		n, size int64
		want    []chunk
		wantErr bool
	}{
		{name: "empty", n: 0, size: 10, want: []chunk{}},
		{name: "one short chunk", n: 7, size: 10, want: []chunk{{0, 0, 7}}},
		{name: "exact multiple", n: 30, size: 10, want: []chunk{{0, 0, 10}, {1, 10, 10}, {2, 20, 10}}},
		{name: "ragged tail", n: 45, size: 10, want: []chunk{{0, 0, 10}, {1, 10, 10}, {2, 20, 10}, {3, 30, 10}, {4, 40, 5}}},
		{name: "negative size", n: 10, size: -1, wantErr: true},
		{name: "zero size", n: 10, size: 0, wantErr: true},
		{name: "negative length", n: -1, size: 4, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := planChunks(tt.n, tt.size)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestPlanChunksCovers checks on sizes a table can't list that the chunks
// tile [0, n) in order.
func TestPlanChunksCovers(t *testing.T) {
	for _, n := range []int64{1, 4095, 4096, 8<<20 + 3, 4 << 30} {
		plan, err := planChunks(n, 8<<20)
		if err != nil {
			t.Fatal(err)
		}
		var off int64
		for i, c := range plan {
			if c.Index != i || c.Off != off || c.Len <= 0 || c.Len > 8<<20 {
				t.Fatalf("n=%d: chunk %d = %+v at offset %d", n, i, c, off)
			}
			off += c.Len
		}
		if off != n {
			t.Fatalf("n=%d: chunks cover %d bytes", n, off)
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
