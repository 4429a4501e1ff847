package sidecar

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// agentJWTs checks agent JWTs offline, against the JWKS. A verified token's
// identity is cached by the token's hash until it expires, so a busy agent
// costs one signature check, not one per request.
type agentJWTs struct {
	keys      *jwks
	leeway    time.Duration
	cache     *lru.Cache[[sha256.Size]byte, *identity]
	hit, miss prometheus.Counter
	log       hclog.Logger
	// toldMismatch: the first audience and issuer mismatch are logged
	// at info (a setting to fix, usually), later ones at debug.
	toldAudience, toldIssuer atomic.Bool
}

func newAgentJWTs(keys *jwks, leeway time.Duration, cacheSize int, hit, miss prometheus.Counter, log hclog.Logger) (*agentJWTs, error) {
	cache, err := lru.New[[sha256.Size]byte, *identity](cacheSize)
	if err != nil {
		return nil, err
	}
	return &agentJWTs{keys: keys, leeway: leeway, cache: cache, hit: hit, miss: miss, log: log}, nil
}

func (k *agentJWTs) check(ctx context.Context, p presentation) (*identity, decision) {
	h := sha256.Sum256([]byte(p.cred))
	if id, ok := k.cache.Get(h); ok {
		k.hit.Inc()
		return id, decision{}
	}
	k.miss.Inc()
	v := k.keys.verifier.Load()
	if v == nil {
		return nil, deny(http.StatusServiceUnavailable, contract.ReasonUnavailable)
	}
	c, err := v.Verify(p.cred, k.keys.set.Load())
	if errors.Is(err, jwtverify.ErrUnknownKey) && k.keys.refetchForUnknownKid(ctx) {
		c, err = v.Verify(p.cred, k.keys.set.Load())
	}
	if err != nil {
		d := jwtRefusal(err, k.keys.hints.Load())
		k.logRefusal(&d)
		return nil, d
	}
	// One clock rule, the verifier's: a token is good until exp + leeway,
	// on this request and on every later one served from the cache.
	id := &identity{jwt: true, id: c.ID, subject: c.Subject, role: c.Role, tenant: c.Tenant,
		scopes: c.Scopes(), expiresAt: c.ExpiresAt.Time.Add(k.leeway), budget: c.Budget, rate: c.Rate, jkt: c.BoundKey(), actors: c.Actors()}
	for _, s := range c.CIDR {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, deny(http.StatusUnauthorized, contract.ReasonInvalidClaims)
		}
		id.cidrs = append(id.cidrs, p)
	}
	id.lineageKey = id.lineage()
	k.cache.Add(h, id)
	return id, decision{}
}

// logRefusal says why a JWT was refused, never what it holds: the first
// audience or issuer mismatch at info with what was expected (most often
// an audiences, resource or issuer setting to fix), every refusal at debug.
func (k *agentJWTs) logRefusal(d *decision) {
	first := false
	switch d.reason {
	case contract.ReasonAudienceMismatch:
		first = k.toldAudience.CompareAndSwap(false, true)
	case contract.ReasonIssuerMismatch:
		first = k.toldIssuer.CompareAndSwap(false, true)
	}
	switch {
	case first && d.hint != nil:
		k.log.Info("refused a JWT: "+d.hint.log+" (further ones are logged at debug, and each in the decision log)",
			"reason", d.reason, "expected", d.hint.expected)
	case k.log.IsDebug():
		expected := ""
		if d.hint != nil {
			expected = d.hint.expected
		}
		k.log.Debug("refused a JWT", "reason", d.reason, "expected", expected)
	}
}

// jwks is what agent JWTs are verified against: the verifier (made once the
// issuer is known) and the key set, fetched from Vault on a timer, at start,
// and for a kid it does not know.
type jwks struct {
	verifier atomic.Pointer[jwtverify.Verifier]
	// hints say what the verifier expects, for its refusals; stored
	// before it.
	hints atomic.Pointer[jwtHints]
	set   atomic.Pointer[jwtverify.KeySet]
	// fetchedAt is the UnixNano of the last good fetch.
	fetchedAt atomic.Int64

	source     jwksSource
	minRefetch time.Duration
	fetches    *prometheus.CounterVec
	log        hclog.Logger
	// lastRefetch is when an unknown kid last triggered a fetch.
	refetchMu   sync.Mutex
	lastRefetch time.Time
}

// jwksSource reads the plugin's JWKS document (Vault's <mount>/jwks).
type jwksSource interface {
	raw(ctx context.Context, path string) ([]byte, error)
}

func newJWKS(source jwksSource, minRefetch time.Duration, fetches *prometheus.CounterVec, log hclog.Logger) *jwks {
	return &jwks{source: source, minRefetch: minRefetch, fetches: fetches, log: log}
}

// fetch replaces the key set; on failure the last good one stays.
func (k *jwks) fetch(ctx context.Context, trigger string) bool {
	b, err := k.source.raw(ctx, contract.PathJWKS)
	var ks *jwtverify.KeySet
	if err == nil {
		ks, err = jwtverify.ParseJWKS(b)
	}
	if err != nil && errors.Is(err, context.Canceled) {
		return false // the sidecar is stopping
	}
	if err != nil {
		k.fetches.WithLabelValues(trigger, "error").Inc()
		k.log.Warn("JWKS fetch failed; keeping the last good key set", "trigger", trigger, "error", oneLine(err))
		return false
	}
	k.set.Store(ks)
	k.fetchedAt.Store(time.Now().UnixNano())
	k.fetches.WithLabelValues(trigger, "ok").Inc()
	return true
}

// refetchForUnknownKid fetches the JWKS for a kid it does not know, at most
// once per jwks_min_refetch_interval however many such tokens arrive.
func (k *jwks) refetchForUnknownKid(ctx context.Context) bool {
	k.refetchMu.Lock()
	if time.Since(k.lastRefetch) < k.minRefetch {
		k.refetchMu.Unlock()
		return false
	}
	k.lastRefetch = time.Now()
	k.refetchMu.Unlock()
	return k.fetch(ctx, "unknown_kid")
}

// ready says whether JWTs can be verified: a verifier and a key set.
func (k *jwks) ready() bool { return k.verifier.Load() != nil && k.set.Load() != nil }
