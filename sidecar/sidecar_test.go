package sidecar

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
)

func TestExampleConfigParses(t *testing.T) {
	c, err := ParseConfigFile(filepath.Join("..", "examples", "sidecar.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.settings()
	if err != nil {
		t.Fatal(err)
	}
	if s.upstream.String() != "http://127.0.0.1:9000" || len(s.routes) != 4 || !s.routes[3].openaiUsage || s.routes[2].cost != 5 || s.mount != "keybroker" || s.maxStale.String() != "30s" {
		t.Fatalf("settings = %+v", s)
	}
}

func TestConfigErrors(t *testing.T) {
	base := func() *Config {
		return &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{RoleID: "r", SecretIDFile: "/s"}}
	}
	cases := map[string]struct {
		mut  func(c *Config)
		want string
	}{
		"no audiences":           {func(c *Config) { c.Audiences = nil }, "audiences"},
		"no vault block":         {func(c *Config) { c.Vault = nil }, "vault block is required"},
		"both role ids":          {func(c *Config) { c.Vault.RoleIDFile = "/x" }, "exactly one of role_id"},
		"bad upstream":           {func(c *Config) { c.Upstream = "ftp://x" }, "upstream"},
		"bad duration":           {func(c *Config) { c.MaxStale = "soon" }, "max_stale"},
		"negative duration":      {func(c *Config) { c.KeyCacheTTL = "-1s" }, "key_cache_ttl"},
		"leeway above 60s":       {func(c *Config) { c.Leeway = "61s" }, "leeway must be at most 1m0s: revocations are kept only that long"},
		"stale below ttl":        {func(c *Config) { c.MaxStale = "1s"; c.KeyCacheTTL = "5s" }, "max_stale"},
		"bad trusted proxy":      {func(c *Config) { c.TrustedProxies = []string{"gateway"} }, "trusted_proxies"},
		"route without slash":    {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "v1"}} }, "must start with /"},
		"lowercase method":       {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/", Methods: []string{"get"}}} }, "uppercase"},
		"public with scopes":     {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/", Public: true, Scopes: []string{"a"}}} }, "public route"},
		"negative cost":          {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/", Cost: ptr(int64(-1))}} }, "cost must be between 0"},
		"absurd cost":            {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/", Cost: ptr(int64(1e18))}} }, "cost must be between 0"},
		"address and addresses":  {func(c *Config) { c.Vault.Address = "http://a:1"; c.Vault.Addresses = []string{"http://127.0.0.1:8200"} }, "set address or addresses, not both"},
		"bad vault address":      {func(c *Config) { c.Vault.Address = ""; c.Vault.Addresses = []string{"127.0.0.1:8200"} }, "is not an http(s) URL"},
		"unknown rate scope":     {func(c *Config) { c.RateLimitScope = "global" }, `rate_limit_scope must be "sidecar" or "cluster"`},
		"two usage sources":      {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/", UsageHeader: "X-U", OpenAIUsage: true}} }, "not both"},
		"bad usage header":       {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/", UsageHeader: "X U"}} }, "not a header name"},
		"public with cost":       {func(c *Config) { c.Routes = []RouteConfig{{PathPrefix: "/", Public: true, Cost: ptr(int64(2))}} }, "no caller to charge"},
		"short reservations":     {func(c *Config) { c.BudgetReservationTTL = "5s" }, "budget_reservation_ttl"},
		"slow reports":           {func(c *Config) { c.BudgetReportInterval = "20s" }, "at most a third"},
		"huge chunks":            {func(c *Config) { c.BudgetReserveRequests = 20000 }, "budget_reserve_requests"},
		"padded role filter":     {func(c *Config) { c.KeyReplicaRoles = []string{" web"} }, "not a role or tenant name"},
		"role filter list":       {func(c *Config) { c.KeyReplicaRoles = []string{"a,b"} }, "not a role or tenant name"},
		"tenant filter control":  {func(c *Config) { c.KeyReplicaTenants = []string{"acme\u0085"} }, "not a role or tenant name"},
		"long tenant filter":     {func(c *Config) { c.KeyReplicaTenants = []string{strings.Repeat("a", 129)} }, "not a role or tenant name"},
		"filter without replica": {func(c *Config) { off := false; c.KeyReplica = &off; c.KeyReplicaRoles = []string{"web"} }, "needs key_replica"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := base()
			tc.mut(c)
			if _, err := c.settings(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("settings() = %v, want an error about %q", err, tc.want)
			}
		})
	}
	if _, err := base().settings(); err != nil {
		t.Fatalf("base config: %v", err)
	}
}

func TestConfigFileErrorsNameTheLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.hcl")
	if err := os.WriteFile(p, []byte("audiences = [\"a\"]\nlisten = 8080\nvault {\n  secret_id_file = \"/s\"\n}\nbogus = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ParseConfigFile(p)
	if err == nil || !strings.Contains(err.Error(), "bad.hcl:6") {
		t.Fatalf("error = %v, want one naming bad.hcl line 6", err)
	}
}

func TestPresentedFrom(t *testing.T) {
	for _, tc := range []struct {
		auth, apiKey, proof string
		want                string
		dpop, ok            bool
	}{
		{"Bearer abc", "", "", "abc", false, true},
		{"bearer  abc ", "", "", "abc", false, true},
		{"", "kb_x", "", "kb_x", false, true},
		{"Bearer abc", "abc", "", "abc", false, true},
		{"", "", "", "", false, true},
		{"DPoP abc", "", "p.r.f", "abc", true, true},
		{"dpop abc", "", "", "abc", true, true}, // no proof: the authenticator says so
		{"Bearer abc", "", "p.r.f", "abc", false, true},
		{"Basic dXNlcjpw", "", "", "", false, false},
		{"Bearer", "", "", "", false, false},
		{"DPoP", "", "p.r.f", "", false, false},
		{"Bearer abc", "def", "", "", false, false},
		{"DPoP abc", "def", "p.r.f", "", false, false},
	} {
		h := http.Header{}
		if tc.auth != "" {
			h.Set("Authorization", tc.auth)
		}
		if tc.apiKey != "" {
			h.Set("X-API-Key", tc.apiKey)
		}
		if tc.proof != "" {
			h.Set("DPoP", tc.proof)
		}
		got, ok := presentedFrom(h)
		if got.cred != tc.want || got.dpop != tc.dpop || ok != tc.ok || (ok && got.proof != tc.proof) {
			t.Errorf("Authorization %q X-API-Key %q DPoP %q: got %+v %v, want %q dpop=%v %v", tc.auth, tc.apiKey, tc.proof, got, ok, tc.want, tc.dpop, tc.ok)
		}
	}
	// A repeated credential or proof header is malformed, whatever the
	// copies say: the sidecar would check one and a later component might
	// read the other.
	for _, h := range []http.Header{
		{"Authorization": {"Bearer abc", "Bearer def"}},
		{"Authorization": {"Bearer abc", "Bearer abc"}},
		{"X-Api-Key": {"kb_a", "kb_b"}},
		{"Authorization": {"DPoP abc"}, "Dpop": {"p.r.f", "p.r.f"}},
	} {
		if _, ok := presentedFrom(h); ok {
			t.Errorf("%v: accepted", h)
		}
	}
}

func TestWriteDenial(t *testing.T) {
	for _, tc := range []struct {
		d          decision
		nginx      bool
		status     int
		wwwAuth    string
		bodyReason string
	}{
		{deny(http.StatusUnauthorized, contract.ReasonNoCredential), false, 401, `Bearer realm="keybroker"`, "no_credential"},
		{deny(http.StatusUnauthorized, contract.ReasonExpired), false, 401, `error="invalid_token"`, "expired"},
		{decision{status: 403, reason: contract.ReasonInsufficientScope, scope: "a b"}, false, 403, `error="insufficient_scope", error_description="the credential lacks a scope this route requires (scope names them)", scope="a b"`, "insufficient_scope"},
		{deny(http.StatusBadRequest, contract.ReasonCredentialInQuery), false, 400, `error="invalid_request"`, "credential_in_query"},
		{deny(http.StatusBadRequest, contract.ReasonCredentialInQuery), true, 403, `error="invalid_request"`, "credential_in_query"},
		{deny(http.StatusServiceUnavailable, contract.ReasonUnavailable), true, 403, "", "unavailable"},
		{deny(http.StatusForbidden, contract.ReasonNoRoute), false, 403, "", "no_route"},
		{deny(http.StatusServiceUnavailable, contract.ReasonUnavailable), false, 503, "", "unavailable"},
		{deny(http.StatusBadRequest, contract.ReasonNonCanonicalPath), false, 400, `error="invalid_request"`, "non_canonical_path"},
		{decision{status: 405, reason: contract.ReasonMethodNotAllowed, allow: "GET, HEAD"}, false, 405, "", "method_not_allowed"},
		{decision{status: 405, reason: contract.ReasonMethodNotAllowed, allow: "GET, HEAD"}, true, 403, "", "method_not_allowed"},
		{decision{status: 429, reason: contract.ReasonBudgetExhausted, retryAfter: 90 * time.Minute}, false, 429, "", "budget_exhausted"},
		{decision{status: 429, reason: contract.ReasonBudgetExhausted, retryAfter: time.Second}, true, 403, "", "budget_exhausted"},
		{decision{status: 429, reason: contract.ReasonRateLimited, retryAfter: 300 * time.Millisecond}, false, 429, "", "rate_limited"},
	} {
		w := httptest.NewRecorder()
		newFixture(t, nil).sc.writeDenial(w, tc.d, tc.nginx)
		if w.Code != tc.status || !strings.Contains(w.Header().Get("WWW-Authenticate"), tc.wwwAuth) ||
			w.Header().Get(contract.HeaderReason) != tc.bodyReason || !strings.Contains(w.Body.String(), `"reason":"`+tc.bodyReason+`"`) {
			t.Errorf("%+v nginx=%v: %d %q %q %s", tc.d, tc.nginx, w.Code, w.Header().Get("WWW-Authenticate"), w.Header().Get(contract.HeaderReason), w.Body)
		}
		// Every denial says what happened in words an OAuth client shows
		// (error_description), in its challenge too when it has one.
		var body map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["error"] == "" || body["error_description"] == "" || body["error_description"] == tc.d.reason {
			t.Errorf("%+v: body %s lacks error or a description", tc.d, w.Body)
		}
		if c := w.Header().Get("WWW-Authenticate"); strings.Contains(c, "error=") && !strings.Contains(c, `error_description="`+body["error_description"]+`"`) {
			t.Errorf("%+v: challenge %q lacks the body's error_description", tc.d, c)
		}
		// Only token errors speak OAuth: an OAuth client (the MCP SDK)
		// stops on access_denied, which no_route is not.
		if want := map[string]string{"no_route": "no_route", "method_not_allowed": "method_not_allowed", "budget_exhausted": "budget_exhausted",
			"unavailable": "temporarily_unavailable", "expired": "invalid_token"}[tc.d.reason]; want != "" && !strings.Contains(w.Body.String(), `"error":"`+want+`"`) {
			t.Errorf("%+v: body %s, want error %q", tc.d, w.Body, want)
		}
		if tc.d.status == 405 && w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("405 without Allow: %v", w.Header())
		}
		if tc.d.status == 429 {
			want := strconv.FormatInt(int64(math.Ceil(tc.d.retryAfter.Seconds())), 10)
			if w.Header().Get("Retry-After") != want || !strings.Contains(w.Body.String(), `"error":"`+tc.d.reason+`"`) {
				t.Errorf("%+v: Retry-After %q (want %s), body %s", tc.d, w.Header().Get("Retry-After"), want, w.Body)
			}
		}
	}
}

func TestStripCredentialAndIdentity(t *testing.T) {
	h := http.Header{}
	h.Set("Authorization", "Bearer x")
	h.Set("X-API-Key", "y")
	h.Set("X-Keybroker-Subject", "admin")
	h["x-keybroker-role"] = []string{"root"} // not canonical, as a raw client might send
	h["X-KEYBROKER-TENANT"] = []string{"evil"}
	h.Set("Accept", "text/plain")
	stripCredentialAndIdentity(h)
	if len(h) != 1 || h.Get("Accept") == "" {
		t.Fatalf("after strip: %v", h)
	}
}
