package sidecar

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// apiKeys checks API keys: the checksum offline, then the record in the key
// replica and the key's hash against it, in constant time. Without a usable
// replica (not read yet, key_replica = false, or not confirmed current within
// max_stale), and for a key minted moments ago whose record has not arrived,
// it goes on to its caches, then keybroker/verify within the flood guard's
// limits. When Vault cannot be reached, a cached answer serves for up to
// max_stale, then it fails closed. It owns everything that takes: the
// caches, the flood guard, and its own singleflight group for Vault calls.
type apiKeys struct {
	opts    keyOptions
	replica *keyReplica // nil: key_replica = false
	vault   keyVerifier
	m       keyMetrics
	log     hclog.Logger

	positive *lru.Cache[[sha256.Size]byte, *keyEntry]
	negative *lru.Cache[[sha256.Size]byte, negEntry]
	// unknownIDs are key_ids Vault said no key has, until when.
	unknownIDs *lru.Cache[string, time.Time]
	flood      *floodGuard
	// lookups makes one Vault call per key however many requests carry
	// it at once.
	lookups singleflight.Group
	// verifyRefused: Vault answered keybroker/verify with 403 (the policy
	// lacks it), logged once until a verify succeeds.
	verifyRefused atomic.Bool
}

// keyOptions are the settings an API key check reads.
type keyOptions struct {
	cacheSize                     int
	cacheTTL, negativeTTL         time.Duration
	maxStale                      time.Duration
	filter                        keyFilter
	verifyPath                    string // named in the error a 403 logs
	failedAuthRate                float64
	failedAuthBurst, verifyInFlow int
}

// keyVerifier is Vault's keybroker/verify.
type keyVerifier interface {
	verifyKey(ctx context.Context, key, remoteAddr string) (*contract.VerifyAnswer, error)
}

// keyMetrics are the series an API key check counts on, resolved once: the
// hot path hashes no label values.
type keyMetrics struct {
	hit, miss, negativeHit                      prometheus.Counter
	replicaHit, replicaRefused, replicaFallback prometheus.Counter
	vaultCalls                                  *prometheus.CounterVec
}

type keyEntry struct {
	id      *identity
	fetched time.Time
}

type negEntry struct {
	reason  string
	expires time.Time
}

func newAPIKeys(o keyOptions, replica *keyReplica, vault keyVerifier, m keyMetrics, log hclog.Logger) (*apiKeys, error) {
	k := &apiKeys{opts: o, replica: replica, vault: vault, m: m, log: log}
	var err error
	if k.positive, err = lru.New[[sha256.Size]byte, *keyEntry](o.cacheSize); err != nil {
		return nil, err
	}
	if k.negative, err = lru.New[[sha256.Size]byte, negEntry](o.cacheSize); err != nil {
		return nil, err
	}
	if k.unknownIDs, err = lru.New[string, time.Time](o.cacheSize); err != nil {
		return nil, err
	}
	if k.flood, err = newFloodGuard(o.cacheSize, o.failedAuthRate, o.failedAuthBurst, o.verifyInFlow); err != nil {
		return nil, err
	}
	return k, nil
}

// check decides an API key: from its record, else from the caches, else
// from Vault's answer, each step only when the one before could not.
func (k *apiKeys) check(ctx context.Context, p presentation) (*identity, decision) {
	parsed, err := apikey.Parse(p.cred)
	if err != nil {
		return nil, deny(http.StatusUnauthorized, contract.ReasonMalformed)
	}
	h := apikey.Hash(p.cred)
	now := time.Now()
	if id, d, decided := k.fromReplica(parsed.ID, h, now); decided {
		return id, d
	}
	e, cached := k.positive.Get(h)
	if cached && now.Sub(e.fetched) < k.opts.cacheTTL {
		k.m.hit.Inc()
		return e.id, decision{}
	}
	k.m.miss.Inc()
	if d, refused := k.refusedBefore(h, parsed.ID, now); refused {
		return nil, d
	}
	ans, guarded, err := k.askVault(ctx, p.cred, h, p.clientIP)
	switch {
	case guarded != nil:
		return nil, *guarded
	case err != nil:
		if cached && now.Sub(e.fetched) < k.opts.maxStale {
			return e.id, decision{degraded: true}
		}
		return nil, k.vaultFailed(err)
	}
	return k.fromAnswer(ans, h, parsed.ID, now)
}

// fromReplica decides a key from the replica when it is usable; decided is
// false when the key goes on to the caches and Vault: no usable replica, or
// a key minted moments ago whose record may be on its way.
func (k *apiKeys) fromReplica(keyID string, h [sha256.Size]byte, now time.Time) (_ *identity, _ decision, decided bool) {
	r := k.replica
	if r == nil || !r.usable(now, k.opts.maxStale) {
		return nil, decision{}, false
	}
	rec, metered, suspended := r.lookup(keyID)
	switch {
	case rec != nil && subtle.ConstantTimeCompare(rec.hash[:], h[:]) == 1:
		k.m.replicaHit.Inc()
		switch {
		case !k.opts.filter.passes(rec.shape.role, rec.shape.tenant):
			// The plugin filters too; this holds whatever it sends.
			return nil, deny(http.StatusUnauthorized, contract.ReasonInvalid), true
		case rec.revoked:
			return nil, deny(http.StatusUnauthorized, contract.ReasonRevoked), true
		case suspended:
			return nil, deny(http.StatusUnauthorized, contract.ReasonSuspended), true
		}
		return rec.identity(strings.Clone(keyID), metered), decision{degraded: r.failing.Load()}, true
	case rec != nil:
		// Same answer as for an unknown key.
		k.m.replicaHit.Inc()
		return nil, deny(http.StatusUnauthorized, contract.ReasonInvalid), true
	case !apikey.MintedNear(keyID, now, keyMintFallbackWindow+now.Sub(r.currentAsOf(now))):
		// No key has this key_id: one minted longer ago would be held.
		// Forged keys end here, without a Vault call.
		k.m.replicaRefused.Inc()
		return nil, deny(http.StatusUnauthorized, contract.ReasonInvalid), true
	}
	// Minted moments ago, its record may be on its way: ask Vault, once,
	// within the flood guard's limits.
	k.m.replicaFallback.Inc()
	return nil, decision{}, false
}

// keyMintFallbackWindow: a key whose record the replica lacks is asked of
// Vault only when its key_id says it was minted within this of now (either
// side, for clock skew between Vault and the sidecar), widened by how long
// ago the replica was last confirmed (a key minted since may be missing);
// every other unknown key_id is refused offline. Records arrive within
// milliseconds of a mint.
const keyMintFallbackWindow = 30 * time.Second

// refusedBefore answers from what Vault refused lately: this key, or any
// key with its key_id when Vault said no key has it.
func (k *apiKeys) refusedBefore(h [sha256.Size]byte, keyID string, now time.Time) (decision, bool) {
	if n, ok := k.negative.Get(h); ok && now.Before(n.expires) {
		k.m.negativeHit.Inc()
		return deny(http.StatusUnauthorized, n.reason), true
	}
	if exp, ok := k.unknownIDs.Get(keyID); ok && now.Before(exp) {
		k.m.negativeHit.Inc()
		return deny(http.StatusUnauthorized, contract.ReasonInvalid), true
	}
	return decision{}, false
}

// askVault asks keybroker/verify about a key within the flood guard's
// limits; a non-nil guarded is the guard's refusal, and Vault was not asked.
func (k *apiKeys) askVault(ctx context.Context, key string, h [sha256.Size]byte, ip netip.Addr) (ans *contract.VerifyAnswer, guarded *decision, err error) {
	guarded = k.flood.lookup(ctx, ip, func() bool {
		// The call must not die with the first caller's request: it
		// answers them all.
		v, verr, _ := k.lookups.Do(string(h[:]), func() (interface{}, error) {
			return k.vault.verifyKey(context.WithoutCancel(ctx), key, ipString(ip))
		})
		err = verr
		if err == nil {
			ans = v.(*contract.VerifyAnswer)
		}
		return err == nil && ans.Reason != contract.ReasonOK && ans.Reason != contract.ReasonDPoPRequired
	})
	if guarded != nil {
		return nil, guarded, nil
	}
	state := "ok"
	if err != nil {
		state = "error"
		if feedStateOf(err) == feedForbidden {
			state = "forbidden"
		}
	} else {
		k.verifyRefused.Store(false)
	}
	k.m.vaultCalls.WithLabelValues("verify", state).Inc()
	return ans, nil, err
}

// vaultFailed is the answer when Vault could not say and no cached answer
// may serve: the sidecar fails closed, and says why in its log.
func (k *apiKeys) vaultFailed(err error) decision {
	switch feedStateOf(err) {
	case feedForbidden:
		// The policy, not Vault's health: said once at error level until
		// a verify succeeds again.
		if !k.verifyRefused.Swap(true) {
			k.log.Error("Vault refused keybroker/verify to this sidecar's token (403): its policy needs the capability on the path; API keys without a fresh cache entry are refused",
				"path", k.opts.verifyPath, "capability", "update", "error", err)
		}
	case feedUnreachable:
		k.log.Warn("cannot verify an API key: Vault unreachable and no fresh cache entry", "error", err)
	default:
		k.log.Warn("cannot verify an API key: Vault answered an error and there is no fresh cache entry", "error", err)
	}
	return deny(http.StatusServiceUnavailable, contract.ReasonUnavailable)
}

// fromAnswer decides a key from Vault's answer, and caches what may be
// cached of it.
func (k *apiKeys) fromAnswer(ans *contract.VerifyAnswer, h [sha256.Size]byte, keyID string, now time.Time) (*identity, decision) {
	negUntil := now.Add(k.opts.negativeTTL)
	switch {
	case ans.Reason == contract.ReasonOK && !k.opts.filter.passes(ans.Role, ans.Tenant):
		// A key outside key_replica_roles/tenants: this sidecar does not
		// serve it, whether its record has arrived or not.
		k.negative.Add(h, negEntry{reason: contract.ReasonInvalid, expires: negUntil})
		return nil, deny(http.StatusUnauthorized, contract.ReasonInvalid)
	case ans.Reason == contract.ReasonOK:
		id, ok := identityOfAnswer(ans)
		if !ok {
			return nil, deny(http.StatusServiceUnavailable, contract.ReasonUnavailable)
		}
		k.positive.Add(h, &keyEntry{id: id, fetched: now})
		return id, decision{}
	case ans.Reason == contract.ReasonCIDRDenied:
		// Depends on the address, so not cached.
		return nil, deny(http.StatusUnauthorized, contract.ReasonCIDRDenied)
	case ans.Reason == contract.ReasonSuspended:
		// Ends when an operator resumes the key: not cached as refused,
		// and no longer cached as good (a stale entry would serve it
		// while Vault is away).
		k.positive.Remove(h)
		return nil, deny(http.StatusUnauthorized, contract.ReasonSuspended)
	case ans.Reason == contract.ReasonDPoPRequired:
		// A bound key Vault will not vouch for without its proof: only
		// its record can let the sidecar check one. Cached as refused, so
		// a leaked bound key sent in a loop costs Vault one call per
		// negative_cache_ttl; the replica, read first, still serves the
		// key once its record arrives.
		k.negative.Add(h, negEntry{reason: contract.ReasonDPoPRequired, expires: negUntil})
		return nil, decision{status: http.StatusUnauthorized, reason: contract.ReasonDPoPRequired, dpop: true}
	}
	reason := ans.Reason
	if reason == contract.ReasonNotFound {
		reason = contract.ReasonInvalid // same answer for an unknown key and a wrong one
	}
	if ans.UnknownKeyID {
		k.unknownIDs.Add(keyID, negUntil)
	}
	k.negative.Add(h, negEntry{reason: reason, expires: negUntil})
	k.positive.Remove(h)
	return nil, deny(http.StatusUnauthorized, reason)
}

// identityOfAnswer is who Vault says a valid key belongs to; ok is false
// when the answer cannot be read: a bound the sidecar cannot read must not
// become no bound.
func identityOfAnswer(ans *contract.VerifyAnswer) (*identity, bool) {
	id := &identity{id: ans.KeyID, subject: "key:" + ans.KeyID, role: ans.Role, tenant: ans.Tenant, scopes: ans.Scopes,
		budget: ans.Budget, rate: ans.RateLimit, replacedBy: ans.ReplacedBy}
	var err error
	if id.expiresAt, err = time.Parse(time.RFC3339, ans.ExpiresAt); err != nil {
		return nil, false
	}
	for _, s := range ans.BoundCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, false
		}
		id.cidrs = append(id.cidrs, p)
	}
	id.lineageKey = id.lineage()
	return id, true
}
