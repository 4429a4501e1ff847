package contract

import (
	"math"
	"testing"
	"time"
)

func TestRateWindow(t *testing.T) {
	tests := []struct {
		rate   float64
		burst  int
		window time.Duration
		limit  int64
	}{
		{10, 10, time.Second, 10},
		{100, 10, time.Second, 100},
		{2, 10, 5 * time.Second, 10},
		{0.5, 1, 2 * time.Second, 1},
		{0.001, 0, 1000 * time.Second, 1},
		{0.0001, 1, time.Hour, 1}, // a window is at most an hour
		{1e6, 1e6, time.Second, 1e6},
		{0, 5, 0, 0},
		{math.NaN(), 5, 0, 0},
	}
	for _, tt := range tests {
		w, l := RateWindow(tt.rate, tt.burst)
		if w != tt.window || l != tt.limit {
			t.Errorf("RateWindow(%v, %d) = %s, %d; want %s, %d", tt.rate, tt.burst, w, l, tt.window, tt.limit)
		}
		// The long-run rate never exceeds the limit's by more than one
		// request a window.
		if w > 0 && float64(l-1)/w.Seconds() > tt.rate {
			t.Errorf("RateWindow(%v, %d): %d per %s is above the rate", tt.rate, tt.burst, l, w)
		}
	}
}
