package sidecar

import (
	"cmp"
	"fmt"
	"net/netip"
	"net/url"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// validateServer checks the listeners, the upstream and the limits both
// HTTP listeners apply.
func validateServer(c *Config, s *settings) []error {
	var p problems
	s.listen = cmp.Or(c.Listen, "127.0.0.1:8080")
	s.authListen = cmp.Or(c.AuthListen, "127.0.0.1:8081")
	s.grpcListen = c.GRPCListen
	// listen and auth_listen are checked by net.Listen when the binary
	// opens them: an embedder opens neither, and listen is unused without
	// an upstream.
	p.add(checkGRPCListen(s.grpcListen, len(c.TrustedProxies)))
	if c.Upstream != "" {
		u, err := url.Parse(c.Upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.addf("upstream %q must be an http or https URL", c.Upstream)
		} else {
			s.upstream = u
		}
	}
	p.duration("read_header_timeout", c.ReadHeaderTimeout, 10*time.Second, &s.readHeaderTimeout)
	p.duration("read_timeout", c.ReadTimeout, time.Minute, &s.readTimeout)
	p.duration("idle_timeout", c.IdleTimeout, time.Minute, &s.idleTimeout)
	s.maxHeaderBytes = cmp.Or(c.MaxHeaderBytes, 64<<10)
	if s.maxHeaderBytes < 4<<10 || s.maxHeaderBytes > 1<<20 {
		p.addf("max_header_bytes must be between 4096 and 1048576")
	}
	s.maxBody = 10 << 20
	if c.MaxRequestBodyBytes != nil {
		s.maxBody = *c.MaxRequestBodyBytes
	}
	if s.maxBody < 0 {
		p.addf("max_request_body_bytes must not be negative")
	}
	return p
}

// validateProxies checks who may speak for a client: the trusted proxies,
// the gateway that calls /verify, and the headers stripped before the
// service sees a request.
func validateProxies(c *Config, s *settings) []error {
	var p problems
	for _, t := range c.TrustedProxies {
		if pfx, ok := parseTrusted(t); ok {
			s.trusted = append(s.trusted, pfx)
		} else {
			p.addf("trusted_proxies: %q is not a CIDR block or IP address", t)
		}
	}
	var err error
	s.gateway, err = parseGateway(c.Gateway, len(c.TrustedProxies))
	p.add(err)
	s.allowUnmatched = c.AllowUnmatched
	var strip []error
	s.stripHeaders, strip = parseStripHeaders(c.StripHeaders)
	return append(p, strip...)
}

// parseTrusted reads a CIDR block, or an address as the block of that one
// address.
func parseTrusted(t string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(t)
	if err != nil {
		a, aerr := netip.ParseAddr(t)
		if aerr != nil {
			return netip.Prefix{}, false
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return p.Masked(), true
}

func validHeaderName(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return h != ""
}

// defaultStripHeaders name another URL or method than the request's own:
// IIS URL Rewrite, Symfony and Laminas read X-Original-URL and
// X-Rewrite-URL; Express's method-override, Rails, Laravel, Spring's
// HiddenHttpMethodFilter and others the method overrides. A service behind
// the sidecar would otherwise serve a route other than the one checked.
var defaultStripHeaders = contract.RoutingOverrides()

// maxStripHeaders bounds strip_headers: each is compared with every header
// of every request.
const maxStripHeaders = 64

// parseStripHeaders checks strip_headers: header names, none twice (as CGI
// reads them), none the proxy itself needs to forward the request. Unset
// (nil) is the default list.
func parseStripHeaders(names []string) ([]string, []error) {
	if names == nil {
		return defaultStripHeaders, nil
	}
	var p problems
	if len(names) > maxStripHeaders {
		p.addf("strip_headers: at most %d names", maxStripHeaders)
		return nil, p
	}
	for i, n := range names {
		p.add(stripHeaderProblem(n))
		for _, prev := range names[:i] {
			if cgiNameEqual(prev, n) {
				p.addf("strip_headers: %q is listed twice (CGI-style servers read %q and %q as one name)", n, prev, n)
				break
			}
		}
	}
	if len(p) > 0 {
		return nil, p
	}
	return names, nil
}

// stripHeaderProblem says why one name cannot be in strip_headers, or nil.
func stripHeaderProblem(n string) error {
	switch {
	case !validHeaderName(n):
		return fmt.Errorf("strip_headers: %q is not a header name", n)
	case cgiNameEqual(n, "Host"), cgiNameEqual(n, "Content-Length"), cgiNameEqual(n, "Transfer-Encoding"), cgiNameEqual(n, "Content-Type"):
		return fmt.Errorf("strip_headers: %q is needed to forward the request", n)
	case strippedHeader(n):
		// Envoy applies removals after the answer's headers: listed,
		// it would remove the identity the sidecar sets.
		return fmt.Errorf("strip_headers: %q is removed from every client already (credential and X-Keybroker-* headers); listed, it would also remove what the sidecar sets", n)
	case cgiNameEqual(n, "Forwarded"), len(n) >= len("X-Forwarded-") && cgiNameEqual(n[:len("X-Forwarded-")], "X-Forwarded-"):
		return fmt.Errorf("strip_headers: %q is set by the sidecar's proxy; listed, it would remove what the sidecar sets", n)
	}
	return nil
}
