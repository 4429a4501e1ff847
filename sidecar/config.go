package sidecar

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
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

	// CredentialKinds are the kinds of credential this service accepts:
	// "api_key", "jwt" (default both). A kind left out is refused
	// (credential_kind_not_accepted), and what only it needs is neither
	// followed nor waited for: without "jwt", no issuer or JWKS is read,
	// audiences are not required and readiness does not wait for them.
	CredentialKinds []string `hcl:"credential_kinds,optional"`
	// Audiences are the aud values this service accepts in JWTs.
	Audiences []string `hcl:"audiences,optional"`
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
	// AuthorizationServers are the OAuth authorization servers (RFC 8414
	// issuers) the resource metadata names; none by default. keybroker's
	// issuer is not one (no authorization or token endpoint): name one
	// only when an OAuth server issues tokens this sidecar accepts.
	AuthorizationServers []string `hcl:"authorization_servers,optional"`
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
	// acceptKeys and acceptJWTs are credential_kinds.
	acceptKeys, acceptJWTs bool
	authServers            []string // authorization_servers
	leeway                 time.Duration
	trusted                []netip.Prefix
	gateway                *gateway
	allowUnmatched         bool
	routes                 []route
	groups                 []*routeGroup // routes by prefix, longest first

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

// ParseConfigFile reads an HCL config file. Every problem HCL finds (a
// syntax error, an unknown setting, a value of the wrong type) is
// reported, one a line with its file and line, not only the first.
func ParseConfigFile(path string) (*Config, error) {
	p := hclparse.NewParser()
	f, diags := p.ParseHCLFile(path)
	if diags.HasErrors() {
		return nil, diagnosticsError(diags)
	}
	var c Config
	if diags := gohcl.DecodeBody(f.Body, nil, &c); diags.HasErrors() {
		return nil, diagnosticsError(diags)
	}
	return &c, nil
}

// diagnosticsError joins HCL's errors; hcl.Diagnostics.Error() names the
// first and only counts the rest.
func diagnosticsError(diags hcl.Diagnostics) error {
	var errs []error
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, errors.New(d.Error()))
		}
	}
	return errors.Join(errs...)
}

// settings checks c and returns it parsed, defaults filled in. Each block
// of the configuration has its own validator, which fills in its fields of
// settings and returns every problem it finds; the problems of all blocks
// come back together (errors.Join, one a line), so an operator fixing a
// config sees everything wrong with it in one run rather than one message
// a run.
func (c *Config) settings() (*settings, error) {
	s := &settings{}
	var errs []error
	for _, validate := range configBlocks {
		errs = append(errs, validate(c, s)...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// configBlocks are the validators, one per block. Each reads only Config
// and writes only its own fields of settings, so they run in any order; a
// rule that spans blocks (grpc_listen needs trusted_proxies, require_dpop
// needs key_replica) reads the other block's Config field, never its parsed
// result.
var configBlocks = []func(*Config, *settings) []error{
	validateServer,   // listen, auth_listen, grpc_listen, upstream, server limits
	validateProxies,  // trusted_proxies, gateway, allow_unmatched, strip_headers
	validateTokens,   // credential_kinds, audiences, issuer, leeway, resource
	validateDPoP,     // public_origin, dpop_*, require_dpop
	validateFeeds,    // revocations, JWKS, key replica, key cache
	validateMetering, // budgets, usage reports, rate_limit_scope, name
	validateFailedAuth,
	validateRoutes,
	validateVault,
	validateLogs,
}

// keyReplica is key_replica with its default (on).
func (c *Config) keyReplica() bool { return c.KeyReplica == nil || *c.KeyReplica }

// problems are one block's messages, each naming its setting.
type problems []error

func (p *problems) addf(format string, args ...any) {
	*p = append(*p, fmt.Errorf(format, args...))
}

func (p *problems) add(err error) {
	if err != nil {
		*p = append(*p, err)
	}
}

// duration sets *out to the Go duration in ("30s"), or to def when in is
// unset. It returns false, with the message added, when in is set but not a
// positive duration; *out is then def, and the caller skips the checks that
// compare it with another setting, so one typo gives one message.
func (p *problems) duration(name, in string, def time.Duration, out *time.Duration) bool {
	*out = def
	if in == "" {
		return true
	}
	v, err := time.ParseDuration(in)
	if err != nil || v <= 0 {
		p.addf("%s %q must be a positive duration such as 30s", name, in)
		return false
	}
	*out = v
	return true
}
