// Package clientip says which address a request comes from: the socket
// peer, or, behind proxies listed in trusted_proxies, the right-most
// X-Forwarded-For hop that is not itself one of them.
//
// It matters for security because a credential bound to CIDRs, the flood
// guard and the per-client limits all judge this address: X-Forwarded-For
// is believed only from a trusted peer (anyone else could name any
// address), only as far back as the hops are trusted, and a hop that does
// not parse makes the address unknown, so a CIDR-bound credential is then
// denied rather than judged by a proxy's address.
package clientip
