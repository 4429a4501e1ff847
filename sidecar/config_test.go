package sidecar

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// validConfig is the smallest config settings accepts.
func validConfig() *Config {
	return &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{RoleID: "r", SecretIDFile: "/s"}}
}

// An operator fixing a config sees everything wrong with it in one run:
// problems in several blocks come back together, one a line. (Before the
// validators were split per block, settings stopped at the first.)
func TestConfigReportsEveryError(t *testing.T) {
	for name, tc := range map[string]struct {
		mut  func(c *Config)
		want []string
	}{
		"listener, rate limit and route": {
			func(c *Config) {
				c.Upstream = "ftp://x"
				c.RateLimitScope = "global"
				c.Routes = []RouteConfig{{PathPrefix: "/x", Delegation: "maybe"}}
			},
			[]string{`upstream "ftp://x" must be an http or https URL`, `rate_limit_scope must be "sidecar" or "cluster", got "global"`, `route "/x": delegation must be`},
		},
		"one per block": {
			func(c *Config) {
				c.Upstream = "ftp://x"
				c.TrustedProxies = []string{"gateway"}
				c.Leeway = "61s"
				c.DPoPReplayCacheSize = 10
				c.MaxStale = "soon"
				c.BudgetReserveRequests = 20000
				c.FailedAuthBurst = -1
				c.Vault.RoleIDFile = "/x"
				c.DecisionLogSampleAllowed = ptr(2.0)
			},
			[]string{"upstream", "trusted_proxies", "leeway must be at most", "dpop_replay_cache_size", "need public_origin", `max_stale "soon"`,
				"budget_reserve_requests", "failed_auth_burst", "exactly one of role_id", "needs decision_log_path", "between 0 and 1"},
		},
		"several in one block": {
			func(c *Config) { c.ReadTimeout, c.IdleTimeout, c.MaxHeaderBytes = "soon", "-1s", 1<<30 },
			[]string{"read_timeout", "idle_timeout", "max_header_bytes"},
		},
		"several in one route, and a bad route among good ones": {
			func(c *Config) {
				c.Routes = []RouteConfig{{PathPrefix: "/a"}, {PathPrefix: "v1", Methods: []string{"get"}, Public: true, Scopes: []string{"s"}}, {PathPrefix: "/b", Cost: ptr(int64(-1))}}
			},
			[]string{"must start with /", `method "get"`, "cannot require scopes", `route "/b": cost must be between 0`},
		},
		"missing audiences and vault": {
			func(c *Config) { c.Audiences, c.Vault = nil, nil },
			[]string{"audiences: name the aud values", "a vault block is required"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := validConfig()
			tc.mut(c)
			_, err := c.settings()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("no %q in:\n%v", want, err)
				}
			}
			if lines := strings.Count(err.Error(), "\n") + 1; lines != len(tc.want) {
				t.Errorf("%d messages, want %d:\n%v", lines, len(tc.want), err)
			}
		})
	}
}

// A setting that does not parse is reported once: the checks comparing it
// with another setting are skipped rather than run on its default.
func TestConfigOneTypoOneMessage(t *testing.T) {
	for name, mut := range map[string]func(c *Config){
		"reservation ttl":  func(c *Config) { c.BudgetReservationTTL, c.BudgetReportInterval = "soon", "15s" },
		"key cache ttl":    func(c *Config) { c.KeyCacheTTL, c.MaxStale = "soon", "5s" },
		"resource":         func(c *Config) { c.Audiences, c.Resource = nil, "http://mcp.example.com" },
		"trusted proxy":    func(c *Config) { c.TrustedProxies, c.Gateway = []string{"gateway"}, "nginx" },
		"trusted for gRPC": func(c *Config) { c.TrustedProxies, c.GRPCListen = []string{"envoy"}, "127.0.0.1:9001" },
		"public origin":    func(c *Config) { c.PublicOrigin, c.RequireDPoP = "api.example.com", true },
	} {
		c := validConfig()
		mut(c)
		if _, err := c.settings(); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one message", name, err)
		}
	}
}

// configBlockCase is one bad input to one block's validator.
type configBlockCase struct {
	mut  func(c *Config)
	want string
}

// runBlock runs one block's validator on validConfig changed by each case:
// it must report the case's message, and nothing on validConfig itself.
func runBlock(t *testing.T, validate func(*Config, *settings) []error, cases map[string]configBlockCase) {
	t.Helper()
	if errs := validate(validConfig(), &settings{}); len(errs) > 0 {
		t.Fatalf("the valid config: %v", errs)
	}
	for name, tc := range cases {
		c := validConfig()
		tc.mut(c)
		errs := validate(c, &settings{})
		if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tc.want) }) {
			t.Errorf("%s: %v, want an error about %q", name, errs, tc.want)
		}
	}
}

func TestValidateServer(t *testing.T) {
	runBlock(t, validateServer, map[string]configBlockCase{
		"grpc_listen untrusted": {func(c *Config) { c.GRPCListen = "127.0.0.1:9001" }, "list Envoy's address in trusted_proxies"},
		"upstream not http":     {func(c *Config) { c.Upstream = "ftp://x" }, "must be an http or https URL"},
		"upstream without host": {func(c *Config) { c.Upstream = "http://" }, "must be an http or https URL"},
		"bad duration":          {func(c *Config) { c.ReadTimeout = "a minute" }, `read_timeout "a minute" must be a positive duration`},
		"zero duration":         {func(c *Config) { c.IdleTimeout = "0s" }, "idle_timeout"},
		"negative duration":     {func(c *Config) { c.ReadHeaderTimeout = "-1s" }, "read_header_timeout"},
		"huge header limit":     {func(c *Config) { c.MaxHeaderBytes = 1 << 30 }, "max_header_bytes must be between"},
		"tiny header limit":     {func(c *Config) { c.MaxHeaderBytes = 100 }, "max_header_bytes must be between"},
		"negative body limit":   {func(c *Config) { c.MaxRequestBodyBytes = ptr(int64(-1)) }, "max_request_body_bytes must not be negative"},
	})
}

func TestValidateProxies(t *testing.T) {
	runBlock(t, validateProxies, map[string]configBlockCase{
		"bad CIDR":            {func(c *Config) { c.TrustedProxies = []string{"10.0.0.0/33"} }, "not a CIDR block or IP address"},
		"a name":              {func(c *Config) { c.TrustedProxies = []string{"gateway"} }, "not a CIDR block or IP address"},
		"unknown gateway":     {func(c *Config) { c.TrustedProxies, c.Gateway = []string{"127.0.0.1"}, "haproxy" }, "must be nginx, traefik, caddy or envoy"},
		"gateway untrusted":   {func(c *Config) { c.Gateway = "nginx" }, "trusted_proxies"},
		"strip repeated":      {func(c *Config) { c.StripHeaders = []string{"X-A", "x_a"} }, "listed twice"},
		"strip too many":      {func(c *Config) { c.StripHeaders = slices.Repeat([]string{"X-A"}, 65) }, "at most 64 names"},
		"strip needed":        {func(c *Config) { c.StripHeaders = []string{"Host"} }, "needed to forward"},
		"strip missing name":  {func(c *Config) { c.StripHeaders = []string{""} }, "not a header name"},
		"strip the forwarded": {func(c *Config) { c.StripHeaders = []string{"X-Forwarded-Host"} }, "set by the sidecar's proxy"},
	})
}

func TestValidateTokens(t *testing.T) {
	runBlock(t, validateTokens, map[string]configBlockCase{
		"missing audiences": {func(c *Config) { c.Audiences = nil }, "audiences: name the aud values"},
		"bad resource":      {func(c *Config) { c.Resource = "https://mcp.example.com/mcp?x=1" }, "resource"},
		"bad leeway":        {func(c *Config) { c.Leeway = "30" }, `leeway "30" must be a positive duration`},
		"huge leeway":       {func(c *Config) { c.Leeway = "1h" }, "leeway must be at most"},
	})
}

func TestValidateDPoP(t *testing.T) {
	on := func(c *Config) { c.PublicOrigin = "https://api.example.com" }
	runBlock(t, validateDPoP, map[string]configBlockCase{
		"origin with a path":  {func(c *Config) { c.PublicOrigin = "https://api.example.com/v1" }, "public_origin"},
		"missing origin":      {func(c *Config) { c.RequireDPoP = true }, "need public_origin"},
		"huge max age":        {func(c *Config) { on(c); c.DPoPProofMaxAge = "1h" }, "at most 5m"},
		"bad max age":         {func(c *Config) { on(c); c.DPoPProofMaxAge = "1 minute" }, "dpop_proof_max_age"},
		"huge replay cache":   {func(c *Config) { on(c); c.DPoPReplayCacheSize = 1e9 }, "dpop_replay_cache_size must be between"},
		"negative cache":      {func(c *Config) { on(c); c.DPoPReplayCacheSize = -1 }, "dpop_replay_cache_size must be between"},
		"require, no replica": {func(c *Config) { on(c); c.RequireDPoP, c.KeyReplica = true, ptr(false) }, "require_dpop needs key_replica"},
	})
}

// A JWT-only sidecar checks bound tokens by their cnf claim, so
// require_dpop does not need the key replica there.
func TestRequireDPoPWithoutReplicaForJWTsOnly(t *testing.T) {
	c := validConfig()
	c.PublicOrigin, c.RequireDPoP, c.KeyReplica, c.CredentialKinds = "https://api.example.com", true, ptr(false), []string{"jwt"}
	if errs := validateDPoP(c, &settings{}); len(errs) > 0 {
		t.Fatalf("require_dpop without the replica, JWTs only: %v", errs)
	}
}

func TestValidateFeeds(t *testing.T) {
	runBlock(t, validateFeeds, map[string]configBlockCase{
		"bad poll":               {func(c *Config) { c.RevocationPollInterval = "often" }, "revocation_poll_interval"},
		"bad JWKS refresh":       {func(c *Config) { c.JWKSRefreshInterval = "5" }, "jwks_refresh_interval"},
		"negative refetch":       {func(c *Config) { c.JWKSMinRefetchInterval = "-10s" }, "jwks_min_refetch_interval"},
		"stale below ttl":        {func(c *Config) { c.MaxStale, c.KeyCacheTTL = "1s", "5s" }, "max_stale (1s) must be at least key_cache_ttl (5s)"},
		"negative cache size":    {func(c *Config) { c.CacheSize = -1 }, "cache_size must be positive"},
		"filter without replica": {func(c *Config) { c.KeyReplica, c.KeyReplicaTenants = ptr(false), []string{"acme"} }, "key_replica_tenants needs key_replica"},
		"huge filter":            {func(c *Config) { c.KeyReplicaRoles = slices.Repeat([]string{"web"}, 101) }, "at most 100 names"},
		"bad role":               {func(c *Config) { c.KeyReplicaRoles = []string{"web/admin"} }, "not a role or tenant name"},
	})
}

func TestValidateMetering(t *testing.T) {
	runBlock(t, validateMetering, map[string]configBlockCase{
		"huge chunks":            {func(c *Config) { c.BudgetReserveRequests = 20000 }, "budget_reserve_requests must be between"},
		"negative chunks":        {func(c *Config) { c.BudgetReserveRequests = -1 }, "budget_reserve_requests must be between"},
		"short reservations":     {func(c *Config) { c.BudgetReservationTTL = "5s" }, "budget_reservation_ttl must be whole seconds"},
		"fractional ttl":         {func(c *Config) { c.BudgetReservationTTL = "20.5s" }, "budget_reservation_ttl must be whole seconds"},
		"slow reports":           {func(c *Config) { c.BudgetReportInterval = "20s" }, "at most a third"},
		"bad idle release":       {func(c *Config) { c.BudgetIdleRelease = "idle" }, "budget_idle_release"},
		"bad usage interval":     {func(c *Config) { c.UsageReportInterval = "never" }, `usage_report_interval "never"`},
		"unknown rate scope":     {func(c *Config) { c.RateLimitScope = "global" }, `rate_limit_scope must be "sidecar" or "cluster"`},
		"rate scope in capitals": {func(c *Config) { c.RateLimitScope = "Cluster" }, "rate_limit_scope"},
	})
}

func TestValidateFailedAuth(t *testing.T) {
	runBlock(t, validateFailedAuth, map[string]configBlockCase{
		"zero rate":        {func(c *Config) { c.FailedAuthRate = ptr(0.0) }, "failed_auth_rate must be above 0"},
		"huge rate":        {func(c *Config) { c.FailedAuthRate = ptr(1e6) }, "failed_auth_rate"},
		"negative burst":   {func(c *Config) { c.FailedAuthBurst = -1 }, "failed_auth_burst must be between"},
		"huge concurrency": {func(c *Config) { c.VaultVerifyConcurrency = 5000 }, "vault_verify_concurrency must be between"},
		"negative lookups": {func(c *Config) { c.VaultVerifyConcurrency = -1 }, "vault_verify_concurrency"},
	})
}

func TestValidateRoutes(t *testing.T) {
	route := func(r RouteConfig) func(c *Config) { return func(c *Config) { c.Routes = []RouteConfig{r} } }
	runBlock(t, validateRoutes, map[string]configBlockCase{
		"relative":       {route(RouteConfig{PathPrefix: "v1"}), "must start with /"},
		"missing prefix": {route(RouteConfig{PathPrefix: ""}), "must start with /"},
		"repeated":       {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/a"}, {PathPrefix: "/a"}} }, "take any method"},
		"method repeated": {func(c *Config) {
			c.Routes = []RouteConfig{{PathPrefix: "/a", Methods: []string{"GET"}}, {PathPrefix: "/a", Methods: []string{"GET"}}}
		}, "GET is claimed"},
		"empty method":         {route(RouteConfig{PathPrefix: "/", Methods: []string{""}}), "uppercase HTTP method"},
		"huge cost":            {route(RouteConfig{PathPrefix: "/", Cost: ptr(int64(1e18))}), "cost must be between 0"},
		"negative cost":        {route(RouteConfig{PathPrefix: "/", Cost: ptr(int64(-1))}), "cost must be between 0"},
		"two usage sources":    {route(RouteConfig{PathPrefix: "/", UsageHeader: "X-U", OpenAIUsage: true}), "not both"},
		"bad usage header":     {route(RouteConfig{PathPrefix: "/", UsageHeader: "X:U"}), "not a header name"},
		"unknown fallback":     {route(RouteConfig{PathPrefix: "/", UsageHeader: "X-U", UsageFallback: "free"}), `usage_fallback must be "hold" or "cost"`},
		"fallback, no source":  {route(RouteConfig{PathPrefix: "/", UsageFallback: "cost"}), "usage_fallback goes with"},
		"unknown delegation":   {route(RouteConfig{PathPrefix: "/", Delegation: "maybe"}), "delegation must be"},
		"public, delegation":   {route(RouteConfig{PathPrefix: "/", Public: true, Delegation: "forbid"}), "remove delegation"},
		"public, usage header": {route(RouteConfig{PathPrefix: "/", Public: true, UsageHeader: "X-U"}), "no caller to charge"},
	})
}

func TestValidateVault(t *testing.T) {
	runBlock(t, validateVault, map[string]configBlockCase{
		"missing block":          {func(c *Config) { c.Vault = nil }, "a vault block is required"},
		"no role id":             {func(c *Config) { c.Vault.RoleID = "" }, "exactly one of role_id and role_id_file"},
		"both role ids":          {func(c *Config) { c.Vault.RoleIDFile = "/r" }, "exactly one of role_id and role_id_file"},
		"address and addresses":  {func(c *Config) { c.Vault.Address, c.Vault.Addresses = "http://a:1", []string{"http://b:1"} }, "not both"},
		"address without scheme": {func(c *Config) { c.Vault.Address = "127.0.0.1:8200" }, `address "127.0.0.1:8200" is not an http(s) URL`},
		"one bad node":           {func(c *Config) { c.Vault.Addresses = []string{"https://a:8200", "b:8200"} }, `address "b:8200"`},
	})
}

func TestValidateLogs(t *testing.T) {
	runBlock(t, validateLogs, map[string]configBlockCase{
		"sampling, no log":  {func(c *Config) { c.DecisionLogSampleAllowed = ptr(0.5) }, "needs decision_log_path"},
		"negative sampling": {func(c *Config) { c.DecisionLogPath, c.DecisionLogSampleAllowed = "-", ptr(-0.1) }, "between 0 and 1"},
		"huge sampling":     {func(c *Config) { c.DecisionLogPath, c.DecisionLogSampleAllowed = "-", ptr(2.0) }, "between 0 and 1"},
	})
}

// HCL's own problems (a syntax error, an unknown setting, a value of the
// wrong type) are all reported too, each with its file and line; HCL's
// error names only the first and counts the rest.
func TestParseConfigFileReportsEveryError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.hcl")
	src := "audiences = [\"a\"]\ncache_size = \"lots\"\nvault {\n  secret_id_file = \"/s\"\n}\nroute \"/x\" {\n  bogus = 1\n}\n"
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ParseConfigFile(p)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"bad.hcl:2", "a number is required", "bad.hcl:7", `"bogus" is not expected`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no %q in:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "other diagnostic") {
		t.Errorf("a problem only counted:\n%v", err)
	}
}

// The validators read only Config and write only their own fields of
// settings, so their order does not matter: run backwards, they build the
// same settings from the shipped example.
func TestConfigBlocksAreIndependent(t *testing.T) {
	c, err := ParseConfigFile(filepath.Join("..", "examples", "sidecar.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	c.Resource, c.PublicOrigin, c.DecisionLogPath = "https://api.example.com/mcp", "https://api.example.com", "-"
	forward, err := c.settings()
	if err != nil {
		t.Fatal(err)
	}
	backward := &settings{}
	for _, validate := range slices.Backward(configBlocks) {
		if errs := validate(c, backward); len(errs) > 0 {
			t.Fatal(errs)
		}
	}
	if !reflect.DeepEqual(forward, backward) {
		t.Fatalf("forward %+v\nbackward %+v", forward, backward)
	}
}

// A config file may name only resource (RFC 8707): the service accepts
// tokens whose aud is the resource, as the README says; with neither,
// the file is refused with what to set.
func TestParseConfigFileResourceWithoutAudiences(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string // the audiences, or nil for a refusal
	}{
		{"resource only", "resource = \"https://api.example.com/mcp\"\npublic_origin = \"https://api.example.com\"\nvault {\n  role_id = \"r\"\n  secret_id_file = \"/s\"\n}\n", []string{"https://api.example.com/mcp"}},
		{"neither", "vault {\n  role_id = \"r\"\n  secret_id_file = \"/s\"\n}\n", nil},
	} {
		p := filepath.Join(t.TempDir(), "c.hcl")
		if err := os.WriteFile(p, []byte(tc.src), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := ParseConfigFile(p)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		s, err := c.settings()
		switch {
		case tc.want == nil && (err == nil || !strings.Contains(err.Error(), "audiences: name the aud values")):
			t.Errorf("%s: %v, want the audiences message", tc.name, err)
		case tc.want != nil && (err != nil || !slices.Equal(s.audiences, tc.want)):
			t.Errorf("%s: audiences %v, err %v; want %v", tc.name, s, err, tc.want)
		}
	}
}
