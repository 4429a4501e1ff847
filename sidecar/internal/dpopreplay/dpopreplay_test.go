package dpopreplay

import (
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/sidecar/internal/clientkey"
)

// The replay cache refuses a second use while a proof could pass, forgets
// it after, holds at most perLineage entries of one lineage and perClient
// of one client address (an IPv6 /64 is one), and when full refuses new
// proofs rather than forget live ones.
func TestReplayCache(t *testing.T) {
	c := New(64) // 2 per lineage, 8 per client
	now := time.Now()
	forget := now.Add(time.Minute)
	ip := func(s string) netip.Prefix { return clientkey.Of(netip.MustParseAddr(s)) }
	a := ip("10.0.0.1")
	if c.Add("a", "x", a, forget, now) != nil || c.Add("a", "y", ip("10.0.0.2"), forget, now) != ErrReplayed {
		t.Fatal("a second use was not refused")
	}
	if c.Add("b", "x", a, forget, now) != nil || c.Add("c", "x", ip("10.0.0.3"), forget, now) != ErrLineageQuota {
		t.Fatal("one lineage took more than its quota")
	}
	for i := range 6 {
		if err := c.Add("a"+strconv.Itoa(i), "a"+strconv.Itoa(i), a, forget, now); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	if c.Add("a-more", "new", a, forget, now) != ErrClientQuota {
		t.Fatal("one client address took more than its quota")
	}
	// Addresses of one IPv6 /64 are one client; another /64 is not.
	for i := range 8 {
		if err := c.Add("v6-"+strconv.Itoa(i), "v6-"+strconv.Itoa(i), ip("2001:db8::"+strconv.Itoa(i+1)), forget, now); err != nil {
			t.Fatalf("v6 entry %d: %v", i, err)
		}
	}
	if c.Add("v6-more", "v6-more", ip("2001:db8::ffff:1"), forget, now) != ErrClientQuota {
		t.Fatal("a /64 took more than one client's quota")
	}
	for i := range 48 {
		if err := c.Add(strconv.Itoa(i), strconv.Itoa(i), ip("10.1.0."+strconv.Itoa(i)), forget, now); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	if c.Add("d", "z", ip("10.2.0.1"), forget, now) != ErrFull {
		t.Fatal("a full cache took a new proof")
	}
	later := now.Add(time.Minute)
	if c.Add("a", "x", a, later.Add(time.Minute), later) != nil || c.Add("c", "x", a, later.Add(time.Minute), later) != nil {
		t.Fatal("expired entries were not forgotten")
	}
	c.sweep(later)
	if c.Len() != 2 || c.entries() != 2 || c.lineageCounts("x").get("x") != 2 || lineages(c) != 1 || c.clientCounts(a).get(a) != 2 || clients(c) != 1 {
		t.Fatalf("%d entries held (%d in shards), %d lineages, %d clients", c.Len(), c.entries(), lineages(c), clients(c))
	}
}

func (c *Cache) entries() (n int) {
	for i := range c.proofs {
		c.proofs[i].mu.Lock()
		n += len(c.proofs[i].seen)
		c.proofs[i].mu.Unlock()
	}
	return n
}

func (n *counts[K]) get(k K) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.n[k]
}

func lineages(c *Cache) (n int) {
	for i := range c.lineages {
		n += len(c.lineages[i].n)
	}
	return n
}

func clients(c *Cache) (n int) {
	for i := range c.clients {
		n += len(c.clients[i].n)
	}
	return n
}

// race runs add from n goroutines released at once and counts the
// results.
func race(n int, add func(i int) error) map[error]int {
	var mu sync.Mutex
	got := map[error]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			err := add(i)
			mu.Lock()
			got[err]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return got
}

// However many goroutines race with one proof, exactly one records it; and
// racing for the last places of a quota or of the cache, exactly as many
// as there are places win. Run with -race.
func TestReplayCacheRaces(t *testing.T) {
	now := time.Now()
	forget := now.Add(time.Minute)
	ip := func(i int) netip.Prefix {
		return clientkey.Of(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	for round := range 20 {
		c := New(1 << 20)
		key := "jkt\x00jti-" + strconv.Itoa(round)
		got := race(64, func(i int) error { return c.Add(key, "l"+strconv.Itoa(i), ip(i), forget, now) })
		if got[nil] != 1 || got[ErrReplayed] != 63 {
			t.Fatalf("round %d: one proof added by 64 goroutines: %v", round, got)
		}
		if !c.Seen(key, now) || c.Len() != 1 {
			t.Fatalf("round %d: seen %v, %d held", round, c.Seen(key, now), c.Len())
		}
	}
	c := New(3200) // 100 per lineage, 400 per client
	got := race(300, func(i int) error { return c.Add("lineage-"+strconv.Itoa(i), "one", ip(i), forget, now) })
	if got[nil] != 100 || got[ErrLineageQuota] != 200 {
		t.Fatalf("300 proofs of one lineage, quota 100: %v", got)
	}
	got = race(600, func(i int) error { return c.Add("client-"+strconv.Itoa(i), "c"+strconv.Itoa(i), ip(-1), forget, now) })
	if got[nil] != 400 || got[ErrClientQuota] != 200 {
		t.Fatalf("600 proofs of one client, quota 400: %v", got)
	}
	got = race(3000, func(i int) error { return c.Add("any-"+strconv.Itoa(i), "a"+strconv.Itoa(i), ip(i), forget, now) })
	if got[nil] != 2700 || got[ErrFull] != 300 || c.Len() != 3200 || c.entries() != 3200 {
		t.Fatalf("3000 proofs into 2700 free places: %v, %d held", got, c.Len())
	}
	// Once they expire, the room is back, whichever shard is written.
	later := forget
	got = race(3200, func(i int) error {
		return c.Add("after-"+strconv.Itoa(i), "b"+strconv.Itoa(i%32), ip(i%8), later.Add(time.Minute), later)
	})
	if got[nil] != 3200 || c.Len() != 3200 || c.entries() != 3200 {
		t.Fatalf("after expiry: %v, %d held", got, c.Len())
	}
}
