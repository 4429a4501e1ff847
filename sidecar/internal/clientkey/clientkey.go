// Package clientkey says which addresses count as one client, for the
// limits that are kept per client (the flood guard of API key lookups, the
// DPoP replay cache's quota).
package clientkey

import "net/netip"

// Of groups addresses one client can easily hold: an IPv4 address, and for
// IPv6 the /64 a host is usually given whole. An unknown address shares one
// key.
func Of(ip netip.Addr) netip.Prefix {
	switch {
	case !ip.IsValid():
		return netip.Prefix{}
	case ip.Is4():
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}
