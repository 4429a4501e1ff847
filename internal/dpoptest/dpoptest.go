// Package dpoptest makes DPoP keys and proofs (RFC 9449) the way a client
// does: a key pair it keeps, the public JWK in each proof's header, one
// proof per request. Tests of attacks edit the header and the claims before
// signing; make bench signs proofs ahead of its run with Generate and Sign.
package dpoptest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/keybroker/keybroker/jwtverify"
)

// Key is a client's DPoP key.
type Key struct {
	// AlgName is the header's alg; Alg signs.
	AlgName string
	Alg     jwt.SigningMethod
	Signer  crypto.Signer
	// JWK is the public half as proofs carry it; JKT its thumbprint.
	JWK json.RawMessage
	JKT string
}

// Generate makes a key for alg: ES256, ES384, EdDSA, Ed25519, RS256 or
// PS256.
func Generate(alg string) (*Key, error) {
	var s crypto.Signer
	var err error
	switch alg {
	case "ES256":
		s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		s, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "EdDSA", "Ed25519":
		_, s, err = ed25519.GenerateKey(rand.Reader)
	case "RS256", "PS256":
		s, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return nil, fmt.Errorf("dpoptest: no key for alg %q", alg)
	}
	if err != nil {
		return nil, err
	}
	jwk, err := (&jose.JSONWebKey{Key: s.Public()}).MarshalJSON()
	if err != nil {
		return nil, err
	}
	jkt, err := jwtverify.Thumbprint(jwk)
	if err != nil {
		return nil, err
	}
	method := jwt.GetSigningMethod(alg)
	if alg == "Ed25519" {
		method = jwt.SigningMethodEdDSA
	}
	return &Key{AlgName: alg, Alg: method, Signer: s, JWK: jwk, JKT: jkt}, nil
}

// Sign makes a proof for method and htu, with ath for token when it is not
// empty; edit, when given, changes header and claims first. A header alg
// of none or HS256 is signed as such.
func (k *Key) Sign(method, htu, token string, iat time.Time, edit func(h, c map[string]interface{})) (string, error) {
	jti := make([]byte, 12)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	c := map[string]interface{}{"jti": base64.RawURLEncoding.EncodeToString(jti), "htm": method, "htu": htu, "iat": iat.Unix()}
	if token != "" {
		sum := sha256.Sum256([]byte(token))
		c["ath"] = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	tok := jwt.NewWithClaims(k.Alg, jwt.MapClaims(c))
	tok.Header["typ"], tok.Header["alg"] = jwtverify.ProofType, k.AlgName
	tok.Header["jwk"] = k.JWK
	if edit != nil {
		edit(tok.Header, c)
	}
	var key interface{} = k.Signer
	switch alg, _ := tok.Header["alg"].(string); {
	case alg == "none":
		tok.Method, key = jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType
	case strings.HasPrefix(alg, "HS"):
		tok.Method, key = jwt.GetSigningMethod(alg), []byte("a shared secret of thirty-two bytes")
	}
	return tok.SignedString(key)
}

// NewKey is Generate for a test.
func NewKey(t testing.TB, alg string) *Key {
	t.Helper()
	k, err := Generate(alg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Proof is Sign for a test.
func (k *Key) Proof(t testing.TB, method, htu, token string, iat time.Time, edit func(h, c map[string]interface{})) string {
	t.Helper()
	p, err := k.Sign(method, htu, token, iat, edit)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// PrivateJWK is the key with its private part, as a client must never send.
func (k *Key) PrivateJWK(t testing.TB) json.RawMessage {
	b, err := (&jose.JSONWebKey{Key: k.Signer}).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
