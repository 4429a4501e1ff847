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
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
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

// signer owns the signing key ring as this node has parsed it, and
// serialises everything that changes what signs: rotation and writes of
// the config (its algorithm decides the next key, its verification_ttl
// which keys are published). The ring and config live in storage; the
// signer is handed the storage and a logger by each caller.
type signer struct {
	// mu guards cache and serialises key rotation and config writes.
	mu    sync.RWMutex
	cache *signingState
}

// current returns the cached signing state, loading it, and creating the
// first key if the ring is empty.
func (sg *signer) current(ctx context.Context, s logical.Storage, log hclog.Logger) (*signingState, error) {
	now := time.Now()
	sg.mu.RLock()
	st := sg.cache
	sg.mu.RUnlock()
	if st.fresh(now) {
		return st, nil
	}
	sg.mu.Lock()
	defer sg.mu.Unlock()
	if sg.cache.fresh(now) {
		return sg.cache, nil
	}
	ring, err := getJSON[keyRing](ctx, s, signingKeysPath)
	if err != nil {
		return nil, err
	}
	if ring == nil || len(ring.Keys) == 0 {
		if ring, err = sg.rotateLocked(ctx, s, time.Now(), log); err != nil {
			return nil, err
		}
	}
	cfg, err := getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	st, err = loadSigningState(ring, cfg, time.Now())
	if err != nil {
		return nil, err
	}
	sg.cache = st
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
// mu (write).
func (sg *signer) rotateLocked(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger) (*keyRing, error) {
	cfg, err := getConfig(ctx, s)
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
	sg.cache = nil
	log.Info("rotated signing key", "kid", next.KID, "alg", next.Alg, "published_keys", len(ring.Keys))
	return ring, nil
}

// rotate is rotateLocked for callers that do not hold the lock.
func (sg *signer) rotate(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger) error {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	_, err := sg.rotateLocked(ctx, s, now, log)
	return err
}

// rotateIfDue rotates when the signing key is older than rotation_period.
func (sg *signer) rotateIfDue(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger) error {
	st, err := sg.current(ctx, s, log)
	if err != nil {
		return err
	}
	cfg, err := getConfig(ctx, s)
	if err != nil {
		return err
	}
	if now.Sub(st.createdAt) >= cfg.RotationPeriod {
		return sg.rotate(ctx, s, now, log)
	}
	return nil
}

// reset drops the parsed ring; the next request reloads it. Vault calls it
// through Invalidate on standbys when the ring or config changes.
func (sg *signer) reset() {
	sg.mu.Lock()
	sg.cache = nil
	sg.mu.Unlock()
}

// configure changes the config under mu, so that no mint loads a ring
// under a config it was not made for: edit applies the write to c, and a
// response from it rejects the write. A new algorithm rotates the key at
// once; the cache is dropped either way, as verification_ttl decides which
// keys are published.
func (sg *signer) configure(ctx context.Context, s logical.Storage, log hclog.Logger, edit func(c *config) (*logical.Response, error)) (*logical.Response, error) {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	c, err := getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	oldAlg := c.SigningAlgorithm
	if resp, err := edit(c); resp != nil || err != nil {
		return resp, err
	}
	if err := putJSON(ctx, s, configPath, c); err != nil {
		return nil, err
	}
	if c.SigningAlgorithm != oldAlg {
		if _, err := sg.rotateLocked(ctx, s, time.Now(), log); err != nil {
			return nil, err
		}
	}
	sg.cache = nil
	return nil, nil
}

// pinIssuer stores iss, derived from VAULT_API_ADDR, as the config's issuer
// unless one is set by now. The environment is the plugin registration's,
// and an upgrade registers again: were the issuer derived at each start, a
// registration without -env (or with another address) would leave the
// mount without one, or change the iss every outstanding token and every
// verifier was configured with. Written once, it stays until an operator
// writes config issuer (empty: derive it again on next use).
func (sg *signer) pinIssuer(ctx context.Context, s logical.Storage, iss string, log hclog.Logger) error {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	c, err := getConfig(ctx, s)
	if err != nil {
		return err
	}
	if c.Issuer != "" {
		return nil
	}
	c.Issuer = iss
	if err := putJSON(ctx, s, configPath, c); err != nil {
		if errors.Is(err, logical.ErrReadOnly) {
			return nil // a performance standby: the active node stores it
		}
		return fmt.Errorf("storing the issuer: %w", err)
	}
	log.Info("issuer derived from "+apiAddrEnv+" stored in the config; it stays this mount's issuer until config issuer is written", "issuer", iss)
	return nil
}
