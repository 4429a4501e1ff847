package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/golang-jwt/jwt/v5"
	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

// logFixture is the fixture with the decision log on, in a file of its
// own, behind a real upstream, with /verify (traefik, from 127.0.0.2) and
// DPoP on, and a route that reads its usage from the answer.
func logFixture(t *testing.T, mutate func(c *Config)) (*fixture, string) {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Header().Set("X-Usage", "3") }))
	t.Cleanup(up.Close)
	path := filepath.Join(t.TempDir(), "decisions.log")
	f := newFixture(t, func(c *Config) {
		c.Upstream, c.DecisionLogPath, c.Name = up.URL, path, "sidecar-7"
		c.Gateway, c.TrustedProxies, c.PublicOrigin = "traefik", []string{"127.0.0.2"}, testOrigin
		c.Routes = append(c.Routes, RouteConfig{PathPrefix: "/metered", Scopes: []string{"read"}, UsageHeader: "X-Usage"})
		if mutate != nil {
			mutate(c)
		}
	})
	// The writer, as Start begins it (without the feeds Start follows).
	if err := f.sc.dlog.start(); err != nil {
		t.Fatal(err)
	}
	return f, path
}

// readDecisionLog stops the sidecar (which flushes the log) and returns
// the file and its lines, each checked to be one JSON object with the
// fields every line has.
func readDecisionLog(t *testing.T, f *fixture, path string) ([]byte, []map[string]interface{}) {
	t.Helper()
	f.sc.Stop()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []map[string]interface{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var m map[string]interface{}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		for _, k := range []string{"time", "type", "mode", "outcome", "status", "reason"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("line without %s: %s", k, sc.Text())
			}
		}
		ts, _ := m["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || !strings.HasSuffix(ts, "Z") || len(ts) != len("2006-01-02T15:04:05.000000000Z") || time.Since(at) > time.Minute || time.Since(at) < 0 {
			t.Fatalf("time %q: not RFC 3339 UTC with nanoseconds, now: %v", ts, err)
		}
		if m["type"] != "decision" {
			t.Fatalf("type %v", m["type"])
		}
		lines = append(lines, m)
	}
	return raw, lines
}

// Each kind of decision, in each mode, logs one line with what it should
// say and nothing it should not; the credential, the DPoP proof and the
// query string appear nowhere in the file.
func TestDecisionLog(t *testing.T) {
	f, path := logFixture(t, nil)
	proxy := f.sc.proxyHandler()
	mw := f.sc.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	auth := f.sc.authHandler()

	rc := f.claims("any read", time.Hour)
	rc.Role, rc.Tenant = "billing", "acme"
	reader := f.sign(t, rc)
	dc := f.claims("any read", time.Hour)
	dc.ID, dc.Act = "jti-delegated", &jwtverify.Actor{Subject: "tool", Act: &jwtverify.Actor{Subject: "assistant"}}
	delegated := f.sign(t, dc)
	k := dpoptest.NewKey(t, "ES256")
	bound := f.boundJWT(t, k, "jti-bound")
	now := time.Now()
	goodProof := k.Proof(t, "GET", testOrigin+"/v1/items", bound, now, nil)
	wrongProof := k.Proof(t, "GET", testOrigin+"/v1/other", bound, now, nil)
	metered := f.jwt(t, "read", 2*time.Hour)
	oc := f.claims("any read", time.Hour)
	oc.ID, oc.Audience = "jti-other-aud", jwt.ClaimStrings{"other-service"}
	otherAud := f.sign(t, oc)
	ic := f.claims("any read", time.Hour)
	ic.ID, ic.Issuer = "jti-other-iss", "https://elsewhere"
	otherIss := f.sign(t, ic)
	id, _ := f.sc.agentJWTs.check(context.Background(), presentation{cred: metered})
	id.budget = &jwtverify.Budget{Units: 1 << 40, Period: 86400, MaxCost: 10}
	m := f.sc.budgets.meter(id)
	m.central = 1 << 40
	m.cur = &chunk{granted: 1 << 40, periodEnd: time.Now().Add(time.Hour), expiresAt: time.Now().Add(time.Hour)}
	apiKey, _, _ := apikey.Generate(nil, "kb")
	long := "/v1/items/" + strings.Repeat("a", 2000)
	bearer := func(tok string) http.Header { return hdr("Authorization", "Bearer "+tok) }
	fwd := func(method, uri string, kv ...string) http.Header {
		return hdr(append([]string{"X-Forwarded-Method", method, "X-Forwarded-Uri", uri}, kv...)...)
	}

	const absent = "(absent)"
	cases := []struct {
		name string
		do   func()
		want map[string]interface{}
	}{
		{"allowed JWT, clean query", func() { send(proxy, "GET", "/v1/items/1?page=2", "127.0.0.1:1", bearer(reader)) }, map[string]interface{}{
			"mode": "proxy", "outcome": "allow", "status": 200.0, "reason": "ok", "method": "GET", "path": "/v1/items/1", "route": "/v1/items",
			"kind": "jwt", "jti": rc.ID, "subject": "agent", "role": "billing", "tenant": "acme", "client_ip": "127.0.0.1", "sidecar": "sidecar-7",
			"key_id": absent, "cost": absent, "held": absent, "dpop": absent, "actors": absent}},
		{"public route", func() { send(proxy, "GET", "/public/x", "127.0.0.1:1", nil) }, map[string]interface{}{
			"outcome": "allow", "reason": "ok", "route": "/public", "path": "/public/x", "kind": absent, "jti": absent, "subject": absent}},
		{"insufficient scope names the caller", func() { send(proxy, "GET", "/v1/admin/x", "127.0.0.1:1", bearer(reader)) }, map[string]interface{}{
			"outcome": "deny", "status": 403.0, "reason": contract.ReasonInsufficientScope, "route": "/v1/admin", "path": "/v1/admin/x", "kind": "jwt", "jti": rc.ID}},
		{"no credential", func() { send(proxy, "GET", "/v1/items/1", "127.0.0.1:1", nil) }, map[string]interface{}{
			"outcome": "deny", "status": 401.0, "reason": contract.ReasonNoCredential, "route": "/v1/items", "path": "/v1/items/1", "kind": absent}},
		{"a credential that does not parse names no one", func() { send(proxy, "GET", "/v1/items/1", "127.0.0.1:1", bearer("kb_not-a-key")) }, map[string]interface{}{
			"outcome": "deny", "reason": contract.ReasonMalformed, "kind": absent, "jti": absent, "key_id": absent, "subject": absent}},
		{"a JWT that does not verify names no one", func() { send(proxy, "GET", "/v1/items/1", "127.0.0.1:1", bearer("eyJhbGciOiJub25lIn0.e30.c2ln")) }, map[string]interface{}{
			"outcome": "deny", "reason": contract.ReasonUnknownKey, "kind": absent, "jti": absent, "subject": absent, "expected": absent}},
		{"a JWT for another audience says which it needed, not what it held", func() { send(proxy, "GET", "/v1/items/1", "127.0.0.1:1", bearer(otherAud)) }, map[string]interface{}{
			"outcome": "deny", "status": 401.0, "reason": contract.ReasonAudienceMismatch, "expected": "svc", "kind": absent, "jti": absent, "subject": absent}},
		{"a JWT of another issuer says which it needed", func() { send(proxy, "GET", "/v1/items/1", "127.0.0.1:1", bearer(otherIss)) }, map[string]interface{}{
			"outcome": "deny", "status": 401.0, "reason": contract.ReasonIssuerMismatch, "expected": "https://iss", "kind": absent, "subject": absent}},
		{"an API key Vault cannot verify", func() { send(proxy, "GET", "/v1/items/1", "127.0.0.1:1", hdr("X-API-Key", apiKey)) }, map[string]interface{}{
			"outcome": "deny", "reason": contract.ReasonUnavailable, "status": 503.0, "kind": absent, "key_id": absent}},
		{"non-canonical path: the raw path, no query", func() { send(proxy, "GET", "/public/../v1/admin?access_token=SECRETQ", "127.0.0.1:1", nil) }, map[string]interface{}{
			"outcome": "deny", "reason": contract.ReasonNonCanonicalPath, "path": "/public/../v1/admin", "route": absent}},
		{"credential in the path: refused, logged without it", func() { send(proxy, "GET", "/v1/items/x-"+apiKey+".json", "127.0.0.1:1", bearer(reader)) }, map[string]interface{}{
			"outcome": "deny", "status": 400.0, "reason": contract.ReasonCredentialInPath, "path": "/v1/items/[credential]", "kind": absent}},
		{"credential in a path refused before the check (no route)", func() { send(proxy, "GET", "/"+reader, "127.0.0.1:1", nil) }, map[string]interface{}{
			"outcome": "deny", "path": "/[credential]"}},
		{"a non-canonical path with an encoded credential", func() {
			send(proxy, "GET", "/public/../"+strings.ReplaceAll(apiKey, "_", "%5F"), "127.0.0.1:1", nil)
		}, map[string]interface{}{
			"outcome": "deny", "reason": contract.ReasonNonCanonicalPath, "path": "/public/../[credential]"}},
		{"credential in the query", func() { send(proxy, "GET", "/v1/items/1?access_token="+reader, "127.0.0.1:1", nil) }, map[string]interface{}{
			"outcome": "deny", "reason": contract.ReasonCredentialInQuery, "path": "/v1/items/1", "kind": absent}},
		{"absolute-form: no authority", func() { send(proxy, "GET", "http://user:pw@evil.example/v1/admin/x?q=1", "127.0.0.1:1", nil) }, map[string]interface{}{
			"reason": contract.ReasonNoCredential, "path": "/v1/admin/x"}},
		{"asterisk-form", func() { send(proxy, "OPTIONS", "*", "127.0.0.1:1", nil) }, map[string]interface{}{
			"reason": contract.ReasonNonCanonicalPath, "path": "*", "method": "OPTIONS"}},
		{"a long path is cut", func() { send(proxy, "GET", long+"?x=1", "127.0.0.1:1", bearer(reader)) }, map[string]interface{}{
			"outcome": "allow", "path": long[:512]}},
		{"delegated, through the middleware", func() { send(mw, "GET", "/v1/items/1", "127.0.0.1:1", bearer(delegated)) }, map[string]interface{}{
			"mode": "middleware", "outcome": "allow", "jti": "jti-delegated", "actors": []interface{}{"tool", "assistant"}}},
		{"DPoP", func() { send(proxy, "GET", "/v1/items?x=1", "127.0.0.1:1", dpopHeaders(bound, goodProof)) }, map[string]interface{}{
			"outcome": "allow", "dpop": true, "kind": "jwt", "jti": "jti-bound", "path": "/v1/items"}},
		{"DPoP, a proof for another path", func() { send(proxy, "GET", "/v1/items", "127.0.0.1:1", dpopHeaders(bound, wrongProof)) }, map[string]interface{}{
			"outcome": "deny", "reason": contract.ReasonInvalidProof, "dpop": true, "kind": absent}},
		{"metered, cost known", func() { send(proxy, "GET", "/v1/items/1", "127.0.0.1:1", bearer(metered)) }, map[string]interface{}{
			"outcome": "allow", "cost": 1.0, "held": absent}},
		{"metered, usage read later: held", func() { send(proxy, "GET", "/metered/x", "127.0.0.1:1", bearer(metered)) }, map[string]interface{}{
			"outcome": "allow", "route": "/metered", "held": 10.0, "cost": absent}},
		{"metered behind a gateway: cost", func() {
			send(auth, "GET", "/verify", "127.0.0.2:1", fwd("GET", "/metered/x?y=2", "Authorization", "Bearer "+metered))
		}, map[string]interface{}{
			"mode": "auth", "outcome": "allow", "cost": 1.0, "held": absent, "path": "/metered/x"}},
		{"gateway allow", func() {
			send(auth, "GET", "/verify", "127.0.0.2:1", fwd("POST", "/v1/things/1?q=1", "Authorization", "Bearer "+reader))
		}, map[string]interface{}{
			"mode": "auth", "outcome": "allow", "method": "POST", "path": "/v1/things/1", "route": "/v1", "client_ip": "127.0.0.2"}},
		{"untrusted gateway", func() {
			send(auth, "GET", "/verify", "127.0.0.1:1", fwd("GET", "/v1/items/1", "Authorization", "Bearer "+reader))
		}, map[string]interface{}{
			"mode": "auth", "outcome": "deny", "status": 403.0, "reason": contract.ReasonUntrustedGateway, "client_ip": "127.0.0.1", "path": absent, "kind": absent}},
		{"gateway request without its URI", func() { send(auth, "GET", "/verify", "127.0.0.2:1", hdr("X-Forwarded-Method", "GET")) }, map[string]interface{}{
			"mode": "auth", "reason": contract.ReasonBadRequest, "status": 400.0}},
		{"gRPC allow", func() {
			_ = check(t, gatewayAt(f.sc, "127.0.0.2"), checkRequest("GET", "/v1/items/1?q=x", "127.0.0.9", bearer(reader)))
		}, map[string]interface{}{"mode": "grpc", "outcome": "allow", "path": "/v1/items/1", "client_ip": "127.0.0.9", "jti": rc.ID}},
		{"gRPC untrusted peer", func() {
			_ = check(t, gatewayAt(f.sc, "127.0.0.1"), checkRequest("GET", "/v1/items/1", "127.0.0.9", bearer(reader)))
		}, map[string]interface{}{"mode": "grpc", "reason": contract.ReasonUntrustedGateway, "client_ip": "127.0.0.1", "path": absent}},
		{"gRPC repeated credential", func() {
			_ = check(t, gatewayAt(f.sc, "127.0.0.2"), checkRequest("GET", "/v1/items/1?x=1", "127.0.0.9", hdr("Authorization", "Bearer a", "Authorization", "Bearer b")))
		}, map[string]interface{}{"mode": "grpc", "reason": contract.ReasonBadRequest, "path": "/v1/items/1", "method": "GET"}},
	}
	for _, tc := range cases {
		tc.do()
	}
	raw, lines := readDecisionLog(t, f, path)
	if len(lines) != len(cases) {
		t.Fatalf("%d lines for %d decisions:\n%s", len(lines), len(cases), raw)
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := lines[i]
			for k, want := range tc.want {
				v, ok := got[k]
				switch {
				case want == absent && ok:
					t.Errorf("%s = %v, want it absent", k, v)
				case want != absent && !ok:
					t.Errorf("%s absent, want %v", k, want)
				case want != absent:
					if a, b := mustJSON(t, v), mustJSON(t, want); a != b {
						t.Errorf("%s = %s, want %s", k, a, b)
					}
				}
			}
			if t.Failed() {
				t.Logf("line: %s", mustJSON(t, got))
			}
		})
	}
	t.Run("never logged", func(t *testing.T) {
		for _, secret := range []string{reader, delegated, bound, metered, otherAud, otherIss, "other-service", "elsewhere", "jti-other", apiKey, goodProof, wrongProof, "access_token", "SECRETQ", "page=2", "q=x", "user:pw", "?", "Bearer", "DPoP "} {
			if bytes.Contains(raw, []byte(secret)) {
				t.Errorf("the decision log holds %.40q", secret)
			}
		}
		// Not even a part of a credential: its signature.
		for _, tok := range []string{reader, bound} {
			if sig := tok[strings.LastIndexByte(tok, '.')+1:]; bytes.Contains(raw, []byte(sig)) {
				t.Errorf("the decision log holds a JWT's signature")
			}
		}
	})
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the log file's mode: %v %v", fi.Mode(), err)
	}
}

func mustJSON(t *testing.T, v interface{}) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decision_log_sample_allowed = 0 logs no allow and every denial; 0.5
// about half the allows.
func TestDecisionLogSampling(t *testing.T) {
	for _, tc := range []struct {
		sample         float64
		allows         int
		minLog, maxLog int
	}{
		{0, 50, 0, 0},
		{0.5, 2000, 800, 1200},
		{1, 50, 50, 50},
	} {
		f, path := logFixture(t, func(c *Config) { c.DecisionLogSampleAllowed = &tc.sample })
		h := f.sc.proxyHandler()
		reader := f.jwt(t, "any read", time.Hour)
		for range tc.allows {
			send(h, "GET", "/v1/items/1", "127.0.0.1:1", hdr("Authorization", "Bearer "+reader))
		}
		const denials = 7
		for range denials {
			send(h, "GET", "/v1/admin/x", "127.0.0.1:1", hdr("Authorization", "Bearer "+reader))
		}
		_, lines := readDecisionLog(t, f, path)
		allowed, denied := 0, 0
		for _, l := range lines {
			if l["outcome"] == "allow" {
				allowed++
			} else {
				denied++
			}
		}
		if denied != denials || allowed < tc.minLog || allowed > tc.maxLog {
			t.Errorf("sample %v: %d of %d allows and %d of %d denials logged", tc.sample, allowed, tc.allows, denied, denials)
		}
	}
}

// The settings are checked, printed by -check-config, and a file that
// cannot be opened stops the sidecar at start.
func TestDecisionLogConfig(t *testing.T) {
	base := func(mutate func(c *Config)) *Config {
		c := &Config{Audiences: []string{"svc"}, Vault: &VaultConfig{Address: "http://127.0.0.1:1", RoleID: "r", SecretIDFile: "/nonexistent"}}
		mutate(c)
		return c
	}
	num := func(f float64) *float64 { return &f }
	for _, tc := range []struct {
		name    string
		mutate  func(c *Config)
		err     string
		printed map[string]interface{}
	}{
		{"off", func(c *Config) {}, "", map[string]interface{}{"decision_log_path": ""}},
		{"on, default sample", func(c *Config) { c.DecisionLogPath = "/var/log/keybroker/decisions.log" }, "",
			map[string]interface{}{"decision_log_path": "/var/log/keybroker/decisions.log", "decision_log_sample_allowed": 1.0}},
		{"stdout, sampled", func(c *Config) { c.DecisionLogPath, c.DecisionLogSampleAllowed = "-", num(0.25) }, "",
			map[string]interface{}{"decision_log_path": "-", "decision_log_sample_allowed": 0.25}},
		{"no allows", func(c *Config) { c.DecisionLogPath, c.DecisionLogSampleAllowed = "-", num(0) }, "",
			map[string]interface{}{"decision_log_sample_allowed": 0.0}},
		{"sample below 0", func(c *Config) { c.DecisionLogPath, c.DecisionLogSampleAllowed = "-", num(-0.1) }, "decision_log_sample_allowed must be between 0 and 1", nil},
		{"sample above 1", func(c *Config) { c.DecisionLogPath, c.DecisionLogSampleAllowed = "-", num(1.5) }, "decision_log_sample_allowed must be between 0 and 1", nil},
		{"sample without a log", func(c *Config) { c.DecisionLogSampleAllowed = num(0.5) }, "decision_log_sample_allowed needs decision_log_path", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := CheckConfig(base(tc.mutate))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var eff map[string]interface{}
			if err := json.Unmarshal(out, &eff); err != nil {
				t.Fatal(err)
			}
			for k, want := range tc.printed {
				if eff[k] != want {
					t.Errorf("%s = %v, want %v", k, eff[k], want)
				}
			}
			if _, ok := eff["decision_log_sample_allowed"]; ok && eff["decision_log_path"] == "" {
				t.Error("a sample printed for a log that is off")
			}
		})
	}
	// The HCL attributes are these.
	hcl := filepath.Join(t.TempDir(), "sidecar.hcl")
	if err := os.WriteFile(hcl, []byte("audiences = [\"svc\"]\ndecision_log_path = \"-\"\ndecision_log_sample_allowed = 0.1\nvault {\n  role_id = \"r\"\n  secret_id_file = \"/x\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := ParseConfigFile(hcl); err != nil || c.DecisionLogPath != "-" || c.DecisionLogSampleAllowed == nil || *c.DecisionLogSampleAllowed != 0.1 {
		t.Fatalf("parsed %+v, %v", c, err)
	}
	// A file that cannot be opened: a clear error at start.
	missing := filepath.Join(t.TempDir(), "no-such-dir", "decisions.log")
	if _, err := New(base(func(c *Config) { c.DecisionLogPath = missing; c.LogLevel = "off" }), nil); err == nil ||
		!strings.Contains(err.Error(), "decision_log_path") || !strings.Contains(err.Error(), missing) {
		t.Fatalf("an unopenable decision log: %v", err)
	}
}

// A full queue drops decisions, never blocks, and counts what it dropped
// in keybroker_sidecar_decision_log_dropped_total.
func TestDecisionLogDrops(t *testing.T) {
	f := newFixture(t, nil)
	// A log whose writer never runs: the queue holds 2.
	l := &decisionLog{ch: make(chan logEntry, 2), sample: 1, dropped: f.sc.m.decisionLogDropped}
	f.sc.dlog, f.sc.rec.log = l, l
	h := f.sc.proxyHandler()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 5 {
			send(h, "GET", "/v1/items/1", "127.0.0.1:1", nil)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a full decision log blocked requests")
	}
	if n := testutil.ToFloat64(f.sc.m.decisionLogDropped); n != 3 || len(l.ch) != 2 {
		t.Fatalf("dropped %v, queued %d; want 3 and 2", n, len(l.ch))
	}
	if n, err := testutil.GatherAndCount(f.sc.m.reg, "keybroker_sidecar_decision_log_dropped_total"); err != nil || n != 1 {
		t.Fatalf("metric not exported: %d %v", n, err)
	}
}

// The writer flushes within a second without being stopped, and Serve's
// shutdown flushes what is left.
func TestDecisionLogFlush(t *testing.T) {
	f, path := logFixture(t, nil)
	send(f.sc.proxyHandler(), "GET", "/v1/items/1", "127.0.0.1:1", nil)
	deadline := time.Now().Add(3 * time.Second)
	for {
		if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(contract.ReasonNoCredential)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing flushed within 3s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	f, path = logFixture(t, func(c *Config) { c.LogLevel = "off" })
	proxyL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	authL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.sc.Serve(ctx, Listeners{Proxy: proxyL, Auth: authL}) }()
	resp, err := http.Get("http://" + proxyL.Addr().String() + "/v1/admin/served")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return")
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte(`"path":"/v1/admin/served"`)) {
		t.Fatalf("Serve's shutdown did not flush the decision: %q", b)
	}
}

// Handing a decision to the log allocates nothing: the writer formats.
func TestDecisionLogHotPathAllocs(t *testing.T) {
	f := newFixture(t, nil)
	l := &decisionLog{ch: make(chan logEntry, 1000), sample: 0.5, dropped: f.sc.m.decisionLogDropped}
	tok := f.jwt(t, "any read", time.Hour)
	for _, target := range []string{"/v1/items/1?q=1", "/v1/admin/x", "/public/../x?y"} {
		req := request{method: "GET", target: target, header: hdr("Authorization", "DPoP "+tok), clientIP: netip.MustParseAddr("127.0.0.1")}
		d := f.sc.core.decide(context.Background(), request{method: "GET", target: target, header: hdr("Authorization", "Bearer "+tok), clientIP: req.clientIP})
		if n := testing.AllocsPerRun(100, func() { l.decided("proxy", time.Now(), &req, &d) }); n != 0 {
			t.Errorf("%s: %v allocations per decision logged", target, n)
		}
		for len(l.ch) > 0 {
			<-l.ch
		}
	}
}

// A decision's line, byte for byte: the wire format keybroker-audit reads
// (contract.DecisionRecord), with every field set and with none.
func TestDecisionLogRecordGolden(t *testing.T) {
	at := time.Date(2026, 12, 1, 22, 21, 2, 5000, time.FixedZone("CET", 3600))
	l := &decisionLog{holder: "sc-1"}
	line := func(e logEntry) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(l.record(&e)); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	full := logEntry{at: at, mode: "proxy", reason: "ok", method: "GET", status: 200, path: "/v1/<items>&[credential]", route: "/v1",
		kind: "jwt", keyID: "k", jti: "j", subject: "agent", role: "r", tenant: "t", actors: []string{"a", "b"},
		clientIP: netip.MustParseAddr("10.0.0.1"), cost: 0, hasCost: true, held: 7, dpop: true}
	if got, want := line(full), `{"time":"2026-12-01T21:21:02.000005000Z","type":"decision","mode":"proxy","outcome":"allow","status":200,"reason":"ok","method":"GET","path":"/v1/<items>&[credential]","route":"/v1","kind":"jwt","key_id":"k","jti":"j","subject":"agent","role":"r","tenant":"t","client_ip":"10.0.0.1","cost":0,"held":7,"dpop":true,"actors":["a","b"],"sidecar":"sc-1"}`+"\n"; got != want {
		t.Errorf("full record:\n got %s\nwant %s", got, want)
	}
	l.holder = ""
	if got, want := line(logEntry{at: at, mode: "auth", reason: "malformed", status: 401}), `{"time":"2026-12-01T21:21:02.000005000Z","type":"decision","mode":"auth","outcome":"deny","status":401,"reason":"malformed"}`+"\n"; got != want {
		t.Errorf("bare record:\n got %s\nwant %s", got, want)
	}
}
