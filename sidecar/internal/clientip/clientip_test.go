package clientip

import (
	"net/netip"
	"testing"
)

func TestParseHop(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.9": "203.0.113.9", " 203.0.113.9 ": "203.0.113.9", "203.0.113.9:4444": "203.0.113.9",
		"2001:db8::1": "2001:db8::1", "[2001:db8::1]:80": "2001:db8::1", "[2001:db8::1]": "2001:db8::1",
		"::ffff:10.0.0.1": "10.0.0.1",
	} {
		if a, ok := parseHop(in); !ok || a != netip.MustParseAddr(want) {
			t.Errorf("parseHop(%q) = %v %v", in, a, ok)
		}
	}
	for _, in := range []string{"", "unknown", "_hidden", "203.0.113", "[203.0.113.9]:x", "fe80::1%eth0", "[::1", "1.2.3.4/8"} {
		if a, ok := parseHop(in); ok {
			t.Errorf("parseHop(%q) = %v, want unknown", in, a)
		}
	}
}
