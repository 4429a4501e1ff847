package sidecar

import (
	"cmp"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// validateTokens checks what a JWT must say to be accepted here: its
// audience (or this service's resource identifier), issuer and clock leeway.
func validateTokens(c *Config, s *settings) []error {
	var p problems
	s.audiences, s.issuer = c.Audiences, c.Issuer
	var err error
	s.resource, s.metadataPath, s.metadataURL, err = parseResource(c.Resource)
	p.add(err)
	if s.resource != "" && !slices.Contains(s.audiences, s.resource) {
		s.audiences = append(slices.Clip(s.audiences), s.resource) // RFC 8707: aud names the resource
	}
	p.credentialKinds(c.CredentialKinds, s)
	s.authServers = c.AuthorizationServers
	if len(c.AuthorizationServers) > 0 && c.Resource == "" {
		p.addf("authorization_servers needs resource: they are named in its metadata")
	}
	for _, a := range c.AuthorizationServers {
		// RFC 8414 §2: an issuer is an https URL without query or
		// fragment (http on a loopback host, for development).
		if u, err := url.Parse(a); err != nil || !(u.Scheme == "https" || u.Scheme == "http" && isLoopbackHost(u.Hostname())) || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			p.addf("authorization_servers: %q is not an issuer URL (https://host[/path]; http only on a loopback host)", a)
		}
	}
	if len(c.Audiences) == 0 && c.Resource == "" && s.acceptJWTs {
		p.addf("audiences: name the aud values this service accepts (or set resource), so tokens minted for another service are refused")
	}
	if p.duration("leeway", c.Leeway, 30*time.Second, &s.leeway) && s.leeway > contract.RevocationGrace {
		p.addf("leeway must be at most %s: revocations are kept only that long past a credential's expiry, so a larger leeway would accept a revoked token again", contract.RevocationGrace)
	}
	return p
}

// The values of credential_kinds.
const (
	kindAPIKey = "api_key"
	kindJWT    = "jwt"
)

// credentialKinds reads credential_kinds: unset, both kinds.
func (p *problems) credentialKinds(kinds []string, s *settings) {
	if kinds == nil {
		s.acceptKeys, s.acceptJWTs = true, true
		return
	}
	for _, k := range kinds {
		switch k {
		case kindAPIKey:
			s.acceptKeys = true
		case kindJWT:
			s.acceptJWTs = true
		default:
			p.addf("credential_kinds: %q is not a kind of credential (api_key, jwt)", k)
		}
	}
	if !s.acceptKeys && !s.acceptJWTs {
		p.addf("credential_kinds: name at least one of api_key, jwt")
	}
}

// validateDPoP checks proof of possession: public_origin turns it on, and
// every other DPoP setting needs it.
func validateDPoP(c *Config, s *settings) []error {
	var p problems
	var err error
	s.publicOrigin, err = parsePublicOrigin(c.PublicOrigin)
	p.add(err)
	if p.duration("dpop_proof_max_age", c.DPoPProofMaxAge, time.Minute, &s.dpopMaxAge) && s.dpopMaxAge > 5*time.Minute {
		p.addf("dpop_proof_max_age must be at most 5m: a proof is made for one request")
	}
	s.dpopReplaySize = cmp.Or(c.DPoPReplayCacheSize, 500_000)
	if s.dpopReplaySize < 1000 || s.dpopReplaySize > 10_000_000 {
		p.addf("dpop_replay_cache_size must be between 1000 and 10000000")
	}
	if c.PublicOrigin == "" && (c.DPoPProofMaxAge != "" || c.DPoPReplayCacheSize != 0 || c.RequireDPoP) {
		p.addf("dpop_proof_max_age, dpop_replay_cache_size and require_dpop need public_origin, which turns DPoP on")
	}
	s.requireDPoP = c.RequireDPoP
	// A JWT-only sidecar checks bound tokens by their cnf claim: no
	// replica needed.
	takesKeys := c.CredentialKinds == nil || slices.Contains(c.CredentialKinds, kindAPIKey)
	if s.requireDPoP && !c.keyReplica() && takesKeys {
		p.addf("require_dpop needs key_replica: a bound API key is checked from its record, so without the replica every API key would be refused")
	}
	return p
}

// validateFeeds checks what the sidecar keeps from Vault and how fresh:
// the revocation feed, the JWKS, the key replica and the key cache.
func validateFeeds(c *Config, s *settings) []error {
	var p problems
	p.duration("revocation_poll_interval", c.RevocationPollInterval, time.Second, &s.revocationPoll)
	s.revocationWait = revocationLongPollWait
	if c.RevocationLongPoll != nil && !*c.RevocationLongPoll {
		s.revocationWait = 0
	}
	p.duration("jwks_refresh_interval", c.JWKSRefreshInterval, 5*time.Minute, &s.jwksRefresh)
	p.duration("jwks_min_refetch_interval", c.JWKSMinRefetchInterval, 10*time.Second, &s.jwksMinRefetch)
	s.keyReplica = c.keyReplica()
	s.keyFilter = keyFilter{roles: c.KeyReplicaRoles, tenants: c.KeyReplicaTenants}
	p.replicaFilter("key_replica_roles", c.KeyReplicaRoles, roleNameRe, s.keyReplica)
	p.replicaFilter("key_replica_tenants", c.KeyReplicaTenants, tenantNameRe, s.keyReplica)
	ttlOK := p.duration("key_cache_ttl", c.KeyCacheTTL, 10*time.Second, &s.keyCacheTTL)
	p.duration("negative_cache_ttl", c.NegativeCacheTTL, 30*time.Second, &s.negativeCacheTTL)
	if p.duration("max_stale", c.MaxStale, 30*time.Second, &s.maxStale) && ttlOK && s.maxStale < s.keyCacheTTL {
		p.addf("max_stale (%s) must be at least key_cache_ttl (%s)", s.maxStale, s.keyCacheTTL)
	}
	s.cacheSize = cmp.Or(c.CacheSize, 100_000)
	if s.cacheSize < 0 {
		p.addf("cache_size must be positive")
	}
	return p
}

// roleNameRe and tenantNameRe are the names the plugin gives roles and
// tenants; a filter naming anything else would match no key.
var (
	roleNameRe   = regexp.MustCompile(`^\w([\w.-]*\w)?$`)
	tenantNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// replicaFilter checks key_replica_roles or key_replica_tenants: a filter
// of the replica, so only with it, of at most 100 names the plugin could
// have given.
func (p *problems) replicaFilter(field string, names []string, re *regexp.Regexp, replica bool) {
	if len(names) > 0 && !replica {
		p.addf("%s needs key_replica", field)
	}
	if len(names) > 100 {
		p.addf("%s: at most 100 names", field)
		return
	}
	for _, n := range names {
		if len(n) > 128 || !re.MatchString(n) {
			p.addf("%s: %q is not a role or tenant name", field, n)
		}
	}
}

// parsePublicOrigin checks public_origin: an http(s) scheme and host, no
// path, query or user. It returns it normalised as htu compares it, without
// the trailing slash; "" when unset.
func parsePublicOrigin(o string) (string, error) {
	if o == "" {
		return "", nil
	}
	u, err := url.Parse(o)
	if err != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("public_origin %q must be a scheme and host only, such as https://api.example.com", o)
	}
	n, err := jwtverify.NormalizeHTU(o)
	if err != nil {
		return "", fmt.Errorf("public_origin %q: %v", o, err)
	}
	return strings.TrimSuffix(n, "/"), nil
}

// parseResource checks resource: an https URL (http on a loopback host,
// for tests) without query or fragment. It returns it with the path and
// URL of its metadata: /.well-known/oauth-protected-resource inserted
// before the resource's path (RFC 9728 §3.1).
func parseResource(r string) (resource, path, url_ string, err error) {
	if r == "" {
		return "", "", "", nil
	}
	u, perr := url.Parse(r)
	bad := perr != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery ||
		!(u.Scheme == "https" || (u.Scheme == "http" && isLoopbackHost(u.Hostname())))
	if bad || (len(u.EscapedPath()) > 1 && strings.HasSuffix(u.EscapedPath(), "/")) {
		// A trailing slash: RFC 9728 would keep it in the metadata path
		// and some clients drop it; one spelling leaves no doubt.
		return "", "", "", fmt.Errorf("resource %q must be an https URL without query, fragment or trailing slash, such as https://mcp.example.com/mcp", r)
	}
	path = "/.well-known/oauth-protected-resource" + strings.TrimSuffix(u.EscapedPath(), "/")
	return r, path, u.Scheme + "://" + u.Host + path, nil
}

func isLoopbackHost(h string) bool {
	a, err := netip.ParseAddr(h)
	return h == "localhost" || (err == nil && a.IsLoopback())
}
