package dpopreplay

import (
	"net/netip"
	"strconv"
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
	if len(c.seen) != 2 || c.byLineage["x"] != 2 || len(c.byLineage) != 1 || c.byClient[a] != 2 || len(c.byClient) != 1 {
		t.Fatalf("%d entries held, by lineage %v, by client %v", len(c.seen), c.byLineage, c.byClient)
	}
}
