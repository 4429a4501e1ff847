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
// those bytes gives. A header enters only once a proof carrying it has a
// valid signature, so only key holders fill it. It holds at most size
// headers of at most MaxCachedProofHeader bytes (size x 1.5 KiB at worst);
// full, it forgets one at random for each new one, so that a client
// churning keys costs the others at most the parse they paid without it.
// A nil *ProofKeys remembers nothing: every header is parsed.
type ProofKeys struct {
	mu    sync.RWMutex
	size  int
	heads map[string]*proofHead
}

// NewProofKeys remembers up to size proof headers.
func NewProofKeys(size int) *ProofKeys {
	return &ProofKeys{size: max(1, size), heads: make(map[string]*proofHead, min(size, 1024))}
}

func (k *ProofKeys) get(header string) (*proofHead, bool) {
	if k == nil {
		return nil, false
	}
	k.mu.RLock()
	h, ok := k.heads[header]
	k.mu.RUnlock()
	return h, ok
}

func (k *ProofKeys) put(header string, h *proofHead) {
	if k == nil || len(header) > MaxCachedProofHeader {
		return
	}
	// A copy: header is a slice of the proof, which the map must not keep
	// whole.
	header = strings.Clone(header)
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.heads[header]; ok {
		return
	}
	if len(k.heads) >= k.size {
		for old := range k.heads { // map order is random: a random victim
			delete(k.heads, old)
			break
		}
	}
	k.heads[header] = h
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
