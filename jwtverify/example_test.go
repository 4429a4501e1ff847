package jwtverify_test

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keybroker/keybroker/jwtverify"
)

// A service that verifies keybroker agent JWTs itself: the key set comes
// from the mount's jwks (ParseJWKS), the issuer and the audience are the
// service's own. Here the issuing side is played by a key made on the spot.
func ExampleVerifier_Verify() {
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	keys, err := jwtverify.NewKeySet(jwtverify.Key{ID: "k1", Alg: "EdDSA", Public: priv.Public()})
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwtverify.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    "https://vault.example.com:8200/v1/keybroker",
			Subject:   "agent-7",
			Audience:  jwt.ClaimStrings{"billing"},
			IssuedAt:  jwt.NewNumericDate(now.Add(-time.Minute)),
			NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
			ExpiresAt: jwt.NewNumericDate(now.Add(4 * time.Minute)),
			ID:        "0b4cbd5e-9a5c-4c1e-8a57-2d3b1f3c7a10",
		},
		Scope: "invoices:read",
		Role:  "agent",
	})
	tok.Header["kid"], tok.Header["typ"] = "k1", jwtverify.TokenType
	signed, err := tok.SignedString(priv)
	if err != nil {
		panic(err)
	}

	v, err := jwtverify.NewVerifier(jwtverify.Config{
		Issuer:    "https://vault.example.com:8200/v1/keybroker",
		Audiences: []string{"billing"},
		Leeway:    30 * time.Second,
		Now:       func() time.Time { return now },
	})
	if err != nil {
		panic(err)
	}
	claims, err := v.Verify(signed, keys)
	fmt.Println(claims.Subject, claims.Scope, err)
	_, err = v.Verify(signed[:len(signed)-2]+"AA", keys)
	fmt.Println(err != nil)
	// Output:
	// agent-7 invoices:read <nil>
	// true
}
