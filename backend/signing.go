package backend

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// signingKey is one key of the ring; the last one signs.
type signingKey struct {
	KID       string    `json:"kid"`
	Alg       string    `json:"alg"`
	Private   []byte    `json:"private"` // PKCS #8 DER
	CreatedAt time.Time `json:"created_at"`
	RetiredAt time.Time `json:"retired_at,omitzero"` // stopped signing
}

type keyRing struct {
	Keys []signingKey `json:"keys"`
}

// signingState is the parsed ring, cached between requests: parsing an RSA
// private key on every mint would dominate its cost.
type signingState struct {
	kid    string
	alg    string
	signer crypto.Signer
	keys   *jwtverify.KeySet
	public []jwtverify.Key
	jwks   []byte
	// createdAt of the signing key, for periodic rotation.
	createdAt time.Time
	// expiresAt is when the next retired key leaves the JWKS; the state must
	// be rebuilt then. Zero: no retired key is published.
	expiresAt time.Time
}

func (st *signingState) fresh(now time.Time) bool {
	return st != nil && (st.expiresAt.IsZero() || now.Before(st.expiresAt))
}

func newSigningKey(alg string, now time.Time) (signingKey, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case jwtverify.AlgEdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case jwtverify.AlgES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jwtverify.AlgRS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return signingKey{}, fmt.Errorf("unknown signing algorithm %q", alg)
	}
	if err != nil {
		return signingKey{}, fmt.Errorf("generating %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return signingKey{}, fmt.Errorf("encoding %s key: %w", alg, err)
	}
	id := make([]byte, 12)
	if _, err := rand.Read(id); err != nil {
		return signingKey{}, fmt.Errorf("generating kid: %w", err)
	}
	return signingKey{KID: base64.RawURLEncoding.EncodeToString(id), Alg: alg, Private: der, CreatedAt: now.UTC()}, nil
}

// published reports whether k still belongs in the JWKS at now.
func (k signingKey) published(now time.Time, verificationTTL time.Duration) bool {
	return k.RetiredAt.IsZero() || now.Before(k.RetiredAt.Add(verificationTTL))
}

// signing returns the cached signing state, loading it, and creating the
// first key if the ring is empty.
func (b *backend) signing(ctx context.Context, s logical.Storage) (*signingState, error) {
	now := time.Now()
	b.signingMu.RLock()
	st := b.signingCache
	b.signingMu.RUnlock()
	if st.fresh(now) {
		return st, nil
	}
	b.signingMu.Lock()
	defer b.signingMu.Unlock()
	if b.signingCache.fresh(now) {
		return b.signingCache, nil
	}
	ring, err := getJSON[keyRing](ctx, s, signingKeysPath)
	if err != nil {
		return nil, err
	}
	if ring == nil || len(ring.Keys) == 0 {
		if ring, err = b.rotateLocked(ctx, s, time.Now()); err != nil {
			return nil, err
		}
	}
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	st, err = loadSigningState(ring, cfg, time.Now())
	if err != nil {
		return nil, err
	}
	b.signingCache = st
	return st, nil
}

func loadSigningState(ring *keyRing, cfg *config, now time.Time) (*signingState, error) {
	current := ring.Keys[len(ring.Keys)-1]
	st := &signingState{kid: current.KID, alg: current.Alg, createdAt: current.CreatedAt}
	for _, k := range ring.Keys {
		if !k.published(now, cfg.VerificationTTL) {
			continue
		}
		if !k.RetiredAt.IsZero() {
			if until := k.RetiredAt.Add(cfg.VerificationTTL); st.expiresAt.IsZero() || until.Before(st.expiresAt) {
				st.expiresAt = until
			}
		}
		priv, err := x509.ParsePKCS8PrivateKey(k.Private)
		if err != nil {
			return nil, fmt.Errorf("parsing signing key %s: %w", k.KID, err)
		}
		signer, ok := priv.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("signing key %s is a %T", k.KID, priv)
		}
		if k.KID == current.KID {
			st.signer = signer
		}
		st.public = append(st.public, jwtverify.Key{ID: k.KID, Alg: k.Alg, Public: signer.Public()})
	}
	var err error
	if st.keys, err = jwtverify.NewKeySet(st.public...); err != nil {
		return nil, err
	}
	if st.jwks, err = jwtverify.MarshalJWKS(st.public); err != nil {
		return nil, err
	}
	return st, nil
}

// rotateLocked adds a new signing key of the configured algorithm, retires
// the current one and drops keys past verification_ttl. The caller holds
// signingMu (write).
func (b *backend) rotateLocked(ctx context.Context, s logical.Storage, now time.Time) (*keyRing, error) {
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	ring, err := getJSON[keyRing](ctx, s, signingKeysPath)
	if err != nil {
		return nil, err
	}
	if ring == nil {
		ring = &keyRing{}
	}
	next, err := newSigningKey(cfg.SigningAlgorithm, now)
	if err != nil {
		return nil, err
	}
	kept := ring.Keys[:0]
	for _, k := range ring.Keys {
		if k.RetiredAt.IsZero() {
			k.RetiredAt = now.UTC()
		}
		if k.published(now, cfg.VerificationTTL) {
			kept = append(kept, k)
		}
	}
	ring.Keys = append(kept, next)
	if err := putJSON(ctx, s, signingKeysPath, ring); err != nil {
		return nil, err
	}
	b.signingCache = nil
	b.Logger().Info("rotated signing key", "kid", next.KID, "alg", next.Alg, "published_keys", len(ring.Keys))
	return ring, nil
}

// rotate is rotateLocked for callers that do not hold the lock.
func (b *backend) rotate(ctx context.Context, s logical.Storage, now time.Time) error {
	b.signingMu.Lock()
	defer b.signingMu.Unlock()
	_, err := b.rotateLocked(ctx, s, now)
	return err
}

// rotateIfDue rotates when the signing key is older than rotation_period.
func (b *backend) rotateIfDue(ctx context.Context, s logical.Storage, now time.Time) error {
	st, err := b.signing(ctx, s)
	if err != nil {
		return err
	}
	cfg, err := b.getConfig(ctx, s)
	if err != nil {
		return err
	}
	if now.Sub(st.createdAt) >= cfg.RotationPeriod {
		return b.rotate(ctx, s, now)
	}
	return nil
}

// resetSigningCache drops the parsed ring; the next request reloads it. Vault
// calls it through Invalidate on standbys when the ring or config changes.
func (b *backend) resetSigningCache() {
	b.signingMu.Lock()
	b.signingCache = nil
	b.signingMu.Unlock()
}
