// Package sidecar is keybroker-sidecar: it checks keybroker API keys and
// agent JWTs in front of a service, as a reverse proxy and as an auth
// endpoint for nginx, Traefik and Envoy, without calling Vault on the hot path.
package sidecar

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// Config is the sidecar's HCL configuration file. Durations are Go duration
// strings ("30s"). Vault's own environment variables (VAULT_ADDR,
// VAULT_CACERT, VAULT_CAPATH, VAULT_CLIENT_CERT, ...) apply where the vault
// block leaves a setting out.
type Config struct {
	// Listen is the reverse proxy's address; it forwards to Upstream.
	Listen   string `hcl:"listen,optional"`
	Upstream string `hcl:"upstream,optional"`
	// AuthListen serves /verify for gateways, /healthz and /metrics.
	AuthListen string `hcl:"auth_listen,optional"`
	// GRPCListen serves Envoy's ext_authz gRPC API
	// (envoy.service.auth.v3.Authorization/Check), to peers in
	// TrustedProxies only. Empty: off.
	GRPCListen string `hcl:"grpc_listen,optional"`

	// Audiences are the aud values this service accepts in JWTs.
	Audiences []string `hcl:"audiences"`
	// Issuer of JWTs; default: read from the mount's discovery document.
	Issuer string `hcl:"issuer,optional"`
	Leeway string `hcl:"leeway,optional"`

	// TrustedProxies may set X-Forwarded-For; other peers' copies are
	// ignored. /verify answers only these peers.
	TrustedProxies []string `hcl:"trusted_proxies,optional"`
	// Gateway is the gateway that calls /verify (nginx, traefik, caddy,
	// envoy): it fixes where the original method and URI are read from.
	// Empty: /verify is off.
	Gateway string `hcl:"gateway,optional"`
	// PublicOrigin is the scheme and host clients address this service by
	// ("https://api.example.com"), as DPoP proofs name it in htu; the
	// request's path completes the URI. Without it, DPoP-bound credentials
	// are refused. DPoPProofMaxAge is how old a proof may be (default 60s);
	// proofs are remembered that long to refuse replays, at most
	// DPoPReplayCacheSize (default 500000) at once, at most 1/32 of it per
	// credential lineage and 1/8 per client address.
	PublicOrigin        string `hcl:"public_origin,optional"`
	DPoPProofMaxAge     string `hcl:"dpop_proof_max_age,optional"`
	DPoPReplayCacheSize int    `hcl:"dpop_replay_cache_size,optional"`
	// RequireDPoP refuses every credential that is not DPoP-bound.
	RequireDPoP bool `hcl:"require_dpop,optional"`
	// Resource is this service's resource identifier (RFC 9728, RFC 8707),
	// an https URL such as "https://mcp.example.com/mcp": the sidecar then
	// serves its Protected Resource Metadata, points 401 challenges at it,
	// and accepts JWTs whose aud is the resource.
	Resource string `hcl:"resource,optional"`
	// AllowUnmatched lets requests that match no route through with any
	// valid credential; by default they are denied.
	AllowUnmatched bool `hcl:"allow_unmatched,optional"`
	// StripHeaders are request headers the reverse proxy and the Go
	// middleware remove before the service sees the request, in every
	// spelling a CGI-style server reads as the same name. Unset: the
	// routing overrides (defaultStripHeaders), which some frameworks honour
	// to serve another path or method than the one the sidecar checked.
	// Set, it replaces that list ([] strips none of them).
	StripHeaders []string `hcl:"strip_headers,optional"`

	RevocationPollInterval string `hcl:"revocation_poll_interval,optional"`
	// RevocationLongPoll (default true) has the plugin hold each feed read
	// until a revocation is added (at most 20s), so revocations arrive as
	// they happen; the poll interval is then only the pace after errors.
	RevocationLongPoll     *bool  `hcl:"revocation_long_poll,optional"`
	JWKSRefreshInterval    string `hcl:"jwks_refresh_interval,optional"`
	JWKSMinRefetchInterval string `hcl:"jwks_min_refetch_interval,optional"`
	// KeyReplica (default true) keeps a record of every live API key from
	// keybroker/key-records and verifies keys without asking Vault;
	// KeyReplicaRoles and KeyReplicaTenants limit it to the keys of those
	// roles or tenants, and every other key is then refused.
	KeyReplica        *bool    `hcl:"key_replica,optional"`
	KeyReplicaRoles   []string `hcl:"key_replica_roles,optional"`
	KeyReplicaTenants []string `hcl:"key_replica_tenants,optional"`
	KeyCacheTTL       string   `hcl:"key_cache_ttl,optional"`
	NegativeCacheTTL  string   `hcl:"negative_cache_ttl,optional"`
	MaxStale          string   `hcl:"max_stale,optional"`
	CacheSize         int      `hcl:"cache_size,optional"`

	// Budgets: each reservation asks for budget_reserve_requests x
	// max_cost_per_request units; use is reported every
	// budget_report_interval; a chunk unused for budget_idle_release goes
	// back. Name identifies this sidecar in Vault's audit log.
	BudgetReserveRequests int    `hcl:"budget_reserve_requests,optional"`
	BudgetReportInterval  string `hcl:"budget_report_interval,optional"`
	// UsageReportInterval: how often the API keys let through are reported
	// to keybroker/key-usage (last_used_at); "off" reports none.
	UsageReportInterval  string `hcl:"usage_report_interval,optional"`
	BudgetReservationTTL string `hcl:"budget_reservation_ttl,optional"`
	BudgetIdleRelease    string `hcl:"budget_idle_release,optional"`
	Name                 string `hcl:"name,optional"`

	// RateLimitScope is where rate limits hold: "sidecar" (default; no
	// Vault call) or "cluster" (across every sidecar sharing the Vault,
	// through keybroker/rate/reserve; see contract.RateWindow for the bound).
	RateLimitScope string `hcl:"rate_limit_scope,optional"`

	// Uncached API keys Vault refuses: per client, failed_auth_burst, then
	// failed_auth_rate per second; vault_verify_concurrency lookups at once.
	FailedAuthRate         *float64 `hcl:"failed_auth_rate,optional"`
	FailedAuthBurst        int      `hcl:"failed_auth_burst,optional"`
	VaultVerifyConcurrency int      `hcl:"vault_verify_concurrency,optional"`

	// Server limits, for both listeners.
	ReadHeaderTimeout   string `hcl:"read_header_timeout,optional"`
	ReadTimeout         string `hcl:"read_timeout,optional"`
	IdleTimeout         string `hcl:"idle_timeout,optional"`
	MaxHeaderBytes      int    `hcl:"max_header_bytes,optional"`
	MaxRequestBodyBytes *int64 `hcl:"max_request_body_bytes,optional"`

	LogLevel  string `hcl:"log_level,optional"`
	LogFormat string `hcl:"log_format,optional"`
	// DecisionLogPath is where each decision goes as a JSON line ("-":
	// stdout; empty: off); DecisionLogSampleAllowed is the fraction of
	// allows logged (default 1); every denial is.
	DecisionLogPath          string   `hcl:"decision_log_path,optional"`
	DecisionLogSampleAllowed *float64 `hcl:"decision_log_sample_allowed,optional"`

	Vault  *VaultConfig  `hcl:"vault,block"`
	Routes []RouteConfig `hcl:"route,block"`
}

// VaultConfig says how to reach and log in to Vault.
type VaultConfig struct {
	Address string `hcl:"address,optional"`
	// Addresses are the nodes of an HA cluster (or its load balancers), in
	// the order to try them: a node out of reach or answering 502/503/504
	// (sealed, down, no leader) is left for the next. Set address or addresses.
	Addresses    []string `hcl:"addresses,optional"`
	CACert       string   `hcl:"ca_cert,optional"`
	Mount        string   `hcl:"mount,optional"`
	RoleID       string   `hcl:"role_id,optional"`
	RoleIDFile   string   `hcl:"role_id_file,optional"`
	SecretIDFile string   `hcl:"secret_id_file"`
}

// RouteConfig maps a method and path prefix to the scopes a request needs.
type RouteConfig struct {
	PathPrefix string   `hcl:"path_prefix,label"`
	Methods    []string `hcl:"methods,optional"`
	Scopes     []string `hcl:"scopes,optional"`
	// Public routes need no credential at all.
	Public bool `hcl:"public,optional"`
	// CaseInsensitive matches the prefix without regard to case, for a
	// service that serves /API as /api.
	CaseInsensitive bool `hcl:"case_insensitive,optional"`
	// What a request costs metered credentials: Cost (default 1), or what
	// the upstream response says in UsageHeader or, with OpenAIUsage, in an
	// OpenAI-compatible body's usage.total_tokens; Cost is then the
	// fallback when the response says nothing usable.
	Cost        *int64 `hcl:"cost,optional"`
	UsageHeader string `hcl:"usage_header,optional"`
	OpenAIUsage bool   `hcl:"openai_usage,optional"`
	// UsageFallback is what a response whose usage cannot be read costs:
	// "hold" (default; the credential's max_cost_per_request) or "cost".
	UsageFallback string `hcl:"usage_fallback,optional"`
	// Delegation: "require" admits only exchanged tokens (someone acting
	// for the subject, RFC 8693 act), "forbid" only credentials used by
	// their own subject; unset admits both.
	Delegation string `hcl:"delegation,optional"`
}

// settings is Config checked and parsed.
type settings struct {
	stripHeaders       []string
	listen, authListen string
	grpcListen         string // "": no gRPC ext_authz
	upstream           *url.URL
	audiences          []string
	issuer             string
	leeway             time.Duration
	trusted            []netip.Prefix
	gateway            *gateway
	allowUnmatched     bool
	routes             []route
	groups             []*routeGroup // routes by prefix, longest first

	clusterRate                    bool
	failedAuthRate                 float64
	failedAuthBurst                int
	verifyConcurrency              int
	readHeaderTimeout, readTimeout time.Duration
	idleTimeout                    time.Duration
	maxHeaderBytes                 int
	maxBody                        int64

	revocationPoll, jwksRefresh, jwksMinRefetch time.Duration
	revocationWait                              time.Duration // 0: no long poll
	keyCacheTTL, negativeCacheTTL, maxStale     time.Duration
	cacheSize                                   int
	keyReplica                                  bool
	keyFilter                                   keyFilter

	publicOrigin   string // "": no DPoP
	dpopMaxAge     time.Duration
	dpopReplaySize int
	requireDPoP    bool
	// resource (RFC 9728) and where its metadata is served: the path on
	// both listeners, and the URL clients are pointed at.
	resource, metadataPath, metadataURL string

	reserveRequests                             int
	reportInterval, reservationTTL, idleRelease time.Duration
	usageReport                                 time.Duration // 0: off
	name                                        string

	vaultAddrs          []string
	vaultCACert, mount  string
	roleID, roleIDFile  string
	secretIDFile        string
	logLevel, logFormat string
	decisionLogPath     string // "": off; "-": stdout
	decisionLogSample   float64
}

// ParseConfigFile reads an HCL config file.
func ParseConfigFile(path string) (*Config, error) {
	p := hclparse.NewParser()
	f, diags := p.ParseHCLFile(path)
	if diags.HasErrors() {
		return nil, errors.New(diags.Error())
	}
	var c Config
	if diags := gohcl.DecodeBody(f.Body, nil, &c); diags.HasErrors() {
		return nil, errors.New(hcl.Diagnostics(diags).Error())
	}
	return &c, nil
}

func (c *Config) settings() (*settings, error) {
	s := &settings{
		listen:          cmp.Or(c.Listen, "127.0.0.1:8080"),
		authListen:      cmp.Or(c.AuthListen, "127.0.0.1:8081"),
		grpcListen:      c.GRPCListen,
		audiences:       c.Audiences,
		issuer:          c.Issuer,
		allowUnmatched:  c.AllowUnmatched,
		cacheSize:       c.CacheSize,
		reserveRequests: c.BudgetReserveRequests,
		name:            c.Name,
		logLevel:        cmp.Or(c.LogLevel, "info"),
		logFormat:       cmp.Or(c.LogFormat, "standard"),
	}
	if s.cacheSize == 0 {
		s.cacheSize = 100_000
	}
	if err := s.setStripHeaders(c.StripHeaders); err != nil {
		return nil, err
	}
	if s.cacheSize < 0 {
		return nil, fmt.Errorf("cache_size must be positive")
	}
	if c.Upstream != "" {
		u, err := url.Parse(c.Upstream)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("upstream %q must be an http or https URL", c.Upstream)
		}
		s.upstream = u
	}
	var err error
	if s.resource, s.metadataPath, s.metadataURL, err = parseResource(c.Resource); err != nil {
		return nil, err
	}
	if s.resource != "" && !slices.Contains(s.audiences, s.resource) {
		s.audiences = append(slices.Clip(s.audiences), s.resource) // RFC 8707: aud names the resource
	}
	if len(s.audiences) == 0 {
		return nil, fmt.Errorf("audiences: name the aud values this service accepts (or set resource), so tokens minted for another service are refused")
	}
	usageIn := c.UsageReportInterval // "off": no reports
	if usageIn == "off" {
		usageIn = ""
	}
	durations := []struct {
		name string
		in   string
		def  time.Duration
		out  *time.Duration
	}{
		{"leeway", c.Leeway, 30 * time.Second, &s.leeway},
		{"revocation_poll_interval", c.RevocationPollInterval, time.Second, &s.revocationPoll},
		{"jwks_refresh_interval", c.JWKSRefreshInterval, 5 * time.Minute, &s.jwksRefresh},
		{"jwks_min_refetch_interval", c.JWKSMinRefetchInterval, 10 * time.Second, &s.jwksMinRefetch},
		{"key_cache_ttl", c.KeyCacheTTL, 10 * time.Second, &s.keyCacheTTL},
		{"negative_cache_ttl", c.NegativeCacheTTL, 30 * time.Second, &s.negativeCacheTTL},
		{"max_stale", c.MaxStale, 30 * time.Second, &s.maxStale},
		{"budget_report_interval", c.BudgetReportInterval, time.Second, &s.reportInterval},
		{"usage_report_interval", usageIn, time.Minute, &s.usageReport},
		{"budget_reservation_ttl", c.BudgetReservationTTL, 30 * time.Second, &s.reservationTTL},
		{"budget_idle_release", c.BudgetIdleRelease, 5 * time.Second, &s.idleRelease},
		{"read_header_timeout", c.ReadHeaderTimeout, 10 * time.Second, &s.readHeaderTimeout},
		{"read_timeout", c.ReadTimeout, time.Minute, &s.readTimeout},
		{"idle_timeout", c.IdleTimeout, time.Minute, &s.idleTimeout},
		{"dpop_proof_max_age", c.DPoPProofMaxAge, time.Minute, &s.dpopMaxAge},
	}
	for _, d := range durations {
		*d.out = d.def
		if d.in == "" {
			continue
		}
		v, err := time.ParseDuration(d.in)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%s %q must be a positive duration such as 30s", d.name, d.in)
		}
		*d.out = v
	}
	if c.UsageReportInterval == "off" {
		s.usageReport = 0
	}
	s.keyReplica = c.KeyReplica == nil || *c.KeyReplica
	s.keyFilter = keyFilter{roles: c.KeyReplicaRoles, tenants: c.KeyReplicaTenants}
	for _, f := range []struct {
		field string
		names []string
		re    *regexp.Regexp
	}{{"key_replica_roles", c.KeyReplicaRoles, roleNameRe}, {"key_replica_tenants", c.KeyReplicaTenants, tenantNameRe}} {
		if len(f.names) > 0 && !s.keyReplica {
			return nil, fmt.Errorf("%s needs key_replica", f.field)
		}
		if len(f.names) > 100 {
			return nil, fmt.Errorf("%s: at most 100 names", f.field)
		}
		for _, n := range f.names {
			if len(n) > 128 || !f.re.MatchString(n) {
				return nil, fmt.Errorf("%s: %q is not a role or tenant name", f.field, n)
			}
		}
	}
	s.revocationWait = revocationLongPollWait
	if c.RevocationLongPoll != nil && !*c.RevocationLongPoll {
		s.revocationWait = 0
	}
	if s.publicOrigin, err = parsePublicOrigin(c.PublicOrigin); err != nil {
		return nil, err
	}
	s.dpopReplaySize = cmp.Or(c.DPoPReplayCacheSize, 500_000)
	switch {
	case s.dpopMaxAge > 5*time.Minute:
		return nil, fmt.Errorf("dpop_proof_max_age must be at most 5m: a proof is made for one request")
	case s.dpopReplaySize < 1000 || s.dpopReplaySize > 10_000_000:
		return nil, fmt.Errorf("dpop_replay_cache_size must be between 1000 and 10000000")
	case s.publicOrigin == "" && (c.DPoPProofMaxAge != "" || c.DPoPReplayCacheSize != 0 || c.RequireDPoP):
		return nil, fmt.Errorf("dpop_proof_max_age, dpop_replay_cache_size and require_dpop need public_origin, which turns DPoP on")
	}
	s.requireDPoP = c.RequireDPoP
	if s.requireDPoP && !s.keyReplica {
		return nil, fmt.Errorf("require_dpop needs key_replica: a bound API key is checked from its record, so without the replica every API key would be refused")
	}
	if s.leeway > contract.RevocationGrace {
		return nil, fmt.Errorf("leeway must be at most %s: revocations are kept only that long past a credential's expiry, so a larger leeway would accept a revoked token again", contract.RevocationGrace)
	}
	if s.maxStale < s.keyCacheTTL {
		return nil, fmt.Errorf("max_stale (%s) must be at least key_cache_ttl (%s)", s.maxStale, s.keyCacheTTL)
	}
	if s.reservationTTL < 15*time.Second || s.reservationTTL > 10*time.Minute || s.reservationTTL%time.Second != 0 {
		return nil, fmt.Errorf("budget_reservation_ttl must be whole seconds between 15s and 10m")
	}
	if s.reportInterval > s.reservationTTL/3 {
		return nil, fmt.Errorf("budget_report_interval (%s) must be at most a third of budget_reservation_ttl (%s), so reports renew reservations in time", s.reportInterval, s.reservationTTL)
	}
	if s.reserveRequests == 0 {
		s.reserveRequests = 10
	}
	if s.reserveRequests < 1 || s.reserveRequests > 10_000 {
		return nil, fmt.Errorf("budget_reserve_requests must be between 1 and 10000")
	}
	for _, t := range c.TrustedProxies {
		p, err := netip.ParsePrefix(t)
		if err != nil {
			a, aerr := netip.ParseAddr(t)
			if aerr != nil {
				return nil, fmt.Errorf("trusted_proxies: %q is not a CIDR block or IP address", t)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		s.trusted = append(s.trusted, p.Masked())
	}
	if s.gateway, err = parseGateway(c.Gateway, len(s.trusted)); err != nil {
		return nil, err
	}
	if err := checkGRPCListen(s.grpcListen, len(s.trusted)); err != nil {
		return nil, err
	}
	switch c.RateLimitScope {
	case "", "sidecar":
	case "cluster":
		s.clusterRate = true
	default:
		return nil, fmt.Errorf("rate_limit_scope must be \"sidecar\" or \"cluster\", got %q", c.RateLimitScope)
	}
	s.failedAuthRate, s.failedAuthBurst, s.verifyConcurrency = 1, cmp.Or(c.FailedAuthBurst, 10), cmp.Or(c.VaultVerifyConcurrency, 32)
	if c.FailedAuthRate != nil {
		s.failedAuthRate = *c.FailedAuthRate
	}
	switch {
	case s.failedAuthRate <= 0 || s.failedAuthRate > 1000:
		return nil, fmt.Errorf("failed_auth_rate must be above 0 and at most 1000 per second")
	case s.failedAuthBurst < 1 || s.failedAuthBurst > 10_000:
		return nil, fmt.Errorf("failed_auth_burst must be between 1 and 10000")
	case s.verifyConcurrency < 1 || s.verifyConcurrency > 1024:
		return nil, fmt.Errorf("vault_verify_concurrency must be between 1 and 1024")
	}
	s.maxHeaderBytes = cmp.Or(c.MaxHeaderBytes, 64<<10)
	if s.maxHeaderBytes < 4<<10 || s.maxHeaderBytes > 1<<20 {
		return nil, fmt.Errorf("max_header_bytes must be between 4096 and 1048576")
	}
	s.maxBody = 10 << 20
	if c.MaxRequestBodyBytes != nil {
		s.maxBody = *c.MaxRequestBodyBytes
	}
	if s.maxBody < 0 {
		return nil, fmt.Errorf("max_request_body_bytes must not be negative")
	}
	for _, r := range c.Routes {
		prefix, err := routePrefix(r.PathPrefix)
		if err != nil {
			return nil, err
		}
		rt := route{prefix: prefix, fold: r.CaseInsensitive, scopes: r.Scopes, public: r.Public, cost: 1,
			usageHeader: r.UsageHeader, openaiUsage: r.OpenAIUsage, fallbackCost: r.UsageFallback == "cost", delegation: r.Delegation}
		if r.Cost != nil {
			rt.cost = *r.Cost
		}
		switch {
		case rt.cost < 0 || rt.cost > maxUnitsRequest:
			return nil, fmt.Errorf("route %q: cost must be between 0 and %d", r.PathPrefix, int64(maxUnitsRequest))
		case rt.usageHeader != "" && rt.openaiUsage:
			return nil, fmt.Errorf("route %q: set usage_header or openai_usage, not both", r.PathPrefix)
		case rt.usageHeader != "" && !validHeaderName(rt.usageHeader):
			return nil, fmt.Errorf("route %q: usage_header %q is not a header name", r.PathPrefix, rt.usageHeader)
		case r.UsageFallback != "" && r.UsageFallback != "hold" && r.UsageFallback != "cost":
			return nil, fmt.Errorf("route %q: usage_fallback must be \"hold\" or \"cost\"", r.PathPrefix)
		case r.UsageFallback != "" && rt.usageHeader == "" && !rt.openaiUsage:
			return nil, fmt.Errorf("route %q: usage_fallback goes with usage_header or openai_usage", r.PathPrefix)
		case r.Delegation != "" && r.Delegation != delegationRequire && r.Delegation != delegationForbid:
			return nil, fmt.Errorf("route %q: delegation must be %q or %q", r.PathPrefix, delegationRequire, delegationForbid)
		case r.Public && r.Delegation != "":
			return nil, fmt.Errorf("route %q: a public route has no caller; remove delegation", r.PathPrefix)
		case r.Public && (r.Cost != nil || rt.usageHeader != "" || rt.openaiUsage):
			return nil, fmt.Errorf("route %q: a public route has no caller to charge; remove cost, usage_header and openai_usage", r.PathPrefix)
		}
		for _, m := range r.Methods {
			if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " \t/") {
				return nil, fmt.Errorf("route %q: method %q must be an uppercase HTTP method", r.PathPrefix, m)
			}
			rt.methods = append(rt.methods, m)
		}
		if r.Public && len(r.Scopes) > 0 {
			return nil, fmt.Errorf("route %q: a public route cannot require scopes", r.PathPrefix)
		}
		s.routes = append(s.routes, rt)
	}
	if s.groups, err = groupRoutes(s.routes); err != nil {
		return nil, err
	}
	if c.Vault == nil {
		return nil, fmt.Errorf("a vault block is required (address, mount, role_id or role_id_file, secret_id_file)")
	}
	v := c.Vault
	switch {
	case v.Address != "" && len(v.Addresses) > 0:
		return nil, fmt.Errorf("vault: set address or addresses, not both")
	case v.Address != "":
		s.vaultAddrs = []string{v.Address}
	default:
		s.vaultAddrs = v.Addresses
	}
	for _, a := range s.vaultAddrs {
		if u, err := url.Parse(a); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("vault: address %q is not an http(s) URL", a)
		}
	}
	s.vaultCACert = v.CACert
	s.mount = strings.Trim(cmp.Or(v.Mount, "keybroker"), "/")
	s.roleID, s.roleIDFile, s.secretIDFile = v.RoleID, v.RoleIDFile, v.SecretIDFile
	if (s.roleID == "") == (s.roleIDFile == "") {
		return nil, fmt.Errorf("vault: set exactly one of role_id and role_id_file")
	}
	s.decisionLogPath, s.decisionLogSample = c.DecisionLogPath, 1
	if c.DecisionLogSampleAllowed != nil {
		s.decisionLogSample = *c.DecisionLogSampleAllowed
		switch {
		case s.decisionLogPath == "":
			return nil, fmt.Errorf("decision_log_sample_allowed needs decision_log_path, which turns the decision log on")
		case !(s.decisionLogSample >= 0 && s.decisionLogSample <= 1):
			return nil, fmt.Errorf("decision_log_sample_allowed must be between 0 and 1 (the fraction of allowed decisions logged; every denial is)")
		}
	}
	return s, nil
}

// roleNameRe and tenantNameRe are the names the plugin gives roles and
// tenants; a filter naming anything else would match no key.
var (
	roleNameRe   = regexp.MustCompile(`^\w([\w.-]*\w)?$`)
	tenantNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

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

// setStripHeaders checks strip_headers: header names, none twice (as CGI
// reads them), none the proxy itself needs to forward the request.
func (s *settings) setStripHeaders(names []string) error {
	if names == nil {
		s.stripHeaders = defaultStripHeaders
		return nil
	}
	if len(names) > maxStripHeaders {
		return fmt.Errorf("strip_headers: at most %d names", maxStripHeaders)
	}
	for i, n := range names {
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
		for _, prev := range names[:i] {
			if cgiNameEqual(prev, n) {
				return fmt.Errorf("strip_headers: %q is listed twice (CGI-style servers read %q and %q as one name)", n, prev, n)
			}
		}
	}
	s.stripHeaders = names
	return nil
}
