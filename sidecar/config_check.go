package sidecar

import (
	"cmp"
	"encoding/json"
	"net/netip"
)

// CheckConfig validates c as the sidecar would at start and returns its
// effective settings, defaults filled in, as indented JSON: for
// keybroker-sidecar -check-config, in the CI of users' own configs. It
// contacts nothing and reads no file (Vault, the secret_id file and the CA
// certificate are the running sidecar's to reach), and it never prints a
// secret: the role_id only says whether one is set.
func CheckConfig(c *Config) ([]byte, error) {
	s, err := c.settings()
	if err != nil {
		return nil, err
	}
	dur := func(d interface{ String() string }) string { return d.String() }
	trusted := make([]string, 0, len(s.trusted))
	for _, p := range s.trusted {
		trusted = append(trusted, prefixString(p))
	}
	routes := make([]map[string]interface{}, 0, len(s.routes))
	for _, rt := range s.routes {
		routes = append(routes, effectiveRoute(rt))
	}
	upstream := ""
	if s.upstream != nil {
		upstream = s.upstream.String()
	}
	gateway := ""
	if s.gateway != nil {
		gateway = s.gateway.name
	}
	roleID := "(file) " + s.roleIDFile
	if s.roleID != "" {
		roleID = "(set)"
	}
	eff := map[string]interface{}{
		"listen": s.listen, "auth_listen": s.authListen, "grpc_listen": s.grpcListen, "upstream": upstream,
		"credential_kinds": acceptedKinds(s), "audiences": s.audiences, "issuer": cmp.Or(s.issuer, "(from the mount's discovery document)"), "leeway": dur(s.leeway),
		"trusted_proxies": trusted, "gateway": gateway, "allow_unmatched": s.allowUnmatched, "strip_headers": nonNilStrings(s.stripHeaders),
		"revocation_poll_interval": dur(s.revocationPoll), "revocation_long_poll": s.revocationWait > 0,
		"jwks_refresh_interval": dur(s.jwksRefresh), "jwks_min_refetch_interval": dur(s.jwksMinRefetch),
		"key_replica": s.keyReplica, "key_replica_roles": nonNilStrings(s.keyFilter.roles), "key_replica_tenants": nonNilStrings(s.keyFilter.tenants),
		"key_cache_ttl": dur(s.keyCacheTTL), "negative_cache_ttl": dur(s.negativeCacheTTL), "max_stale": dur(s.maxStale), "cache_size": s.cacheSize,
		"budget_reserve_requests": s.reserveRequests, "budget_report_interval": dur(s.reportInterval),
		"usage_report_interval":  map[bool]string{true: "off", false: dur(s.usageReport)}[s.usageReport == 0],
		"budget_reservation_ttl": dur(s.reservationTTL), "budget_idle_release": dur(s.idleRelease), "name": s.name,
		"rate_limit_scope": map[bool]string{true: "cluster", false: "sidecar"}[s.clusterRate],
		"failed_auth_rate": s.failedAuthRate, "failed_auth_burst": s.failedAuthBurst, "vault_verify_concurrency": s.verifyConcurrency,
		"read_header_timeout": dur(s.readHeaderTimeout), "read_timeout": dur(s.readTimeout), "idle_timeout": dur(s.idleTimeout),
		"max_header_bytes": s.maxHeaderBytes, "max_request_body_bytes": s.maxBody,
		"public_origin": s.publicOrigin, "require_dpop": s.requireDPoP,
		"resource": s.resource, "resource_metadata": s.metadataURL, "authorization_servers": nonNilStrings(s.authServers),
		"log_level": s.logLevel, "log_format": s.logFormat,
		"vault": map[string]interface{}{
			"addresses": s.vaultAddrs, "mount": s.mount, "ca_cert": s.vaultCACert,
			"role_id": roleID, "secret_id_file": s.secretIDFile,
		},
		"routes": routes,
	}
	if s.publicOrigin != "" {
		eff["dpop_proof_max_age"], eff["dpop_replay_cache_size"] = dur(s.dpopMaxAge), s.dpopReplaySize
	}
	eff["decision_log_path"] = s.decisionLogPath
	if s.decisionLogPath != "" {
		eff["decision_log_sample_allowed"] = s.decisionLogSample
	}
	return json.MarshalIndent(eff, "", "  ")
}

// effectiveRoute is one route as -check-config shows it: what a public
// route would charge is left out, as it charges nothing.
func effectiveRoute(rt route) map[string]interface{} {
	r := map[string]interface{}{"path_prefix": rt.prefix, "methods": nonNilStrings(rt.methods), "scopes": nonNilStrings(rt.scopes), "public": rt.public}
	if rt.fold {
		r["case_insensitive"] = true
	}
	if rt.delegation != "" {
		r["delegation"] = rt.delegation
	}
	if rt.public {
		return r
	}
	r["cost"] = rt.cost
	if rt.usageHeader != "" {
		r["usage_header"] = rt.usageHeader
	}
	if rt.openaiUsage {
		r["openai_usage"] = true
	}
	if rt.usageHeader != "" || rt.openaiUsage {
		r["usage_fallback"] = map[bool]string{true: "cost", false: "hold"}[rt.fallbackCost]
	}
	return r
}

func prefixString(p netip.Prefix) string {
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// acceptedKinds is credential_kinds as in effect.
func acceptedKinds(s *settings) []string {
	out := []string{}
	if s.acceptKeys {
		out = append(out, kindAPIKey)
	}
	if s.acceptJWTs {
		out = append(out, kindJWT)
	}
	return out
}
