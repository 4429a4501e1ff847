package sidecar

import (
	"context"
	"crypto/subtle"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// apiKey checks an API key: from the key replica, else through Vault.
type apiKey struct{ sc *Sidecar }

func (k apiKey) check(ctx context.Context, p presentation) (*identity, decision) {
	return k.sc.checkKey(ctx, p.cred, p.clientIP)
}

// checkKey checks an API key: the checksum offline, then the record in the
// key replica and the key's hash against it, in constant time. Without a
// usable replica (not read yet, key_replica = false, or not confirmed
// current within max_stale), and for a key minted moments ago whose record
// has not arrived, it goes on to the caches, then keybroker/verify within
// the flood guard's limits. When Vault cannot be reached, a cached answer
// serves for up to max_stale, then the sidecar fails closed.
func (sc *Sidecar) checkKey(ctx context.Context, key string, ip netip.Addr) (*identity, decision) {
	parsed, err := apikey.Parse(key)
	if err != nil {
		return nil, deny(http.StatusUnauthorized, reasonMalformed)
	}
	h := apikey.Hash(key)
	now := time.Now()
	if r := sc.replica; r != nil && r.usable(now, sc.s.maxStale) {
		rec, metered, suspended := r.lookup(parsed.ID)
		switch {
		case rec != nil && subtle.ConstantTimeCompare(rec.hash[:], h[:]) == 1:
			sc.m.replicaHit.Inc()
			if !sc.s.keyFilter.passes(rec.shape.role, rec.shape.tenant) {
				// The plugin filters too; this holds whatever it sends.
				return nil, deny(http.StatusUnauthorized, reasonInvalid)
			}
			switch {
			case rec.revoked:
				return nil, deny(http.StatusUnauthorized, reasonRevoked)
			case suspended:
				return nil, deny(http.StatusUnauthorized, reasonSuspended)
			}
			return rec.identity(strings.Clone(parsed.ID), metered), decision{degraded: r.failing.Load()}
		case rec != nil:
			// Same answer as for an unknown key.
			sc.m.replicaHit.Inc()
			return nil, deny(http.StatusUnauthorized, reasonInvalid)
		case !apikey.MintedNear(parsed.ID, now, keyMintFallbackWindow+now.Sub(r.currentAsOf(now))):
			// No key has this key_id: one minted longer ago would be
			// held. Forged keys end here, without a Vault call.
			sc.m.replicaRefused.Inc()
			return nil, deny(http.StatusUnauthorized, reasonInvalid)
		}
		// Minted moments ago, its record may be on its way: ask Vault,
		// once, within the flood guard's limits.
		sc.m.replicaFallback.Inc()
	}
	e, cached := sc.positive.Get(h)
	if cached && now.Sub(e.fetched) < sc.s.keyCacheTTL {
		sc.m.keyHit.Inc()
		return e.id, decision{}
	}
	sc.m.keyMiss.Inc()
	if n, ok := sc.negative.Get(h); ok && now.Before(n.expires) {
		sc.m.negativeHit.Inc()
		return nil, deny(http.StatusUnauthorized, n.reason)
	}
	if exp, ok := sc.unknownIDs.Get(parsed.ID); ok && now.Before(exp) {
		sc.m.negativeHit.Inc()
		return nil, deny(http.StatusUnauthorized, reasonInvalid)
	}

	var ans *contract.VerifyAnswer
	if d := sc.flood.lookup(ctx, ip, func() bool {
		// One Vault call per key however many requests carry it at
		// once. The call must not die with the first caller's request:
		// it answers them all.
		v, verr, _ := sc.vaultSF.Do(string(h[:]), func() (interface{}, error) {
			return sc.vault.verifyKey(context.WithoutCancel(ctx), key, ipString(ip))
		})
		err = verr
		if err == nil {
			ans = v.(*contract.VerifyAnswer)
		}
		return err == nil && ans.Reason != reasonOK && ans.Reason != contract.ReasonDPoPRequired
	}); d != nil {
		return nil, *d
	}
	if err != nil {
		state := feedStateOf(err)
		sc.m.vaultCalls.WithLabelValues("verify", map[bool]string{true: "forbidden", false: "error"}[state == feedForbidden]).Inc()
		if cached && now.Sub(e.fetched) < sc.s.maxStale {
			return e.id, decision{degraded: true}
		}
		switch state {
		case feedForbidden:
			// The policy, not Vault's health: said once at error level
			// until a verify succeeds again.
			if !sc.verifyRefused.Swap(true) {
				sc.log.Error("Vault refused keybroker/verify to this sidecar's token (403): its policy needs the capability on the path; API keys without a fresh cache entry are refused",
					"path", sc.s.mount+"/verify", "capability", "update", "error", err)
			}
		case feedUnreachable:
			sc.log.Warn("cannot verify an API key: Vault unreachable and no fresh cache entry", "error", err)
		default:
			sc.log.Warn("cannot verify an API key: Vault answered an error and there is no fresh cache entry", "error", err)
		}
		return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
	}
	sc.verifyRefused.Store(false)
	sc.m.vaultCalls.WithLabelValues("verify", "ok").Inc()
	switch {
	case ans.Reason == reasonOK && !sc.s.keyFilter.passes(ans.Role, ans.Tenant):
		// A key outside key_replica_roles/tenants: this sidecar does not
		// serve it, whether its record has arrived or not.
		sc.negative.Add(h, negEntry{reason: reasonInvalid, expires: now.Add(sc.s.negativeCacheTTL)})
		return nil, deny(http.StatusUnauthorized, reasonInvalid)
	}
	switch ans.Reason {
	case reasonOK:
	case reasonCIDRDenied:
		// Depends on the address, so not cached.
		return nil, deny(http.StatusUnauthorized, reasonCIDRDenied)
	case reasonSuspended:
		// Ends when an operator resumes the key: not cached as refused,
		// and no longer cached as good (a stale entry would serve it
		// while Vault is away).
		sc.positive.Remove(h)
		return nil, deny(http.StatusUnauthorized, reasonSuspended)
	case contract.ReasonDPoPRequired:
		// A bound key Vault will not vouch for without its proof: only
		// its record can let the sidecar check one. Cached as refused, so
		// a leaked bound key sent in a loop costs Vault one call per
		// negative_cache_ttl; the replica, read first, still serves the
		// key once its record arrives.
		sc.negative.Add(h, negEntry{reason: reasonDPoPRequired, expires: now.Add(sc.s.negativeCacheTTL)})
		return nil, decision{status: http.StatusUnauthorized, reason: reasonDPoPRequired, dpop: true}
	default:
		reason := ans.Reason
		if reason == contract.ReasonNotFound {
			reason = reasonInvalid // same answer for an unknown key and a wrong one
		}
		if ans.UnknownKeyID {
			sc.unknownIDs.Add(parsed.ID, now.Add(sc.s.negativeCacheTTL))
		}
		sc.negative.Add(h, negEntry{reason: reason, expires: now.Add(sc.s.negativeCacheTTL)})
		sc.positive.Remove(h)
		return nil, deny(http.StatusUnauthorized, reason)
	}
	id := &identity{id: ans.KeyID, subject: "key:" + ans.KeyID, role: ans.Role, tenant: ans.Tenant, scopes: ans.Scopes,
		budget: ans.Budget, rate: ans.RateLimit, replacedBy: ans.ReplacedBy}
	if id.expiresAt, err = time.Parse(time.RFC3339, ans.ExpiresAt); err != nil {
		return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
	}
	for _, s := range ans.BoundCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			// A bound the sidecar cannot read must not become no bound.
			return nil, deny(http.StatusServiceUnavailable, reasonUnavailable)
		}
		id.cidrs = append(id.cidrs, p)
	}
	id.lineageKey = id.lineage()
	sc.positive.Add(h, &keyEntry{id: id, fetched: now})
	return id, decision{}
}
