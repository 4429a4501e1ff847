package jwtverify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	jose "github.com/go-jose/go-jose/v4"
)

// Algorithms keybroker signs and accepts.
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
	AlgRS256 = "RS256"
)

// MinRSABits is the smallest RSA modulus a KeySet accepts.
const MinRSABits = 2048

// Key is a public verification key bound to one algorithm.
type Key struct {
	ID     string
	Alg    string
	Public crypto.PublicKey
}

// KeySet is an immutable set of keys by kid.
type KeySet struct {
	keys map[string]Key
}

// NewKeySet checks that every key suits its algorithm and that kids are
// unique and non-empty.
func NewKeySet(keys ...Key) (*KeySet, error) {
	ks := &KeySet{keys: make(map[string]Key, len(keys))}
	for _, k := range keys {
		if k.ID == "" {
			return nil, errors.New("jwtverify: key without kid")
		}
		if _, dup := ks.keys[k.ID]; dup {
			return nil, fmt.Errorf("jwtverify: duplicate kid %q", k.ID)
		}
		if err := checkKeyAlg(k); err != nil {
			return nil, err
		}
		ks.keys[k.ID] = k
	}
	return ks, nil
}

// Lookup returns the key with the given kid.
func (ks *KeySet) Lookup(kid string) (Key, bool) {
	if ks == nil {
		return Key{}, false
	}
	k, ok := ks.keys[kid]
	return k, ok
}

// Len is the number of keys.
func (ks *KeySet) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.keys)
}

func checkKeyAlg(k Key) error {
	switch k.Alg {
	case AlgEdDSA:
		if pk, ok := k.Public.(ed25519.PublicKey); ok && len(pk) == ed25519.PublicKeySize {
			return nil
		}
	case AlgES256:
		if pk, ok := k.Public.(*ecdsa.PublicKey); ok && pk.Curve == elliptic.P256() {
			return nil
		}
	case AlgRS256:
		if pk, ok := k.Public.(*rsa.PublicKey); ok {
			if pk.N.BitLen() < MinRSABits {
				return fmt.Errorf("jwtverify: key %q: RSA modulus of %d bits is below %d", k.ID, pk.N.BitLen(), MinRSABits)
			}
			return nil
		}
	default:
		return fmt.Errorf("jwtverify: key %q: algorithm %q is not accepted (EdDSA, ES256 or RS256)", k.ID, k.Alg)
	}
	return fmt.Errorf("jwtverify: key %q: a %T cannot be used with %s", k.ID, k.Public, k.Alg)
}

// KeyFromJWK converts one JWK into a Key. The JWK must carry kid and alg,
// must be a public key, and must be meant for signatures (use "sig" and
// key_ops with "verify", where given).
func KeyFromJWK(raw []byte) (Key, error) {
	var jwk jose.JSONWebKey
	if err := json.Unmarshal(raw, &jwk); err != nil {
		return Key{}, fmt.Errorf("jwtverify: parsing JWK: %w", err)
	}
	// go-jose does not keep key_ops, so read it from the raw JSON.
	var ops struct {
		KeyOps []string `json:"key_ops"`
	}
	if err := json.Unmarshal(raw, &ops); err != nil {
		return Key{}, fmt.Errorf("jwtverify: parsing JWK: %w", err)
	}
	switch {
	case !jwk.Valid():
		return Key{}, fmt.Errorf("jwtverify: JWK %q is not a valid key", jwk.KeyID)
	case !jwk.IsPublic():
		return Key{}, fmt.Errorf("jwtverify: JWK %q is not a public key", jwk.KeyID)
	case jwk.Use != "" && jwk.Use != "sig":
		return Key{}, fmt.Errorf("jwtverify: JWK %q is for %q, not signatures", jwk.KeyID, jwk.Use)
	case ops.KeyOps != nil && !slices.Contains(ops.KeyOps, "verify"):
		return Key{}, fmt.Errorf("jwtverify: JWK %q key_ops %v do not include verify", jwk.KeyID, ops.KeyOps)
	}
	k := Key{ID: jwk.KeyID, Alg: jwk.Algorithm, Public: jwk.Key}
	if err := checkKeyAlg(k); err != nil {
		return Key{}, err
	}
	return k, nil
}

// ParseJWKS parses a JWK Set. A key that is not usable for verification is
// an error, not silently skipped: a key set from keybroker never has one.
func ParseJWKS(b []byte) (*KeySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("jwtverify: parsing JWKS: %w", err)
	}
	keys := make([]Key, 0, len(raw.Keys))
	for _, r := range raw.Keys {
		k, err := KeyFromJWK(r)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return NewKeySet(keys...)
}

// MarshalJWKS renders keys as a JWK Set with kid, alg and use=sig.
func MarshalJWKS(keys []Key) ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(keys))}
	for _, k := range keys {
		if err := checkKeyAlg(k); err != nil {
			return nil, err
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public, KeyID: k.ID, Algorithm: k.Alg, Use: "sig"})
	}
	return json.Marshal(set)
}
