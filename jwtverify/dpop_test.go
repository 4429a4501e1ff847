package jwtverify_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

func TestVerifyProofAlgorithms(t *testing.T) {
	now := time.Now()
	for _, alg := range jwtverify.ProofAlgorithms() {
		t.Run(alg, func(t *testing.T) {
			k := dpoptest.NewKey(t, alg)
			p := k.Proof(t, "GET", "https://api.example.com/read", "the-token", now, nil)
			got, err := jwtverify.VerifyProof(p, jwtverify.ProofCheck{Method: "GET", URL: "https://api.example.com/read", AccessToken: "the-token", JKT: k.JKT, Now: now, MaxAge: time.Minute, Leeway: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if got.JKT != k.JKT || got.JTI == "" || got.IssuedAt.Unix() != now.Unix() {
				t.Fatalf("proof: %+v", got)
			}
		})
	}
}

// Every way a proof can lie about its request, its key or its time.
func TestVerifyProofRefuses(t *testing.T) {
	now := time.Now()
	k := dpoptest.NewKey(t, "ES256")
	other := dpoptest.NewKey(t, "ES256")
	const url, token = "https://api.example.com/read", "the-token"
	check := jwtverify.ProofCheck{Method: "GET", URL: url, AccessToken: token, JKT: k.JKT, Now: now, MaxAge: time.Minute, Leeway: 5 * time.Second}
	priv := k.PrivateJWK(t)
	weakRSA, _ := rsa.GenerateKey(rand.Reader, 1024)
	weakJWK, _ := (&jose.JSONWebKey{Key: weakRSA.Public()}).MarshalJSON()
	ed := dpoptest.NewKey(t, "EdDSA")
	hugeN := make([]byte, 625)
	rand.Read(hugeN)
	hugeN[0] |= 0x80
	hugeRSA := json.RawMessage(`{"kty":"RSA","e":"AQAB","n":"` + base64.RawURLEncoding.EncodeToString(hugeN) + `"}`)
	tests := []struct {
		name  string
		proof string
		want  error
	}{
		{"another method", k.Proof(t, "POST", url, token, now, nil), jwtverify.ErrProofClaims},
		{"another URI", k.Proof(t, "GET", "https://api.example.com/write", token, now, nil), jwtverify.ErrProofClaims},
		{"another host", k.Proof(t, "GET", "https://evil.example.com/read", token, now, nil), jwtverify.ErrProofClaims},
		{"another scheme", k.Proof(t, "GET", "http://api.example.com/read", token, now, nil), jwtverify.ErrProofClaims},
		{"a relative htu", k.Proof(t, "GET", "/read", token, now, nil), jwtverify.ErrProofClaims},
		{"signed by another key", other.Proof(t, "GET", url, token, now, nil), jwtverify.ErrProofBinding},
		{"another key's jwk, this key's signature", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["jwk"] = other.JWK }), jwtverify.ErrProofBinding},
		{"a broken signature", breakSignature(k.Proof(t, "GET", url, token, now, nil)), jwtverify.ErrProofSignature},
		{"iat a numeric string", k.Proof(t, "GET", url, token, now, func(_, c map[string]interface{}) { c["iat"] = strconv.FormatInt(now.Unix(), 10) }), jwtverify.ErrProofClaims},
		{"an RSA key of 5000 bits", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["jwk"] = hugeRSA; h["alg"] = "RS256" }), jwtverify.ErrProofKey},
		{"stale iat", k.Proof(t, "GET", url, token, now.Add(-2*time.Minute), nil), jwtverify.ErrProofTime},
		{"iat in the future", k.Proof(t, "GET", url, token, now.Add(time.Minute), nil), jwtverify.ErrProofTime},
		{"no iat", k.Proof(t, "GET", url, token, now, func(_, c map[string]interface{}) { delete(c, "iat") }), jwtverify.ErrProofClaims},
		{"iat a string", k.Proof(t, "GET", url, token, now, func(_, c map[string]interface{}) { c["iat"] = "now" }), jwtverify.ErrProofClaims},
		{"for another token", k.Proof(t, "GET", url, "another-token", now, nil), jwtverify.ErrProofClaims},
		{"no ath", k.Proof(t, "GET", url, "", now, nil), jwtverify.ErrProofClaims},
		{"no jti", k.Proof(t, "GET", url, token, now, func(_, c map[string]interface{}) { delete(c, "jti") }), jwtverify.ErrProofClaims},
		{"a huge jti", k.Proof(t, "GET", url, token, now, func(_, c map[string]interface{}) { c["jti"] = strings.Repeat("j", 200) }), jwtverify.ErrProofClaims},
		{"alg none", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["alg"] = "none" }), jwtverify.ErrProofMalformed},
		{"HS256", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["alg"] = "HS256" }), jwtverify.ErrProofKey},
		{"typ JWT", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["typ"] = "JWT" }), jwtverify.ErrProofMalformed},
		{"no typ", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { delete(h, "typ") }), jwtverify.ErrProofMalformed},
		{"no jwk", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { delete(h, "jwk") }), jwtverify.ErrProofKey},
		{"a jwk with its private part", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["jwk"] = json.RawMessage(priv) }), jwtverify.ErrProofKey},
		{"an RSA key of 1024 bits", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["jwk"] = json.RawMessage(weakJWK); h["alg"] = "RS256" }), jwtverify.ErrProofKey},
		{"alg of another key kind", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["jwk"] = ed.JWK }), jwtverify.ErrProofKey},
		{"a kid", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["kid"] = "k1" }), jwtverify.ErrProofMalformed},
		{"a jku", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["jku"] = "https://evil.example.com/jwks" }), jwtverify.ErrProofMalformed},
		{"crit", k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["crit"] = []string{"exp"} }), jwtverify.ErrProofMalformed},
		{"oversize", k.Proof(t, "GET", url, token, now, func(_, c map[string]interface{}) { c["pad"] = strings.Repeat("p", jwtverify.MaxProofSize) }), jwtverify.ErrProofMalformed},
		{"not a JWS", "not.a.proof", jwtverify.ErrProofMalformed},
		{"two parts", "eyJhbGciOiJFUzI1NiJ9.e30", jwtverify.ErrProofMalformed},
		{"empty", "", jwtverify.ErrProofMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := jwtverify.VerifyProof(tt.proof, check)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := jwtverify.VerifyProof(k.Proof(t, "GET", url, token, now, nil), check); err != nil {
		t.Fatalf("the same proof done right: %v", err)
	}
	// The request's URI comes without query or fragment, or is refused:
	// it would compare as another URI.
	for _, u := range []string{url + "#/admin", url + "?x=1"} {
		c := check
		c.URL = u
		if _, err := jwtverify.VerifyProof(k.Proof(t, "GET", url, token, now, nil), c); !errors.Is(err, jwtverify.ErrProofClaims) {
			t.Fatalf("request URL %q: %v", u, err)
		}
	}
}

// htu names the target URI however the client spelled it: case of scheme
// and host, default ports, percent-encoding of unreserved characters, and
// no query or fragment.
// breakSignature changes the signature's first character, to another of
// the base64url alphabet.
func breakSignature(proof string) string {
	i := strings.LastIndexByte(proof, '.')
	c := "A"
	if proof[i+1] == 'A' {
		c = "B"
	}
	return proof[:i+1] + c + proof[i+2:]
}

func TestNormalizeHTU(t *testing.T) {
	same := [][2]string{
		{"https://API.Example.com/read", "https://api.example.com/read"},
		{"HTTPS://api.example.com:443/read", "https://api.example.com/read"},
		{"http://api.example.com:80/read", "http://api.example.com/read"},
		{"https://api.example.com/%72ead", "https://api.example.com/read"},
		{"https://api.example.com/a%2fb", "https://api.example.com/a%2Fb"},
		{"https://api.example.com/read?x=1#f", "https://api.example.com/read"},
		{"https://api.example.com", "https://api.example.com/"},
		{"https://[::1]:8443/read", "https://[::1]:8443/read"},
	}
	for _, s := range same {
		a, err1 := jwtverify.NormalizeHTU(s[0])
		b, err2 := jwtverify.NormalizeHTU(s[1])
		if err1 != nil || err2 != nil || a != b {
			t.Errorf("%q and %q: %q %v, %q %v", s[0], s[1], a, err1, b, err2)
		}
	}
	differ := [][2]string{
		{"https://api.example.com/read", "https://api.example.com/Read"},
		{"https://api.example.com:8443/read", "https://api.example.com/read"},
		{"https://api.example.com/a%2Fb", "https://api.example.com/a/b"},
	}
	for _, s := range differ {
		a, _ := jwtverify.NormalizeHTU(s[0])
		b, _ := jwtverify.NormalizeHTU(s[1])
		if a == b {
			t.Errorf("%q and %q compare equal", s[0], s[1])
		}
	}
	for _, bad := range []string{"", "/read", "ftp://x/y", "https://user@api.example.com/", "https://api.example.com/%zz", "mailto:a@b"} {
		if _, err := jwtverify.NormalizeHTU(bad); err == nil {
			t.Errorf("jwtverify.NormalizeHTU(%q): no error", bad)
		}
	}
}

func TestThumbprint(t *testing.T) {
	// RFC 7638 §3.1's example key and thumbprint.
	const rfcKey = `{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}`
	got, err := jwtverify.Thumbprint([]byte(rfcKey))
	if err != nil || got != "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs" {
		t.Fatalf("RFC 7638 example: %q %v", got, err)
	}
	if !jwtverify.ValidJKT(got) || jwtverify.ValidJKT(got[:42]) || jwtverify.ValidJKT(got+"A") || jwtverify.ValidJKT(strings.Repeat("+", 43)) {
		t.Fatal("jwtverify.ValidJKT")
	}
	priv := dpoptest.NewKey(t, "ES256").PrivateJWK(t)
	for name, bad := range map[string]string{
		"private":   string(priv),
		"garbage":   `{"kty":"EC"}`,
		"not JSON":  `nope`,
		"symmetric": `{"kty":"oct","k":"c2VjcmV0"}`,
	} {
		if _, err := jwtverify.Thumbprint([]byte(bad)); err == nil {
			t.Errorf("%s JWK: no error", name)
		}
	}
}

func BenchmarkVerifyProof(b *testing.B) {
	k := dpoptest.NewKey(b, "ES256")
	now := time.Now()
	p := k.Proof(b, "GET", "https://api.example.com/read", "the-token", now, nil)
	check := jwtverify.ProofCheck{Method: "GET", URL: "https://api.example.com/read", AccessToken: "the-token", JKT: k.JKT, Now: now, MaxAge: time.Minute, Leeway: 5 * time.Second}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := jwtverify.VerifyProof(p, check); err != nil {
			b.Fatal(err)
		}
	}
}

// Only a proof the client signed for this request verifies, whatever the
// bytes; and neither the proof nor a hostile JWK (what dpop_jwk takes from
// a minter) can panic the parser.
func FuzzVerifyProof(f *testing.F) {
	k := dpoptest.NewKey(f, "ES256")
	now := time.Unix(1_800_000_000, 0)
	const url, token = "https://api.example.com/read", "the-token"
	good := k.Proof(f, "GET", url, token, now, nil)
	f.Add(good)
	f.Add(string(k.JWK))
	jwtverify.AddFuzzSeeds(f)
	check := jwtverify.ProofCheck{Method: "GET", URL: url, AccessToken: token, JKT: k.JKT, Now: now, MaxAge: time.Minute, Leeway: 5 * time.Second}
	// With the good proof's header remembered, every other proof is still
	// refused.
	cached := check
	cached.Keys = jwtverify.NewProofKeys(8)
	if _, err := jwtverify.VerifyProof(good, cached); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := jwtverify.VerifyProof(s, check); err == nil && s != good {
			t.Fatalf("a proof that was never signed verified: %q", s)
		}
		if _, err := jwtverify.VerifyProof(s, cached); err == nil && s != good {
			t.Fatalf("a proof that was never signed verified, its header remembered: %q", s)
		}
		unbound := check
		unbound.JKT = ""
		_, _ = jwtverify.VerifyProof(s, unbound)
		_, _ = jwtverify.Thumbprint([]byte(s))
	})
}

// BenchmarkDPoPFloor is what a DPoP request cannot do without: one
// signature check (ES256: P-256 ECDSA over a SHA-256; EdDSA: Ed25519), a
// SHA-256 (the ath of the token) and an insert into a replay set.
// VerifyProof and the sidecar's whole DPoP decision are measured against
// it (issue 26: within 1.5x of this floor).
func BenchmarkDPoPFloor(b *testing.B) {
	msg := []byte(strings.Repeat("p", 300)) // a proof's signing input
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256(msg)
	ecSig, err := ecdsa.SignASN1(rand.Reader, ecKey, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	edSig := ed25519.Sign(edKey, msg)
	for _, alg := range []struct {
		name   string
		verify func() bool
	}{
		{"ES256", func() bool { d := sha256.Sum256(msg); return ecdsa.VerifyASN1(&ecKey.PublicKey, d[:], ecSig) }},
		{"EdDSA", func() bool { return ed25519.Verify(edPub, msg, edSig) }},
	} {
		b.Run(alg.name, func(b *testing.B) { benchmarkDPoPFloor(b, alg.verify) })
	}
}

func benchmarkDPoPFloor(b *testing.B, verify func() bool) {
	token := strings.Repeat("t", 600)
	seen := make(map[[32]byte]struct{})
	var mu sync.Mutex
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if !verify() {
			b.Fatal("no")
		}
		ath := sha256.Sum256([]byte(token))
		binary.LittleEndian.PutUint64(ath[:8], uint64(i)) // a new jti each time
		i++
		mu.Lock()
		seen[ath] = struct{}{}
		mu.Unlock()
	}
}
