package jwtverify

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type testKeys struct {
	ed, es, rs       crypto.Signer
	set              *KeySet
	now              time.Time
	issuer, audience string
}

func newTestKeys(t testing.TB) *testKeys {
	t.Helper()
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	es, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewKeySet(
		Key{ID: "ed", Alg: AlgEdDSA, Public: ed.Public()},
		Key{ID: "es", Alg: AlgES256, Public: es.Public()},
		Key{ID: "rs", Alg: AlgRS256, Public: rs.Public()},
	)
	if err != nil {
		t.Fatal(err)
	}
	return &testKeys{ed: ed, es: es, rs: rs, set: set, now: time.Unix(1_800_000_000, 0),
		issuer: "https://vault.example/v1/keybroker", audience: "billing"}
}

func (k *testKeys) claims() Claims {
	return Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    k.issuer,
			Subject:   "entity-1",
			Audience:  jwt.ClaimStrings{k.audience},
			ExpiresAt: jwt.NewNumericDate(k.now.Add(5 * time.Minute)),
			IssuedAt:  jwt.NewNumericDate(k.now),
			NotBefore: jwt.NewNumericDate(k.now),
			ID:        "jti-1",
		},
		Scope: "read write",
		Role:  "agent",
	}
}

// sign signs claims with the named key, letting mutate change the header.
func (k *testKeys) sign(t testing.TB, kid string, c Claims, mutate func(h map[string]any)) string {
	t.Helper()
	var method jwt.SigningMethod
	var priv crypto.Signer
	switch kid {
	case "ed":
		method, priv = jwt.SigningMethodEdDSA, k.ed
	case "es":
		method, priv = jwt.SigningMethodES256, k.es
	case "rs":
		method, priv = jwt.SigningMethodRS256, k.rs
	}
	tok := jwt.NewWithClaims(method, c)
	tok.Header["kid"] = kid
	tok.Header["typ"] = TokenType
	if mutate != nil {
		mutate(tok.Header)
	}
	s, err := tok.SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (k *testKeys) verifier(t testing.TB) *Verifier {
	v, err := NewVerifier(Config{Issuer: k.issuer, Audiences: []string{k.audience}, Leeway: 30 * time.Second, Now: func() time.Time { return k.now }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestVerify(t *testing.T) {
	k := newTestKeys(t)
	v := k.verifier(t)
	good := k.sign(t, "ed", k.claims(), nil)
	with := func(f func(c *Claims)) Claims { c := k.claims(); f(&c); return c }
	hdr := func(key string, val any) func(map[string]any) {
		return func(h map[string]any) { h[key] = val }
	}
	parts := strings.Split(good, ".")

	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"EdDSA", good, nil},
		{"ES256", k.sign(t, "es", k.claims(), nil), nil},
		{"RS256", k.sign(t, "rs", k.claims(), nil), nil},
		{"typ application/at+jwt", k.sign(t, "ed", k.claims(), hdr("typ", "application/AT+JWT")), nil},
		{"nbf within leeway", k.sign(t, "ed", with(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(k.now.Add(20 * time.Second)) }), nil), nil},
		{"expired", k.sign(t, "ed", with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(k.now.Add(-time.Minute)) }), nil), ErrExpired},
		{"nbf beyond leeway", k.sign(t, "ed", with(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(k.now.Add(time.Minute)) }), nil), ErrNotYetValid},
		{"iat in the future", k.sign(t, "ed", with(func(c *Claims) { c.IssuedAt = jwt.NewNumericDate(k.now.Add(time.Minute)) }), nil), ErrNotYetValid},
		{"no exp", k.sign(t, "ed", with(func(c *Claims) { c.ExpiresAt = nil }), nil), ErrClaims},
		{"no aud", k.sign(t, "ed", with(func(c *Claims) { c.Audience = nil }), nil), ErrClaims},
		{"no jti", k.sign(t, "ed", with(func(c *Claims) { c.ID = "" }), nil), ErrClaims},
		{"wrong aud", k.sign(t, "ed", with(func(c *Claims) { c.Audience = jwt.ClaimStrings{"other"} }), nil), ErrAudience},
		{"wrong iss", k.sign(t, "ed", with(func(c *Claims) { c.Issuer = "https://evil" }), nil), ErrIssuer},
		{"no typ", k.sign(t, "ed", k.claims(), func(h map[string]any) { delete(h, "typ") }), ErrType},
		{"typ JWT", k.sign(t, "ed", k.claims(), hdr("typ", "JWT")), ErrType},
		{"unknown kid", k.sign(t, "ed", k.claims(), hdr("kid", "nope")), ErrUnknownKey},
		{"no kid", k.sign(t, "ed", k.claims(), func(h map[string]any) { delete(h, "kid") }), ErrUnknownKey},
		{"alg of another key", k.sign(t, "es", k.claims(), hdr("kid", "ed")), ErrAlgorithm},
		{"jwk header", k.sign(t, "ed", k.claims(), hdr("jwk", map[string]any{"kty": "OKP"})), ErrHeader},
		{"jku header", k.sign(t, "ed", k.claims(), hdr("jku", "https://evil/jwks")), ErrHeader},
		{"x5u header", k.sign(t, "ed", k.claims(), hdr("x5u", "https://evil/cert")), ErrHeader},
		{"x5c header", k.sign(t, "ed", k.claims(), hdr("x5c", []string{"MII"})), ErrHeader},
		{"crit header", k.sign(t, "ed", k.claims(), hdr("crit", []string{"exp"})), ErrHeader},
		{"alg none", b64(`{"alg":"none","kid":"ed","typ":"at+jwt"}`) + "." + parts[1] + ".", ErrMalformed},
		{"alg none with sig", b64(`{"alg":"none","kid":"ed","typ":"at+jwt"}`) + "." + parts[1] + "." + parts[2], ErrAlgorithm},
		{"HS256 with the public key", hs256WithPublicKey(t, k, parts[1]), ErrAlgorithm},
		{"tampered payload", parts[0] + "." + b64(`{"iss":"x"}`) + "." + parts[2], ErrSignature},
		{"padding", good + "=", ErrMalformed},
		{"newline in segment", parts[0] + "\n." + parts[1] + "." + parts[2], ErrMalformed},
		{"four parts", good + ".x", ErrMalformed},
		{"JSON serialization", `{"payload":"` + parts[1] + `","signatures":[]}`, ErrMalformed},
		{"too large", parts[0] + "." + strings.Repeat("A", DefaultMaxTokenSize) + "." + parts[2], ErrTooLarge},
		{"empty", "", ErrMalformed},
		{"act chain", k.sign(t, "ed", with(func(c *Claims) { c.Act = chain(MaxActors) }), nil), nil},
		{"act chain too long", k.sign(t, "ed", with(func(c *Claims) { c.Act = chain(MaxActors + 1) }), nil), ErrClaims},
		{"act without sub", k.sign(t, "ed", with(func(c *Claims) { c.Act = &Actor{Act: &Actor{Subject: "a"}} }), nil), ErrClaims},
		{"nested act without sub", k.sign(t, "ed", with(func(c *Claims) { c.Act = &Actor{Subject: "a", Act: &Actor{}} }), nil), ErrClaims},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(tc.token, k.set)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
			if tc.want == nil && (c.Subject != "entity-1" || strings.Join(c.Scopes(), ",") != "read,write") {
				t.Fatalf("claims = %+v", c)
			}
		})
	}
}

// chain is an act claim of n actors, actor-n outermost.
func chain(n int) *Actor {
	var a *Actor
	for i := 1; i <= n; i++ {
		a = &Actor{Subject: fmt.Sprintf("actor-%d", i), Act: a}
	}
	return a
}

func TestActors(t *testing.T) {
	c := Claims{Act: chain(3)}
	if got := strings.Join(c.Actors(), ","); got != "actor-3,actor-2,actor-1" {
		t.Fatalf("Actors = %s, want the current actor first", got)
	}
	if (&Claims{}).Actors() != nil {
		t.Fatal("no act: Actors not nil")
	}
}

// hs256WithPublicKey forges the classic confusion attack: an HMAC over the
// token keyed with the verifier's public key bytes.
func hs256WithPublicKey(t *testing.T, k *testKeys, payload string) string {
	header := b64(`{"alg":"HS256","kid":"ed","typ":"at+jwt"}`)
	sig, err := jwt.SigningMethodHS256.Sign(header+"."+payload, []byte(k.ed.Public().(ed25519.PublicKey)))
	if err != nil {
		t.Fatal(err)
	}
	return header + "." + payload + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestNewVerifierRejectsBadConfig(t *testing.T) {
	if _, err := NewVerifier(Config{}); err == nil {
		t.Error("no issuer accepted")
	}
	if _, err := NewVerifier(Config{Issuer: "x", Leeway: 2 * time.Minute}); err == nil {
		t.Error("leeway above 60s accepted")
	}
}

func TestKeySetRejectsMismatchedKeys(t *testing.T) {
	k := newTestKeys(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for name, key := range map[string]Key{
		"ed key as ES256":  {ID: "a", Alg: AlgES256, Public: k.ed.Public()},
		"P-384 as ES256":   {ID: "a", Alg: AlgES256, Public: p384.Public()},
		"RSA 1024":         {ID: "a", Alg: AlgRS256, Public: small.Public()},
		"HS256":            {ID: "a", Alg: "HS256", Public: []byte("secret")},
		"none":             {ID: "a", Alg: "none", Public: k.ed.Public()},
		"no kid":           {Alg: AlgEdDSA, Public: k.ed.Public()},
		"RSA as EdDSA alg": {ID: "a", Alg: AlgEdDSA, Public: k.rs.Public()},
	} {
		if _, err := NewKeySet(key); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewKeySet(Key{ID: "a", Alg: AlgEdDSA, Public: k.ed.Public()}, Key{ID: "a", Alg: AlgEdDSA, Public: k.ed.Public()}); err == nil {
		t.Error("duplicate kid accepted")
	}
}

func TestJWKSRoundTrip(t *testing.T) {
	k := newTestKeys(t)
	keys := []Key{}
	for _, id := range []string{"ed", "es", "rs"} {
		key, _ := k.set.Lookup(id)
		keys = append(keys, key)
	}
	b, err := MarshalJWKS(keys)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"d"`) {
		t.Fatal("JWKS contains private key material")
	}
	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	_ = json.Unmarshal(b, &doc)
	for _, jwk := range doc.Keys {
		if jwk["use"] != "sig" || jwk["alg"] == nil || jwk["kid"] == nil {
			t.Fatalf("JWK lacks use/alg/kid: %v", jwk)
		}
	}
	set, err := ParseJWKS(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.verifier(t).Verify(k.sign(t, "es", k.claims(), nil), set); err != nil {
		t.Fatalf("token does not verify against the round-tripped JWKS: %v", err)
	}
	for name, doc := range map[string]string{
		"use enc":         `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a","alg":"EdDSA","use":"enc"}]}`,
		"key_ops encrypt": `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a","alg":"EdDSA","key_ops":["encrypt"]}]}`,
		"no alg":          `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a"}]}`,
		"private key":     `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","kid":"a","alg":"EdDSA"}]}`,
		"oct key":         `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a","alg":"HS256"}]}`,
		"duplicate kid":   `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a","alg":"EdDSA"},{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a","alg":"EdDSA"}]}`,
	} {
		if _, err := ParseJWKS([]byte(doc)); err == nil {
			t.Errorf("%s: ParseJWKS accepted it", name)
		}
	}
}

// FuzzVerifySignature feeds hostile JWS/JWT strings (go-jose's fuzz seeds,
// in testdata/fuzz) to the signature layer. It must never panic, and with
// Ed25519 (non-malleable) and strict base64url, the one token that was
// signed is the only input that verifies.
func FuzzVerifySignature(f *testing.F) {
	k := newTestKeys(f)
	good := k.sign(f, "ed", k.claims(), nil)
	f.Add(good)
	addFuzzSeeds(f)
	v := k.verifier(f)
	f.Fuzz(func(t *testing.T, token string) {
		_, _, err := VerifySignature(token, k.set, 0)
		if err == nil && token != good {
			t.Fatalf("a token that was never signed verified: %q", token)
		}
		if c, err := v.Verify(token, k.set); err == nil && (token != good || c == nil) {
			t.Fatalf("Verify accepted %q", token)
		}
	})
}

func BenchmarkVerifyEdDSA(b *testing.B) {
	k := newTestKeys(b)
	v := k.verifier(b)
	token := k.sign(b, "ed", k.claims(), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(token, k.set); err != nil {
			b.Fatal(err)
		}
	}
}

// A verifier that checks no proof never takes a bound token for a bearer
// one: tokens with cnf are refused unless AcceptBound, and a cnf without a
// jkt (a confirmation method nothing here checks) is refused always.
func TestVerifyBoundTokens(t *testing.T) {
	k := newTestKeys(t)
	c := k.claims()
	c.Cnf = &Confirmation{JKT: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"}
	bound := k.sign(t, "ed", c, nil)
	if _, err := k.verifier(t).Verify(bound, k.set); !errors.Is(err, ErrBound) {
		t.Fatalf("a bound token without AcceptBound: %v", err)
	}
	v, err := NewVerifier(Config{Issuer: k.issuer, Audiences: []string{k.audience}, Now: func() time.Time { return k.now }, AcceptBound: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Verify(bound, k.set)
	if err != nil || got.BoundKey() != c.Cnf.JKT {
		t.Fatalf("a bound token with AcceptBound: %v %+v", err, got)
	}
	c.Cnf = &Confirmation{}
	if _, err := v.Verify(k.sign(t, "ed", c, func(h map[string]any) {}), k.set); !errors.Is(err, ErrClaims) {
		t.Fatalf("cnf without jkt: %v", err)
	}
	// An expired bound token says expired, not bound.
	c.Cnf, c.ExpiresAt = &Confirmation{JKT: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"}, jwt.NewNumericDate(k.now.Add(-time.Hour))
	if _, err := k.verifier(t).Verify(k.sign(t, "ed", c, nil), k.set); !errors.Is(err, ErrExpired) {
		t.Fatalf("an expired bound token: %v", err)
	}
}

// addFuzzSeeds adds go-jose's hostile JWS and JWT inputs to a fuzz corpus.
func addFuzzSeeds(f *testing.F) {
	for _, name := range []string{"gojose_jws_seeds.txt", "gojose_jwt_seeds.txt"} {
		file, err := os.Open(filepath.Join("..", "testdata", "fuzz", name))
		if err != nil {
			f.Fatal(err)
		}
		sc := bufio.NewScanner(file)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			f.Add(sc.Text())
		}
		file.Close()
	}
}

// A caller that tells only "iss or aud" from the rest still does.
func TestIssuerAndAudienceAreIssuerOrAudience(t *testing.T) {
	for _, err := range []error{ErrIssuer, ErrAudience} {
		if !errors.Is(err, ErrIssuerOrAudience) {
			t.Fatalf("%v is not ErrIssuerOrAudience", err)
		}
	}
	if errors.Is(ErrIssuer, ErrAudience) || errors.Is(ErrAudience, ErrIssuer) {
		t.Fatal("ErrIssuer and ErrAudience are not told apart")
	}
}
