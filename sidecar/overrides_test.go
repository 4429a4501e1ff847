package sidecar

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// overrideSpellings are the routing overrides as a client may send them:
// each name, lower-cased, and with '_' for '-' (which CGI-style servers
// read as the same HTTP_X_ORIGINAL_URL).
var overrideSpellings = []string{
	"X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
	"x-original-url", "X_Original_URL", "X_REWRITE_URL", "x_http_method_override", "X-Http_Method", "X_Method-Override",
}

// The upstream and the middleware's next never see a routing override,
// in any spelling: a framework that honours one would serve another route
// or method than the one the sidecar checked. Other headers pass.
func TestRoutingOverridesStripped(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	record := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Header.Clone()
		mu.Unlock()
	})
	up := httptest.NewServer(record)
	defer up.Close()
	f, client := grpcFixture(t, []string{"127.0.0.1"}, func(c *Config) { c.Upstream = up.URL })
	tok := f.jwt(t, "any read", time.Hour)
	sent := hdr("Authorization", "Bearer "+tok, "Accept", "application/json", "X-Request-Id", "r1")
	for _, n := range overrideSpellings {
		sent[n] = []string{"/v1/admin/x"} // raw keys: as a client's spelling arrives
	}
	for mode, h := range map[string]http.Handler{"proxy": f.sc.proxyHandler(), "middleware": f.sc.Middleware(record)} {
		for _, target := range []string{"/v1/items/1", "/public/x"} {
			seen = nil
			w := send(h, "GET", target, "127.0.0.1:1", sent)
			if w.Code != 200 || seen == nil {
				t.Fatalf("%s %s: %d %s", mode, target, w.Code, w.Body)
			}
			for k := range seen {
				if f.sc.s.stripped(k) {
					t.Errorf("%s %s: the service saw %s: %q", mode, target, k, seen[k])
				}
			}
			if seen.Get("Accept") != "application/json" || seen.Get("X-Request-Id") != "r1" {
				t.Errorf("%s %s: other headers lost: %v", mode, target, seen)
			}
		}
	}
	// Envoy is told to remove them too.
	resp := check(t, client("127.0.0.1"), checkRequest("GET", "/v1/items/1", "127.0.0.9", sent))
	removed := resp.Remove
	for _, n := range overrideSpellings {
		if !slices.Contains(removed, strings.ToLower(n)) {
			t.Errorf("grpc: %s not in headers_to_remove %v", n, removed)
		}
	}
}

// strip_headers replaces the list; it is checked, and -check-config says
// what is in force.
func TestStripHeadersConfig(t *testing.T) {
	base := func(strip []string) *Config {
		return &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{RoleID: "r", SecretIDFile: "/s"}, StripHeaders: strip}
	}
	s, err := base(nil).settings()
	if err != nil || !slices.Equal(s.stripHeaders, defaultStripHeaders) {
		t.Fatalf("default: %v %v", s.stripHeaders, err)
	}
	s, err = base([]string{"X-Tenant-Override"}).settings()
	if err != nil || !s.stripped("x_tenant_override") || s.stripped("X-Original-URL") {
		t.Fatalf("a list of its own: %v %v", s.stripHeaders, err)
	}
	s, err = base([]string{}).settings()
	if err != nil || s.stripped("X-Original-URL") {
		t.Fatalf("an empty list: %v %v", s.stripHeaders, err)
	}
	for strip, want := range map[string][]string{
		"not a header name":                  {"X Original"},
		"not a header name ":                 {""},
		"is listed twice":                    {"X-Original-URL", "x-original-url"},
		"needed to forward":                  {"Host"},
		"needed to forward ":                 {"content-length"},
		"removed from every client already":  {"X-Keybroker-Actor"},
		"removed from every client already ": {"x-api-key"},
		"set by the sidecar's proxy":         {"X-Forwarded-For"},
		"set by the sidecar's proxy ":        {"forwarded"},
		"at most 64 names":                   slices.Repeat([]string{"X-A"}, 65),
	} {
		if _, err := base(want).settings(); err == nil || !strings.Contains(err.Error(), strings.TrimSpace(strip)) {
			t.Errorf("strip_headers %q: %v, want an error about %q", want, err, strip)
		}
	}
	// HCL: unset is the default; [] is none.
	for src, want := range map[string][]string{
		``:                                  defaultStripHeaders,
		`strip_headers = []`:                {},
		`strip_headers = ["X-Debug-Route"]`: {"X-Debug-Route"},
	} {
		path := filepath.Join(t.TempDir(), "sidecar.hcl")
		if err := os.WriteFile(path, []byte("audiences = [\"svc\"]\n"+src+"\nvault {\n  role_id = \"r\"\n  secret_id_file = \"/s\"\n}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := ParseConfigFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out, err := CheckConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		var eff struct {
			StripHeaders []string `json:"strip_headers"`
		}
		if err := json.Unmarshal(out, &eff); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(eff.StripHeaders, want) {
			t.Errorf("%q: -check-config strip_headers %q, want %q", src, eff.StripHeaders, want)
		}
	}
}
