package sidecar

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
	"github.com/keybroker/keybroker/sidecar/internal/dpopreplay"
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
	return sc.core.decide(context.Background(), request{method: method, target: target, header: h, clientIP: netip.MustParseAddr("127.0.0.1")})
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
	// Its header is remembered parsed: every refusal below is of a proof
	// by a key the sidecar already knows, checked whole all the same.
	if n := f.sc.dpop.keys.Len(); n != 1 {
		t.Fatalf("%d proof headers remembered after one proof", n)
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
		{"the same proof again", "GET", "/v1/items", dpopHeaders(tok, good), contract.ReasonProofReplayed},
		{"no proof", "GET", "/v1/items", dpopHeaders(tok, ""), contract.ReasonInvalidProof},
		{"a proof for another method", "DELETE", "/v1/things", dpopHeaders(tok, k.Proof(t, "GET", testOrigin+"/v1/things", tok, now, nil)), contract.ReasonInvalidProof},
		{"a proof for another path", "GET", "/v1/admin", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, nil)), contract.ReasonInvalidProof},
		{"a proof for another origin", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", "https://evil.example.com/v1/items", tok, now, nil)), contract.ReasonInvalidProof},
		{"a proof by another key", "GET", "/v1/items", dpopHeaders(tok, other.Proof(t, "GET", url, tok, now, nil)), contract.ReasonInvalidProof},
		{"a proof for another token", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, "another", now, nil)), contract.ReasonInvalidProof},
		{"a stale proof", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now.Add(-2*time.Minute), nil)), contract.ReasonInvalidProof},
		{"alg none", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(h, _ map[string]interface{}) { h["alg"] = "none" })), contract.ReasonInvalidProof},
		{"HS256", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(h, _ map[string]interface{}) { h["alg"] = "HS256" })), contract.ReasonInvalidProof},
		{"a jwk with its private part", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(h, _ map[string]interface{}) { h["jwk"] = priv })), contract.ReasonInvalidProof},
		{"an oversize proof", "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, now, func(_, c map[string]interface{}) { c["pad"] = strings.Repeat("x", 8<<10) })), contract.ReasonInvalidProof},
		{"the bound token as a bearer", "GET", "/v1/items", http.Header{"Authorization": {"Bearer " + tok}, "Dpop": {k.Proof(t, "GET", url, tok, now, nil)}}, contract.ReasonDPoPRequired},
		{"the bound token as X-API-Key", "GET", "/v1/items", http.Header{"X-Api-Key": {tok}}, contract.ReasonDPoPRequired},
		{"an unbound token with the DPoP scheme", "GET", "/v1/items", dpopHeaders(f.jwt(t, "read", time.Hour), k.Proof(t, "GET", url, f.jwt(t, "read", time.Hour), now, nil)), contract.ReasonDPoPNotBound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := decideWith(f.sc, tt.method, tt.target, tt.h)
			if d.allowed() || d.reason != tt.want || d.status != http.StatusUnauthorized {
				t.Fatalf("got %d %s, want 401 %s", d.status, d.reason, tt.want)
			}
			w := httptest.NewRecorder()
			f.sc.writeDenial(w, d, false)
			wantCode := "invalid_token"
			if tt.want == contract.ReasonInvalidProof || tt.want == contract.ReasonProofReplayed {
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
	if admin.reason != contract.ReasonInsufficientScope || !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "DPoP ") {
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
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, proof)); d.reason != contract.ReasonDPoPDisabled {
		t.Fatalf("DPoP without public_origin: %s", d.reason)
	}
	if d := decideWith(f.sc, "GET", "/v1/items", http.Header{"Authorization": {"Bearer " + tok}}); d.reason != contract.ReasonDPoPRequired {
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

// One client holding many bound keys (each a lineage of its own) fills
// only its own share: another client's proofs still pass (issue 23: eight
// keys of one client once took the whole cache for 91 s).
func TestDPoPReplayFairAcrossClients(t *testing.T) {
	f := dpopFixture(t)
	f.sc.dpop.replay = dpopreplay.New(1000) // 31 per lineage, 125 per client
	url := testOrigin + "/v1/items"
	attacker := netip.MustParseAddr("127.0.0.66")
	var refused, allowed int
	for i := range 40 {
		k := dpoptest.NewKey(t, "ES256")
		c := f.claims("read", time.Hour)
		c.ID, c.Subject, c.Cnf = "jti-attacker-"+strconv.Itoa(i), "attacker-"+strconv.Itoa(i), &jwtverify.Confirmation{JKT: k.JKT}
		tok := f.sign(t, c)
		for range 30 { // under the lineage's share: 40 keys' worth is more than the cache
			d := f.sc.core.decide(context.Background(), request{method: "GET", target: "/v1/items", header: dpopHeaders(tok, k.Proof(t, "GET", url, tok, time.Now(), nil)), clientIP: attacker})
			switch {
			case d.allowed():
				allowed++
			case d.status == http.StatusTooManyRequests:
				refused++
			default:
				t.Fatalf("attacker: %d %s", d.status, d.reason)
			}
		}
	}
	if allowed != 125 || refused != 40*30-125 {
		t.Fatalf("one client address: %d allowed, %d refused; want its share, 125", allowed, refused)
	}
	for i := range 5 {
		k := dpoptest.NewKey(t, "ES256")
		c := f.claims("read", time.Hour)
		c.ID, c.Subject, c.Cnf = "jti-honest-"+strconv.Itoa(i), "honest-"+strconv.Itoa(i), &jwtverify.Confirmation{JKT: k.JKT}
		tok := f.sign(t, c)
		ip := netip.MustParseAddr("127.0.1." + strconv.Itoa(i+1))
		for range 20 {
			if d := f.sc.core.decide(context.Background(), request{method: "GET", target: "/v1/items", header: dpopHeaders(tok, k.Proof(t, "GET", url, tok, time.Now(), nil)), clientIP: ip}); !d.allowed() {
				t.Fatalf("another client, after the first filled its share: %d %s", d.status, d.reason)
			}
		}
	}
}

// Two requests with one proof at once: exactly one passes, whatever the
// order in which they reach the record (it is the last step of decide).
func TestDPoPConcurrentReplay(t *testing.T) {
	f := dpopFixture(t)
	k := dpoptest.NewKey(t, "ES256")
	tok := f.boundJWT(t, k, "jti-race")
	url := testOrigin + "/v1/items"
	// Both past the early check (has) before either is recorded: the
	// record itself must refuse the second.
	proof := k.Proof(t, "GET", url, tok, time.Now(), nil)
	p := presentation{cred: tok, dpop: true, proof: proof, method: "GET", rawPath: "/v1/items", clientIP: netip.MustParseAddr("127.0.0.1")}
	id1, d1 := f.sc.core.authn.of(&p).authenticate(context.Background(), p)
	id2, d2 := f.sc.core.authn.of(&p).authenticate(context.Background(), p)
	if id1 == nil || id2 == nil || d1.proofID == "" || d1.proofID != d2.proofID {
		t.Fatalf("authenticate: %v %v %+v %+v", id1, id2, d1, d2)
	}
	if _, ok := f.sc.dpop.record(d1.proofID, id1, p.clientIP); !ok {
		t.Fatal("the first record was refused")
	}
	if d, ok := f.sc.dpop.record(d2.proofID, id2, p.clientIP); ok || d.reason != contract.ReasonProofReplayed {
		t.Fatalf("the second record of one proof: %v %s", ok, d.reason)
	}
	for round := range 20 {
		proof := k.Proof(t, "GET", url, tok, time.Now(), nil)
		var wg sync.WaitGroup
		var passed atomic.Int32
		start := make(chan struct{})
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, proof)).allowed() {
					passed.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if n := passed.Load(); n != 1 {
			t.Fatalf("round %d: %d requests with one proof passed", round, n)
		}
	}
}

// A proof is recorded only after the budget: a request refused for its
// budget (here Vault cannot be reached for a reservation) leaves nothing in
// the cache, so a spent credential cannot fill it.
func TestDPoPProofNotRecordedWhenBudgetRefuses(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.PublicOrigin = testOrigin
		c.Routes = []RouteConfig{{PathPrefix: "/v1/", Scopes: []string{"read"}, Cost: ptr(int64(1))}}
	})
	k := dpoptest.NewKey(t, "ES256")
	c := f.claims("read", time.Hour)
	c.ID, c.Cnf, c.Budget = "jti-metered", &jwtverify.Confirmation{JKT: k.JKT}, &jwtverify.Budget{Units: 10, Period: 3600, MaxCost: 1}
	tok := f.sign(t, c)
	for range 3 {
		d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", testOrigin+"/v1/items", tok, time.Now(), nil)))
		if d.allowed() || d.reason == contract.ReasonProofReplayed {
			t.Fatalf("a metered request with no budget to be had: %d %s", d.status, d.reason)
		}
	}
	if n := f.sc.dpop.replay.Len(); n != 0 {
		t.Fatalf("%d proofs of requests refused for their budget remembered", n)
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
	f.sc.revocations.revoked.Add("jti-revoked", time.Now().Add(time.Hour))
	for range 3 {
		p := k.Proof(t, "GET", testOrigin+"/v1/items", tok, time.Now(), nil)
		if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, p)); d.reason != contract.ReasonRevoked {
			t.Fatalf("a revoked bound token: %s", d.reason)
		}
	}
	if n := f.sc.dpop.replay.Len(); n != 0 {
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
		if d := decideWith(f.sc, "GET", "/v1/items", h); d.reason != contract.ReasonDPoPRequired {
			t.Errorf("a bound key %s: %d %s", name, d.status, d.reason)
		}
	}
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(key, dpoptest.NewKey(t, "ES256").Proof(t, "GET", url, key, now, nil))); d.reason != contract.ReasonInvalidProof {
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
		if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, captured)); d.reason != contract.ReasonProofReplayed {
			t.Fatalf("a replay: %s", d.reason)
		}
	}
	if d := decideWith(f.sc, "GET", "/v1/items", dpopHeaders(tok, k.Proof(t, "GET", url, tok, time.Now(), nil))); !d.allowed() {
		t.Fatalf("the holder's second request after replays: %d %s", d.status, d.reason)
	}
}
