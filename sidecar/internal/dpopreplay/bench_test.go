package dpopreplay

import (
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/sidecar/internal/clientkey"
)

// BenchmarkAddParallel is the replay cache as the sidecar uses it, a Seen
// and an Add per request, from every core at once: fresh proofs of a few
// lineages from one client, each kept 10 ms of a clock that advances 1 µs
// a proof, so that about 10,000 are held and as many expire as are added.
func BenchmarkAddParallel(b *testing.B) {
	c := New(1 << 20)
	client := clientkey.Of(netip.MustParseAddr("10.0.0.1"))
	lineages := []string{"lineage-0", "lineage-1", "lineage-2", "lineage-3"}
	var next atomic.Int64
	start := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			now := start.Add(time.Duration(n) * time.Microsecond)
			key := "jkt\x00" + strconv.FormatInt(n, 36)
			if c.Seen(key, now) {
				b.Fatal("a fresh proof seen")
			}
			if err := c.Add(key, lineages[n%4], client, now.Add(10*time.Millisecond), now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
