package worker

import (
	"testing"
	"time"
)

func TestRetryDelayDoublesWithJitterAndCap(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		base     time.Duration
		max      time.Duration
		min, top time.Duration
	}{
		{"first retry", 1, 2 * time.Second, 5 * time.Minute, 1500 * time.Millisecond, 2500 * time.Millisecond},
		{"third retry", 3, 2 * time.Second, 5 * time.Minute, 6 * time.Second, 10 * time.Second},
		{"capped", 30, 2 * time.Second, 5 * time.Minute, 225 * time.Second, 375 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 200 {
				d := retryDelay(tt.n, tt.base, tt.max)
				if d < tt.min || d > tt.top {
					t.Fatalf("retryDelay(%d) = %v, want within [%v, %v]", tt.n, d, tt.min, tt.top)
				}
			}
		})
	}
}
