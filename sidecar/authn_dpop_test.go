package sidecar

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

const testOrigin = "https://api.example.com"

func dpopFixture(t *testing.T) *fixture {
	return newFixture(t, func(c *Config) { c.PublicOrigin = testOrigin })
}

// boundJWT is a token bound to k, with scopes read.
func (f *fixture) boundJWT(t *testing.T, k *dpoptest.Key, id string) string {
	c := f.claims("read", time.Hour)
	c.ID, c.Cnf = id, &jwtverify.Confirmation{JKT: k.JKT}
	return f.sign(t, c)
}

func decideWith(sc *Sidecar, method, target string, h http.Header) decision {
	return sc.decide(context.Background(), request{method: method, target: target, header: h, clientIP: netip.MustParseAddr("127.0.0.1")})
}

func dpopHeaders(token, proof string) http.Header {
	h := http.Header{"Authorization": {"DPoP " + token}}
	if proof != "" {
		h.Set("DPoP", proof)
	}
	return h
}

// A DPoP-bound token works only with a fresh proof by its key for the very
// request, once; every way of lying about the request, the key or the time
// is refused with invalid_dpop_proof, and the challenge says DPoP.
func TestDPoPBoundJWT(t *testing.T) {
	f := dpopFixture(t)
	k, other := dpoptest.NewKey(t, "ES256"), dpoptest.NewKey(t, "EdDSA")
	tok := f.boundJWT(t, k, "jti-bound")
	now := time.Now()
	url := testOrigin + "/v1/items"

	good := k.Proof(t, "GET", url, tok, now, nil)
	d := decideWith(f.sc, "GET", "/v1/items?page=2", dpopHeaders(tok, good))
	if !d.allowed() || d.id.jkt != k.JKT {
		t.Fatalf("a good proof: %+v", d)
	}
	// htu names the URI however the client spelled it.
	for _, htu := range []string{"https://API.example.com:443/v1/items", "https://api.example.com/v1/%69tems"} {
		if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", htu, tok, now, nil))); !d.allowed() {
			t.Fatalf("htu %s: %s", htu, d.reason)
		}
	}

	priv := k.PrivateJWK(t)
	for _, tt := range []struct {
		name           string
		method, target string
		h              http.Header
		want           string
	}{
		{"the same proof again", "GET", "/v1/items", dpopHeaders(tok, good), reasonProofReplayed},
		{"no proof", "GET", "/v1/items", dpopHeaders(tok, ""), reasonInvalidProof},
		{"a proof for another method", "DELETE", "/v1/things", dpopHeaders(tok, k.Proof(t, "GET", testOrigin+"/v1/things", tok, now, nil)), reasonInvalidProof},
		{"a proof for another path", "GET", "/v1/admin", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, nil)), reasonInvalidProof},
		{"a proof for another origin", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", "https://evil.example.com/v1/items", tok, now, nil)), reasonInvalidProof},
		{"a proof by another key", "GET", "/v1/items", dpopHeaders(tok, other.Proof(t, "GET", url, tok, now, nil)), reasonInvalidProof},
		{"a proof for another token", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, "another", now, nil)), reasonInvalidProof},
		{"a stale proof", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now.Add(-2*time.Minute), nil)), reasonInvalidProof},
		{"alg none", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(h, _ map[string]interface{}) { h["alg"] = "none" })), reasonInvalidProof},
		{"HS256", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(h, _ map[string]interface{}) { h["alg"] = "HS256" })), reasonInvalidProof},
		{"a jwk with its private part", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(h, _ map[string]interface{}) { h["jwk"] = priv })), reasonInvalidProof},
		{"an oversize proof", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(_, c map[string]interface{}) { c["pad"] = strings.Repeat("x", 8<<10) })), reasonInvalidProof},
		{"the bound token as a bearer", "GET", "/v1/items", http.Header{"Authorization": {"Bearer " + tok}, "Dpop": {k.Proof(t, "GET", url, tok, now, nil)}}, reasonDPoPRequired},
		{"the bound token as X-API-Key", "GET", "/v1/items", http.Header{"X-Api-Key": {tok}}, reasonDPoPRequired},
		{"an unbound token with the DPoP scheme", "GET", "/v1/items", dpopHeaders(f.jwt(t, "read", time.Hour), k.Proof(t, "GET", url, f.jwt(t, "read", time.Hour), now, nil)), reasonDPoPNotBound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := decideWith(f.sc, tt.method, tt.target, tt.h)
			if d.allowed() || d.reason != tt.want || d.status != http.StatusUnauthorized {
				t.Fatalf("got %d %s, want 401 %s", d.status, d.reason, tt.want)
			}
			w := httptest.NewRecorder()
			f.sc.writeDenial(w, d, false)
			wantCode := "invalid_token"
			if tt.want == reasonInvalidProof || tt.want == reasonProofReplayed {
				wantCode = "invalid_dpop_proof"
			}
			if c := w.Header().Get("WWW-Authenticate"); !strings.HasPrefix(c, `DPoP algs="ES256 `) || !strings.Contains(c, `error="`+wantCode+`"`) {
				t.Fatalf("challenge %q, want DPoP with error=%s", c, wantCode)
			}
		})
	}

	// Denials after the proof answer in the DPoP scheme too.
	admin := decideWith(f.sc, "GET", "/v1/admin", dpopHeaders(tok, k.Proof(t, "GET", testOrigin+"/v1/admin", tok, now, nil)))
	w := httptest.NewRecorder()
	f.sc.writeDenial(w, admin, false)
	if admin.reason != reasonInsufficientScope || !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "DPoP ") {
		t.Fatalf("scope denial: %s %q", admin.reason, w.Header().Get("WWW-Authenticate"))
	}
	// A request without a credential learns both schemes.
	w = httptest.NewRecorder()
	f.sc.writeDenial(w, decideWith(f.sc, "GET", "/v1/items", http.Header{}), false)
	if c := w.Header().Get("WWW-Authenticate"); c != `Bearer realm="keybroker", scope="read", DPoP algs="ES256 ES384 EdDSA Ed25519 RS256 PS256"` {
		t.Fatalf("no-credential challenge %q", c)
	}
}

// Without public_origin the sidecar cannot check htu: DPoP is off, and a
// bound token is refused every way it comes.
func TestDPoPOff(t *testing.T) {
	f := newFixture(t, nil)
	k := dpoptest.NewKey(t, "ES256")
	tok := f.boundJWT(t, k, "jti-off")
	proof := k.Proof(t, "GET", testOrigin+"/v1/items", tok, time.Now(), nil)
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, proof)); d.reason != reasonDPoPDisabled {
		t.Fatalf("DPoP without public_origin: %s", d.reason)
	}
	if d := decideWith(f.sc, "GET", "/v1/items", http.Header{"Authorization": {"Bearer " + tok}}); d.reason != reasonDPoPRequired {
		t.Fatalf("a bound token as a bearer: %s", d.reason)
	}
	w := httptest.NewRecorder()
	f.sc.writeDenial(w, decideWith(f.sc, "GET", "/v1/items", http.Header{}), false)
	if c := w.Header().Get("WWW-Authenticate"); c != `Bearer realm="keybroker", scope="read"` {
		t.Fatalf("no-credential challenge without DPoP: %q", c)
	}
}

func TestPublicOriginConfig(t *testing.T) {
	for in, want := range map[string]string{
		"https://API.example.com":      "https://api.example.com",
		"https://api.example.com:443/": "https://api.example.com",
		"http://127.0.0.1:8080":        "http://127.0.0.1:8080",
	} {
		if got, err := parsePublicOrigin(in); err != nil || got != want {
			t.Errorf("public_origin %q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"api.example.com", "https://api.example.com/v1", "https://api.example.com?x", "ftp://x", "https://u@api.example.com"} {
		if _, err := parsePublicOrigin(bad); err == nil {
			t.Errorf("public_origin %q: accepted", bad)
		}
	}
	base := func(c *Config) *Config {
		c.Audiences, c.Vault = []string{"svc"}, &VaultConfig{Address: "http://127.0.0.1:1", RoleID: "r", SecretIDFile: "/x"}
		return c
	}
	for _, c := range []*Config{
		base(&Config{DPoPProofMaxAge: "30s"}),
		base(&Config{PublicOrigin: testOrigin, DPoPProofMaxAge: "10m"}),
		base(&Config{PublicOrigin: testOrigin, DPoPReplayCacheSize: 10}),
	} {
		if _, err := c.settings(); err == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
}

// The replay cache refuses a second use while a proof could pass, forgets
// it after, holds at most quota entries of one lineage, and when full
// refuses new proofs rather than forget live ones.
func TestReplayCache(t *testing.T) {
	c := newReplayCache(16) // quota 2
	now := time.Now()
	forget := now.Add(time.Minute)
	if c.add("a", "x", forget, now) != nil || c.add("a", "y", forget, now) != errReplayed {
		t.Fatal("a second use was not refused")
	}
	if c.add("b", "x", forget, now) != nil || c.add("c", "x", forget, now) != errReplayMany {
		t.Fatal("one lineage took more than its quota")
	}
	for i := range 14 {
		if err := c.add(strconv.Itoa(i), strconv.Itoa(i), forget, now); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	if c.add("d", "z", forget, now) != errReplayFull {
		t.Fatal("a full cache took a new proof")
	}
	later := now.Add(time.Minute)
	if c.add("a", "x", later.Add(time.Minute), later) != nil || c.add("c", "x", later.Add(time.Minute), later) != nil {
		t.Fatal("expired entries were not forgotten")
	}
	if len(c.seen) != 2 || c.held["x"] != 2 || len(c.held) != 1 {
		t.Fatalf("%d entries held, by owner %v", len(c.seen), c.held)
	}
}

// A proof is remembered only for a request that is otherwise allowed: a
// revoked credential's proofs do not fill the cache, and a proof refused
// for its scope may not be replayed onto an allowed request later either
// way (it names its path).
func TestDPoPProofRememberedOnlyWhenAllowed(t *testing.T) {
	f := dpopFixture(t)
	k := dpoptest.NewKey(t, "ES256")
	tok := f.boundJWT(t, k, "jti-revoked")
	f.sc.revoked.add("jti-revoked", time.Now().Add(time.Hour))
	for range 3 {
		p := k.Proof(t, "GET", testOrigin+"/v1/items", tok, time.Now(), nil)
		if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, p)); d.reason != reasonRevoked {
			t.Fatalf("a revoked bound token: %s", d.reason)
		}
	}
	if n := len(f.sc.dpop.replay.seen); n != 0 {
		t.Fatalf("%d proofs of a revoked token remembered", n)
	}
}

// The proof never reaches the upstream, with the credential.
func TestDPoPHeaderStripped(t *testing.T) {
	h := http.Header{"Authorization": {"DPoP t"}, "Dpop": {"p"}, "Accept": {"*/*"}}
	stripCredentialAndIdentity(h)
	if h.Get("DPoP") != "" || h.Get("Authorization") != "" || h.Get("Accept") == "" {
		t.Fatalf("after strip: %v", h)
	}
}

// An API key bound to a key pair is, like a bound token, useless alone:
// as a bearer or X-API-Key it is refused; with the DPoP scheme and a
// proof for it (ath over the key) it is served.
func TestDPoPBoundAPIKey(t *testing.T) {
	f := dpopFixture(t)
	k := dpoptest.NewKey(t, "ES256")
	key, rec := testKey(t, time.Now().Add(-time.Hour), "web", "", "any", "read")
	rec.JKT = k.JKT
	synced(f.sc, rec)
	now := time.Now()
	url := testOrigin + "/v1/items"
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(key, k.Proof(t, "GET", url, key, now, nil))); !d.allowed() || d.id.jkt != k.JKT {
		t.Fatalf("a bound key with its proof: %d %s", d.status, d.reason)
	}
	for name, h := range map[string]http.Header{
		"as a bearer":      {"Authorization": {"Bearer " + key}},
		"as X-API-Key":     {"X-Api-Key": {key}},
		"bearer and proof": {"Authorization": {"Bearer " + key}, "Dpop": {k.Proof(t, "GET", url, key, now, nil)}},
	} {
		if d := decideWith(f.sc, "GET", "/v1/items", h); d.reason != reasonDPoPRequired {
			t.Errorf("a bound key %s: %d %s", name, d.status, d.reason)
		}
	}
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(key, dpoptest.NewKey(t, "ES256").Proof(t, "GET", url, key, now, nil))); d.reason != reasonInvalidProof {
		t.Fatalf("a bound key with a thief's proof: %s", d.reason)
	}
	// A record whose jkt is not a thumbprint is not read: the key is
	// refused, never served unbound.
	bad, badRec := testKey(t, time.Now().Add(-time.Hour), "web", "", "any")
	badRec.JKT = "not-a-thumbprint"
	synced(f.sc, badRec)
	if d := decideWith(f.sc, "GET", "/v1/items", http.Header{"X-Api-Key": {bad}}); d.allowed() {
		t.Fatal("a key whose binding could not be read was served")
	}
}

// A captured proof replayed is refused before the rate limit: replays
// cannot spend the holder's requests.
func TestDPoPReplayTakesNoRate(t *testing.T) {
	f := dpopFixture(t)
	k := dpoptest.NewKey(t, "ES256")
	c := f.claims("read", time.Hour)
	c.ID, c.Cnf, c.Rate = "jti-rated", &jwtverify.Confirmation{JKT: k.JKT}, &jwtverify.RateLimit{PerSecond: 0.01, Burst: 2}
	tok := f.sign(t, c)
	url := testOrigin + "/v1/items"
	captured := k.Proof(t, "GET", url, tok, time.Now(), nil)
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, captured)); !d.allowed() {
		t.Fatalf("the holder's first request: %s", d.reason)
	}
	for range 3 {
		if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, captured)); d.reason != reasonProofReplayed {
			t.Fatalf("a replay: %s", d.reason)
		}
	}
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, time.Now(), nil))); !d.allowed() {
		t.Fatalf("the holder's second request after replays: %d %s", d.status, d.reason)
	}
}
