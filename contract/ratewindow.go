package contract

import (
	"math"
	"time"
)

// MaxRateWindow is the longest window of a cluster-wide rate limit.
const MaxRateWindow = time.Hour

// RateWindow is how a rate limit of perSecond with burst is kept across
// verifiers: in fixed windows of the returned length (starting at multiples
// of it since the Unix epoch), all verifiers together admit at most limit
// requests. The window is the time a burst takes to refill (at least a
// second), so limit/window never exceeds perSecond (beyond rounding to one
// request) and in any interval of t seconds at most
// limit × (⌈t/window⌉ + 1) requests are admitted. The plugin and the
// sidecar compute it alike.
func RateWindow(perSecond float64, burst int) (window time.Duration, limit int64) {
	if !(perSecond > 0) {
		return 0, 0
	}
	b := max(1, float64(burst))
	secs := min(max(1, math.Ceil(b/perSecond)), MaxRateWindow.Seconds())
	return time.Duration(secs) * time.Second, int64(max(1, b, math.Floor(perSecond*secs)))
}
