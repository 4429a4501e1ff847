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

// Config is the sidecar's HCL configuration file. Vault's own environment
// variables (VAULT_ADDR, VAULT_CACERT, VAULT_CAPATH, VAULT_CLIENT_CERT, ...)
// apply where the vault block leaves a setting out.
//
// Each field's doc comment is the operator's description of its setting in
// docs/reference/sidecar-config.md (scripts/docgen reads it with go/ast and
// fails on a field without one): the lines before "Default:" and
// "Required:" become one table cell, so say what the setting does in a
// sentence or two and keep the why short. "Default:" is the value an unset
// setting behaves as, written as HCL (scripts/docgen's test sets each
// literal default and checks the effective settings do not change) or in
// words where no literal says it.
type Config struct {
	// Address of the reverse proxy, which checks each request and forwards it to
	// upstream (flag -listen overrides it).
	// Default: "127.0.0.1:8080".
	Listen string `hcl:"listen,optional"`
	// The service's http(s) URL, where the reverse proxy forwards allowed
	// requests (flag -upstream overrides it). Unset: no reverse proxy (only
	// /verify, gRPC or an embedding).
	// Default: none.
	Upstream string `hcl:"upstream,optional"`
	// Address serving /verify for gateways, /healthz and /metrics (flag
	// -auth-listen overrides it).
	// Default: "127.0.0.1:8081".
	AuthListen string `hcl:"auth_listen,optional"`
	// Address serving Envoy's ext_authz gRPC API
	// (envoy.service.auth.v3.Authorization/Check) to peers in trusted_proxies
	// only (flag -grpc-listen overrides it). Needs trusted_proxies.
	// Default: none (gRPC off).
	GRPCListen string `hcl:"grpc_listen,optional"`

	// The kinds of credential this service accepts: "api_key", "jwt". A kind
	// left out is refused (credential_kind_not_accepted), and what only it
	// needs is neither followed nor waited for: without "jwt", no issuer or
	// JWKS is read, audiences are not required and readiness does not wait
	// for them.
	// Default: ["api_key", "jwt"].
	CredentialKinds []string `hcl:"credential_kinds,optional"`
	// The aud values this service accepts in JWTs; tokens minted for another
	// service are refused.
	// Required: yes, unless resource is set (its URL is then accepted as aud)
	// or credential_kinds leaves out "jwt".
	Audiences []string `hcl:"audiences,optional"`
	// The iss JWTs must carry.
	// Default: read from the mount's discovery document
	// (.well-known/openid-configuration).
	Issuer string `hcl:"issuer,optional"`
	// Clock skew allowed when checking a JWT's exp, nbf and iat; at most 60s, as
	// revocations are kept only that long past expiry.
	// Default: "30s".
	Leeway Duration `hcl:"leeway,optional"`

	// CIDR blocks or addresses of the proxies (your gateway) that may set
	// X-Forwarded-For; other peers' copies are ignored, and /verify answers only
	// these peers.
	// Default: [] (none).
	TrustedProxies []string `hcl:"trusted_proxies,optional"`
	// The gateway that calls /verify: "nginx", "traefik", "caddy" or "envoy"; it
	// fixes which headers carry the original method and URI. Needs
	// trusted_proxies.
	// Default: none (/verify off).
	Gateway string `hcl:"gateway,optional"`
	// Scheme and host clients address this service by
	// ("https://api.example.com"), as DPoP proofs name it in htu; the request's
	// path completes the URI. Unset, DPoP-bound credentials are refused.
	// Default: none (DPoP off).
	PublicOrigin string `hcl:"public_origin,optional"`
	// How old a DPoP proof may be, at most 5m; proofs are remembered this long
	// to refuse replays. Needs public_origin.
	// Default: "60s".
	DPoPProofMaxAge Duration `hcl:"dpop_proof_max_age,optional"`
	// How many DPoP proofs are remembered at once (1000 to 10000000), at most
	// 1/32 of them per credential lineage and 1/8 per client address; full: 503
	// rather than forget. Needs public_origin.
	// Default: 500000.
	DPoPReplayCacheSize int `hcl:"dpop_replay_cache_size,optional"`
	// Refuse every credential that is not DPoP-bound. Needs public_origin and
	// key_replica.
	// Default: false.
	RequireDPoP bool `hcl:"require_dpop,optional"`
	// This service's resource identifier (RFC 9728, RFC 8707), an https URL such
	// as "https://mcp.example.com/mcp": the sidecar serves its Protected
	// Resource Metadata, points 401 challenges at it, and accepts JWTs whose aud
	// is the resource.
	// Default: none.
	Resource string `hcl:"resource,optional"`
	// OAuth authorization servers (RFC 8414 issuers) the protected-resource
	// metadata names. keybroker's issuer is not one (it has no authorization
	// or token endpoint): name one only when an OAuth server issues tokens
	// this sidecar accepts.
	// Default: [] (none).
	AuthorizationServers []string `hcl:"authorization_servers,optional"`
	// Let requests that match no route through with any valid credential,
	// instead of denying them.
	// Default: false.
	AllowUnmatched bool `hcl:"allow_unmatched,optional"`
	// Request headers removed before the service sees a request (reverse proxy,
	// middleware and Envoy gRPC), in every spelling a CGI-style server reads as
	// the same name. The default lists routing overrides some frameworks honour
	// to serve another path or method than the one checked; a list replaces it
	// ([] strips none).
	// Default: ["X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override",
	// "X-HTTP-Method", "X-Method-Override"].
	StripHeaders []string `hcl:"strip_headers,optional"`

	// How often the revocation feed is read without long polls, and the pace
	// after errors with them.
	// Default: "1s".
	RevocationPollInterval Duration `hcl:"revocation_poll_interval,optional"`
	// Have the plugin hold each revocation feed read until a revocation is added
	// (at most 20s), so revocations arrive as they happen.
	// Default: true.
	RevocationLongPoll *bool `hcl:"revocation_long_poll,optional"`
	// How often the JWKS (the plugin's signing keys) is fetched.
	// Default: "5m".
	JWKSRefreshInterval Duration `hcl:"jwks_refresh_interval,optional"`
	// A JWT with an unknown kid fetches the JWKS at most once per this interval.
	// Default: "10s".
	JWKSMinRefetchInterval Duration `hcl:"jwks_min_refetch_interval,optional"`
	// Keep a replica of every live API key's record (from keybroker/key-records)
	// and verify API keys without asking Vault.
	// Default: true.
	KeyReplica *bool `hcl:"key_replica,optional"`
	// Hold (and accept) only the API keys of these roles; every other key is
	// refused. Needs key_replica.
	// Default: [] (every role).
	KeyReplicaRoles []string `hcl:"key_replica_roles,optional"`
	// Hold (and accept) only the API keys of these tenants; every other key is
	// refused. Needs key_replica.
	// Default: [] (every tenant).
	KeyReplicaTenants []string `hcl:"key_replica_tenants,optional"`
	// How long an API key Vault accepted is cached (when it is not in the
	// replica yet, or key_replica = false).
	// Default: "10s".
	KeyCacheTTL Duration `hcl:"key_cache_ttl,optional"`
	// How long an API key Vault refused is cached.
	// Default: "30s".
	NegativeCacheTTL Duration `hcl:"negative_cache_ttl,optional"`
	// With Vault out of reach, how long the replica (or cached keys) still
	// serves before requests get 503; at least key_cache_ttl.
	// Default: "30s".
	MaxStale Duration `hcl:"max_stale,optional"`
	// Entries per key cache.
	// Default: 100000.
	CacheSize int `hcl:"cache_size,optional"`

	// How many requests one budget reservation covers: each asks for this many
	// times the credential's max_cost_per_request units (1 to 10000).
	// Default: 10.
	BudgetReserveRequests int `hcl:"budget_reserve_requests,optional"`
	// How often budget use is reported to Vault, renewing reservations; at most
	// a third of budget_reservation_ttl.
	// Default: "1s".
	BudgetReportInterval Duration `hcl:"budget_report_interval,optional"`
	// How often the API keys let through are reported to keybroker/key-usage
	// (their last_used_at); "off" reports none.
	// Default: "1m".
	UsageReportInterval Duration `hcl:"usage_report_interval,optional"`
	// How long a budget reservation not renewed by a report lives in Vault:
	// whole seconds from 15s to 10m.
	// Default: "30s".
	BudgetReservationTTL Duration `hcl:"budget_reservation_ttl,optional"`
	// A reserved budget chunk unused for this long is given back.
	// Default: "5s".
	BudgetIdleRelease Duration `hcl:"budget_idle_release,optional"`
	// This sidecar's name in its budget reservations and Vault's audit log.
	// Default: its host name and process id.
	Name string `hcl:"name,optional"`

	// Where rate limits hold: "sidecar" (no Vault call; N sidecars allow N times
	// the rate) or "cluster" (across every sidecar of the Vault, through
	// keybroker/rate/reserve; see contract.RateWindow for the bound).
	// Default: "sidecar".
	RateLimitScope string `hcl:"rate_limit_scope,optional"`

	// Uncached API keys Vault refuses, per client address (IPv6: per /64): after
	// failed_auth_burst, this many a second (above 0, at most 1000); past that,
	// 429 too_many_failures without asking Vault.
	// Default: 1.
	FailedAuthRate *float64 `hcl:"failed_auth_rate,optional"`
	// Uncached API keys Vault may refuse per client address before
	// failed_auth_rate applies (1 to 10000).
	// Default: 10.
	FailedAuthBurst int `hcl:"failed_auth_burst,optional"`
	// API key lookups in Vault in flight at once, all clients together (1 to
	// 1024).
	// Default: 32.
	VaultVerifyConcurrency int `hcl:"vault_verify_concurrency,optional"`

	// How long a client may take to send a request's headers (both listeners).
	// Default: "10s".
	ReadHeaderTimeout Duration `hcl:"read_header_timeout,optional"`
	// How long a client may take to send a whole request, body included (both
	// listeners). There is no write timeout: streams may run long.
	// Default: "1m".
	ReadTimeout Duration `hcl:"read_timeout,optional"`
	// An idle keep-alive connection is closed after this long (both listeners).
	// Default: "1m".
	IdleTimeout Duration `hcl:"idle_timeout,optional"`
	// Largest request header block, in bytes (4096 to 1048576); larger: 431.
	// Default: 65536.
	MaxHeaderBytes int `hcl:"max_header_bytes,optional"`
	// Largest request body, in bytes; larger: 413 body_too_large; 0: no body.
	// Default: 10485760.
	MaxRequestBodyBytes *int64 `hcl:"max_request_body_bytes,optional"`

	// Level of the process log: "trace", "debug", "info", "warn" or "error"
	// (flag -log-level overrides it).
	// Default: "info".
	LogLevel string `hcl:"log_level,optional"`
	// Format of the process log: "json", or "standard" for text lines.
	// Default: "standard".
	LogFormat string `hcl:"log_format,optional"`
	// File each decision is appended to as a JSON line ("-": stdout), created
	// 0600; rotate with copytruncate. Lines the writer's queue cannot take are
	// dropped and counted in keybroker_sidecar_decision_log_dropped_total.
	// Default: none (decision log off).
	DecisionLogPath string `hcl:"decision_log_path,optional"`
	// Fraction of allowed decisions written to the decision log, from 0 to 1;
	// every denial is. Needs decision_log_path.
	// Default: 1.
	DecisionLogSampleAllowed *float64 `hcl:"decision_log_sample_allowed,optional"`

	// How to reach and log in to Vault.
	// Required: yes.
	Vault *VaultConfig `hcl:"vault,block"`
	// Method and path prefix to the scopes a request needs; the longest prefix
	// covering a request's path decides.
	// Default: none (every request is denied, unless allow_unmatched).
	Routes []RouteConfig `hcl:"route,block"`
}

// Duration is a Go duration string such as "30s" or "1m30s".
type Duration = string

// VaultConfig says how to reach and log in to Vault (AppRole).
type VaultConfig struct {
	// Vault's URL. Set address or addresses.
	// Default: VAULT_ADDR.
	Address string `hcl:"address,optional"`
	// The nodes of an HA cluster (or their load balancers), in the order to try
	// them: a node out of reach or answering 502, 503 or 504 (sealed, down, no
	// leader) is left for the next. Set address or addresses.
	// Default: none.
	Addresses []string `hcl:"addresses,optional"`
	// PEM file of the CA that signed Vault's TLS certificate.
	// Default: VAULT_CACERT (or the system's roots).
	CACert string `hcl:"ca_cert,optional"`
	// Path the keybroker plugin is mounted at.
	// Default: "keybroker".
	Mount string `hcl:"mount,optional"`
	// The sidecar's AppRole role_id. Set role_id or role_id_file.
	// Default: none.
	RoleID string `hcl:"role_id,optional"`
	// File holding the AppRole role_id, read at start. Set role_id or
	// role_id_file.
	// Default: none.
	RoleIDFile string `hcl:"role_id_file,optional"`
	// File holding the AppRole secret_id, read at each login.
	SecretIDFile string `hcl:"secret_id_file"`
}

// RouteConfig maps a method and path prefix to the scopes a request needs.
type RouteConfig struct {
	// The route's label: a path prefix, covering itself and what is below it at
	// a "/" ("/v1/read" never covers "/v1/readme").
	PathPrefix string `hcl:"path_prefix,label"`
	// Uppercase HTTP methods the route takes (HEAD goes with GET); a method not
	// listed gets 405, never a shorter prefix's rules.
	// Default: [] (every method no other route of the prefix lists).
	Methods []string `hcl:"methods,optional"`
	// Scopes the credential must carry, all of them.
	// Default: [] (any valid credential).
	Scopes []string `hcl:"scopes,optional"`
	// The route needs no credential at all; it cannot require scopes, delegation
	// or a cost.
	// Default: false.
	Public bool `hcl:"public,optional"`
	// Match the prefix without regard to case, for a service that serves /API as
	// /api.
	// Default: false.
	CaseInsensitive bool `hcl:"case_insensitive,optional"`
	// Units a request charges a metered credential; with usage_header or
	// openai_usage, what it charges when the response says nothing usable.
	// Default: 1.
	Cost *int64 `hcl:"cost,optional"`
	// Response header whose number is what the request costs (instead of cost).
	// Default: none.
	UsageHeader string `hcl:"usage_header,optional"`
	// Charge what an OpenAI-compatible response says in usage.total_tokens (the
	// last usage event of a stream).
	// Default: false.
	OpenAIUsage bool `hcl:"openai_usage,optional"`
	// What a response whose usage cannot be read costs: "hold" (the credential's
	// max_cost_per_request) or "cost". Needs usage_header or openai_usage.
	// Default: "hold".
	UsageFallback string `hcl:"usage_fallback,optional"`
	// "require" admits only exchanged tokens (someone acting for the subject,
	// RFC 8693 act), "forbid" only credentials used by their own subject.
	// Default: none (both).
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
