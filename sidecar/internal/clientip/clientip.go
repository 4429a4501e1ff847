package clientip

import (
	"net/http"
	"net/netip"
	"strings"
)

// Peer is the socket peer's address, IPv4 unmapped; invalid when
// RemoteAddr does not parse.
func Peer(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Of is the socket peer, or, when the peer is a trusted proxy, the
// right-most address in X-Forwarded-For that is not itself trusted. A hop
// that does not parse makes the address unknown (invalid): a credential
// bound to CIDRs is then denied, rather than judged by the proxy's address.
func Of(r *http.Request, trusted []netip.Prefix) netip.Addr {
	peer := Peer(r)
	if !peer.IsValid() || !Trusted(trusted, peer) {
		return peer
	}
	xff := r.Header.Values("X-Forwarded-For")
	if len(xff) == 0 {
		return peer
	}
	hops := strings.Split(strings.Join(xff, ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseHop(hops[i])
		if !ok {
			return netip.Addr{}
		}
		if !Trusted(trusted, a) {
			return a
		}
		peer = a
	}
	return peer
}

// parseHop reads one X-Forwarded-For hop: "ip", "ip:port", "[ipv6]" or
// "[ipv6]:port". Zoned addresses are not client addresses.
func parseHop(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		if ap, perr := netip.ParseAddrPort(s); perr == nil {
			a, err = ap.Addr(), nil
		} else if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
			a, err = netip.ParseAddr(s[1 : len(s)-1])
		}
	}
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// Trusted says whether a is in one of the trusted prefixes.
func Trusted(trusted []netip.Prefix, a netip.Addr) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
