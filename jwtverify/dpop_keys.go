package jwtverify

import (
	"crypto"
	"strings"
	"sync"

	"github.com/golang-jwt/jwt/v5"
)

// proofHead is what a proof's header decides: the alg, the key it carries
// (already checked to be public, of alg's kind and strong enough) and the
// key's thumbprint. It is a function of the header's bytes alone.
type proofHead struct {
	alg    string
	method jwt.SigningMethod
	key    crypto.PublicKey
	jkt    string
}

// MaxCachedProofHeader is the longest header segment ProofKeys remembers:
// an RSA-4096 key's header is about 1 KiB of base64url; EC and Ed25519
// ones are about 250 bytes.
const MaxCachedProofHeader = 1536

// ProofKeys remembers the headers of proofs that verified, so that a
// client's next proof, carrying the same header (typ, alg and its public
// jwk, byte for byte), skips the header's base64, JSON, the JWK parse and
// the thumbprint; its signature, claims and binding are checked as for a
// new one. It is keyed by the header segment itself, the exact bytes, so
// that no header can be taken for another: a hit is what a fresh parse of
// those bytes gives. The key also holds the thumbprint the credential is
// bound to, so that a proof can only hit entries made under its own
// credential's binding: otherwise the time a refusal takes (a hit is ~1 µs,
// a parse ~10 µs) would tell a holder of any bound token whether another
// client, whose public header it sends, proved lately.
//
// A header enters only once a proof carrying it verified whole (signature,
// binding, claims, iat), so only key holders fill it, with proofs they
// could have used. It holds at most size headers of at most
// MaxCachedProofHeader bytes (with the parsed key, the thumbprint and the
// map's own cost, about 2 KiB each at worst); full, it forgets one at
// random for each new one, so that a client churning keys costs the others
// at most the parse they paid without it. A nil *ProofKeys remembers
// nothing: every header is parsed.
type ProofKeys struct {
	mu    sync.RWMutex
	size  int
	heads map[proofKeysKey]*proofHead
}

// proofKeysKey is a remembered header: the credential's binding and the
// header segment. A struct of two strings, so a lookup allocates nothing.
type proofKeysKey struct{ jkt, header string }

// NewProofKeys remembers up to size proof headers.
func NewProofKeys(size int) *ProofKeys {
	return &ProofKeys{size: max(1, size), heads: make(map[proofKeysKey]*proofHead, min(size, 1024))}
}

func (k *ProofKeys) get(jkt, header string) (*proofHead, bool) {
	if k == nil || jkt == "" {
		return nil, false
	}
	k.mu.RLock()
	h, ok := k.heads[proofKeysKey{jkt, header}]
	k.mu.RUnlock()
	return h, ok
}

// put remembers h, the head of header, for proofs under binding jkt; a
// proof under no binding (jkt empty) is not remembered.
func (k *ProofKeys) put(jkt, header string, h *proofHead) {
	if k == nil || jkt == "" || len(header) > MaxCachedProofHeader {
		return
	}
	// A copy: header is a slice of the proof, which the map must not keep
	// whole.
	key := proofKeysKey{strings.Clone(jkt), strings.Clone(header)}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.heads[key]; ok {
		return
	}
	if len(k.heads) >= k.size {
		for old := range k.heads { // map order is random: a random victim
			delete(k.heads, old)
			break
		}
	}
	k.heads[key] = h
}

// Len is how many proof headers are remembered.
func (k *ProofKeys) Len() int {
	if k == nil {
		return 0
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.heads)
}
