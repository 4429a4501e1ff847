package sidecar

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keybroker/keybroker/jwtverify"
)

// fixture is a Sidecar with a signing key, a verifier and routes, and no
// Vault: JWT decisions never call it, and API key lookups fail as if Vault
// were down.
type fixture struct {
	sc   *Sidecar
	priv ed25519.PrivateKey
}

// fixtureRoutes: a public prefix, a catch-all, nested prefixes with their
// own scopes, and a GET-only route.
var fixtureRoutes = []RouteConfig{
	{PathPrefix: "/public", Public: true},
	{PathPrefix: "/", Scopes: []string{"any"}},
	{PathPrefix: "/v1/", Scopes: []string{"read"}},
	{PathPrefix: "/v1/admin", Scopes: []string{"admin"}},
	{PathPrefix: "/v1/items", Methods: []string{"GET"}, Scopes: []string{"read"}},
}

func newFixture(tb testing.TB, mutate func(c *Config)) *fixture {
	tb.Helper()
	c := &Config{
		Audiences: []string{"svc"},
		Leeway:    "30s",
		LogLevel:  "off",
		Upstream:  "http://127.0.0.1:1", // nothing listens: allowed requests get 502
		Vault:     &VaultConfig{Address: "http://127.0.0.1:1", RoleID: "r", SecretIDFile: "/nonexistent"},
		Routes:    fixtureRoutes,
	}
	if mutate != nil {
		mutate(c)
	}
	sc, err := New(c, nil)
	if err != nil {
		tb.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	ks, _ := jwtverify.NewKeySet(jwtverify.Key{ID: "k1", Alg: jwtverify.AlgEdDSA, Public: priv.Public()})
	sc.jwks.set.Store(ks)
	v, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: "https://iss", Audiences: sc.s.audiences, Leeway: sc.s.leeway, AcceptBound: true})
	if err != nil {
		tb.Fatal(err)
	}
	sc.jwks.hints.Store(newJWTHints(sc.s.audiences, "https://iss"))
	sc.jwks.verifier.Store(v)
	// As if both feeds had been read (nothing revoked, no key records):
	// a test of a feed not yet read clears these.
	sc.revocations.health.read.Store(true)
	if sc.keyRecords != nil {
		sc.keyRecords.health.read.Store(true)
	}
	return &fixture{sc: sc, priv: priv}
}

// jwt signs a token with space-separated scopes that expires in ttl
// (negative: already expired).
func (f *fixture) jwt(tb testing.TB, scopes string, ttl time.Duration) string {
	tb.Helper()
	return f.sign(tb, f.claims(scopes, ttl))
}

// claims are what jwt signs, for a test to change first.
func (f *fixture) claims(scopes string, ttl time.Duration) jwtverify.Claims {
	now := time.Now()
	return jwtverify.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Issuer: "https://iss", Audience: jwt.ClaimStrings{"svc"}, Subject: "agent",
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)), IssuedAt: jwt.NewNumericDate(now.Add(min(0, ttl) - time.Minute)),
			ID: "jti-" + strings.ReplaceAll(scopes, " ", "-") + ttl.String()},
		Scope: scopes, CIDR: []string{"127.0.0.0/8"},
	}
}

func (f *fixture) sign(tb testing.TB, c jwtverify.Claims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["kid"], tok.Header["typ"] = "k1", jwtverify.TokenType
	signed, err := tok.SignedString(f.priv)
	if err != nil {
		tb.Fatal(err)
	}
	return signed
}

func stringOf(c byte, n int) string { return strings.Repeat(string(c), n) }

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
