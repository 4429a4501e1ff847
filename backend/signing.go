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

// signingKey is one key of the ring, which is ordered by when its keys
// start signing (key_schedule.go).
type signingKey struct {
	KID       string    `json:"kid"`
	Alg       string    `json:"alg"`
	Private   []byte    `json:"private"`    // PKCS #8 DER
	CreatedAt time.Time `json:"created_at"` // published in the JWKS
	// SignsAt is when it starts signing, next_key_lead after CreatedAt
	// unless rotated immediately; zero in rings stored before the lead
	// existed (it signed from CreatedAt).
	SignsAt   time.Time `json:"signs_at,omitzero"`
	RetiredAt time.Time `json:"retired_at,omitzero"` // stops signing: when the next key starts
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
	// next is the key published but not signing yet, if any.
	next *signingKey
	// maxAge is the JWKS's Cache-Control max-age, in seconds.
	maxAge int
	// expiresAt is when the state must be rebuilt: the next key starts
	// signing or a retired key leaves the JWKS. Zero: never.
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
		if _, err = sg.rotateLocked(ctx, s, time.Now(), log, takeover{}); err != nil {
			return nil, err
		}
		if ring, err = getJSON[keyRing](ctx, s, signingKeysPath); err != nil {
			return nil, err
		}
		if ring == nil || len(ring.Keys) == 0 {
			return nil, errors.New("the first signing key was not stored")
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
	current := ring.Keys[ring.signing(now)]
	st := &signingState{kid: current.KID, alg: current.Alg, maxAge: cfg.jwksMaxAge(),
		expiresAt: ring.expiry(now, cfg.VerificationTTL)}
	if next, ok := ring.pending(now); ok {
		st.next = &next
	}
	for _, k := range ring.Keys {
		if !k.published(now, cfg.VerificationTTL) {
			continue
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
	if st.signer == nil {
		return nil, fmt.Errorf("signing key %s is not published", current.KID)
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

// takeover says how a new key takes over from the signing one.
type takeover struct {
	// immediate: the new key signs at once, without next_key_lead.
	immediate bool
	// dropOld: every other key leaves the JWKS (with immediate).
	dropOld bool
	// keepPending: a published key of the configured algorithm that is not
	// signing yet is the answer, rather than a new one (a manual rotate).
	keepPending bool
}

// rotateLocked publishes a new signing key of the configured algorithm,
// which signs next_key_lead from now (at once for how.immediate), and
// drops keys past verification_ttl. It returns the key that takes over.
// The caller holds mu (write).
func (sg *signer) rotateLocked(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger, how takeover) (signingKey, error) {
	cfg, err := getConfig(ctx, s)
	if err != nil {
		return signingKey{}, err
	}
	ring, err := getJSON[keyRing](ctx, s, signingKeysPath)
	if err != nil {
		return signingKey{}, err
	}
	if ring == nil {
		ring = &keyRing{}
	}
	if p, ok := ring.pending(now); ok && how.keepPending && !how.immediate && p.Alg == cfg.SigningAlgorithm {
		return p, nil
	}
	next, err := newSigningKey(cfg.SigningAlgorithm, now)
	if err != nil {
		return signingKey{}, err
	}
	signsAt := now.Add(cfg.nextKeyLead())
	if how.immediate || len(ring.Keys) == 0 {
		signsAt = now // the first key: nobody has cached a JWKS yet
	}
	ring.schedule(next, signsAt, now, cfg.VerificationTTL)
	if how.dropOld {
		ring.dropAllBut()
	}
	if err := putJSON(ctx, s, signingKeysPath, ring); err != nil {
		return signingKey{}, err
	}
	sg.cache = nil
	next = ring.Keys[len(ring.Keys)-1]
	logRotation(log, next, how, len(ring.Keys))
	return next, nil
}

// logRotation says what a rotation did, and what an immediate one costs.
func logRotation(log hclog.Logger, k signingKey, how takeover, published int) {
	args := []interface{}{"kid", k.KID, "alg", k.Alg, "signs_at", k.SignsAt.Format(time.RFC3339), "published_keys", published}
	switch {
	case published == 1 && !how.dropOld:
		log.Info("created the first signing key", args...)
	case how.dropOld:
		log.Warn("rotated signing key immediately and dropped every older key from the JWKS: tokens signed before no longer verify, and verifiers refuse new ones until they refetch the JWKS", args...)
	case how.immediate:
		log.Warn("rotated signing key immediately, without next_key_lead: verifiers that cached the JWKS refuse new tokens until they refetch it", args...)
	default:
		log.Info("rotated signing key: the next key is in the JWKS now and signs from signs_at", args...)
	}
}

// rotate is rotateLocked for callers that do not hold the lock.
func (sg *signer) rotate(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger, how takeover) (signingKey, error) {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	return sg.rotateLocked(ctx, s, now, log, how)
}

// rotateIfDue publishes the next key when the signing one, by the time the
// next starts, will have signed for rotation_period.
func (sg *signer) rotateIfDue(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger) error {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	cfg, err := getConfig(ctx, s)
	if err != nil {
		return err
	}
	ring, err := getJSON[keyRing](ctx, s, signingKeysPath)
	if err != nil || (ring != nil && !ring.rotationDue(cfg, now)) {
		return err
	}
	_, err = sg.rotateLocked(ctx, s, now, log, takeover{})
	return err
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
// response from it rejects the write. A new algorithm rotates the key,
// not at once but as a rotation does: a key of the new algorithm is
// published now and signs next_key_lead later. The cache is dropped either
// way, as verification_ttl decides which keys are published.
func (sg *signer) configure(ctx context.Context, s logical.Storage, now time.Time, log hclog.Logger, edit func(c *config) (*logical.Response, error)) (*logical.Response, error) {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	c, err := getConfig(ctx, s)
	if err != nil {
		return nil, err
	}
	oldAlg, oldLead := c.SigningAlgorithm, c.nextKeyLead()
	if resp, err := edit(c); resp != nil || err != nil {
		return resp, err
	}
	if err := putJSON(ctx, s, configPath, c); err != nil {
		return nil, err
	}
	sg.cache = nil
	// Against the ring, not the old config: a write whose rotation failed
	// stored the new algorithm, and its retry must still rotate.
	ring, err := getJSON[keyRing](ctx, s, signingKeysPath)
	if err != nil {
		return nil, err
	}
	if ring != nil && len(ring.Keys) >= 2 && c.nextKeyLead() > oldLead {
		if p, ok := ring.pending(now); ok && p.SignsAt.Before(p.CreatedAt.Add(c.nextKeyLead())) {
			// A raised lead holds for the key that waits too: the
			// verifiers it was raised for have not all seen it.
			at := p.CreatedAt.Add(c.nextKeyLead()).UTC()
			ring.Keys[len(ring.Keys)-1].SignsAt = at
			ring.Keys[len(ring.Keys)-2].RetiredAt = at
			if err := putJSON(ctx, s, signingKeysPath, ring); err != nil {
				return nil, err
			}
		}
	}
	if c.SigningAlgorithm != oldAlg || (ring != nil && len(ring.Keys) > 0 && ring.Keys[len(ring.Keys)-1].Alg != c.SigningAlgorithm) {
		if _, err := sg.rotateLocked(ctx, s, now, log, takeover{}); err != nil {
			return nil, err
		}
	}
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
