package backend

import "time"

// The signing ring's schedule. A key is published in the JWKS from its
// CreatedAt, signs from its signsFrom and stops signing when the key after
// it starts. A new key signs next_key_lead after it is published, so that a
// verifier that caches the JWKS for less than the lead has it before the
// first token it signs: a cache refetched on its own schedule (jose's
// cacheMaxAge, jwx's refresh interval) never meets an unknown kid.
//
// Which key signs is a function of the stored ring and the time: no write
// and no in-memory timer promotes the next key, so every node (active or
// standby, before or after a restart) signs with the same key at the same
// moment, and a node that was down when the key was due signs with it on
// its first request.

// defaultNextKeyLead covers the longest JWKS cache of the clients the docs
// name: jwx's jwk.Cache refreshes at most every 15 minutes by default
// (longer when an operator raises its refresh interval), jose's
// createRemoteJWKSet keeps the JWKS for 10 minutes (cacheMaxAge), and both
// keep it longer when a refresh fails. An hour covers them with room.
const defaultNextKeyLead = time.Hour

// maxClockSkew is the clock difference between HA nodes that rotation
// tolerates: a pending key due within it may already have signed.
const maxClockSkew = time.Minute

// minNextKeyLead keeps the JWKS's max-age (half the lead) at a second or more.
const minNextKeyLead = 2 * time.Second

// signsFrom is when k starts signing; keys stored before the lead existed
// signed when they were created.
func (k signingKey) signsFrom() time.Time {
	if k.SignsAt.IsZero() {
		return k.CreatedAt
	}
	return k.SignsAt
}

// signing is the index of the key that signs at now: the last one that has
// started. Should no key have started (a node whose clock lags the one that
// created the first key), the first one signs rather than none.
func (r *keyRing) signing(now time.Time) int {
	at := 0
	for i, k := range r.Keys {
		if !k.signsFrom().After(now) {
			at = i
		}
	}
	return at
}

// pending is the key published but not yet signing at now, if any.
func (r *keyRing) pending(now time.Time) (signingKey, bool) {
	if len(r.Keys) < 2 {
		return signingKey{}, false
	}
	last := r.Keys[len(r.Keys)-1]
	return last, last.signsFrom().After(now)
}

// rotationDue reports whether the periodic schedule publishes the next key
// at now: none is pending and the signing key will have signed for
// rotation_period when the next one, published now, starts.
func (r *keyRing) rotationDue(cfg *config, now time.Time) bool {
	if len(r.Keys) == 0 {
		return true
	}
	if _, ok := r.pending(now); ok {
		return false
	}
	return !now.Add(cfg.nextKeyLead()).Before(r.Keys[r.signing(now)].signsFrom().Add(cfg.RotationPeriod))
}

// schedule publishes next at now to sign from signsAt. A pending key that
// never signed is replaced (a second algorithm change before the first
// took effect); the signing key retires when next starts. Keys past
// verification_ttl are dropped.
func (r *keyRing) schedule(next signingKey, signsAt, now time.Time, ttl time.Duration) {
	// A key due within maxClockSkew may have signed on a node whose clock
	// is ahead of this one's (the active node before a failover): it is
	// kept as the one that retires, not dropped as never having signed.
	cur := r.signing(now.Add(maxClockSkew))
	kept := make([]signingKey, 0, len(r.Keys)+1)
	for i, k := range r.Keys {
		if i > cur {
			break // pending: never signed a token
		}
		if i == cur {
			// also when a replaced pending key set it; never before it
			// started, so that its tokens verify for verification_ttl
			k.RetiredAt = maxTime(signsAt, k.signsFrom()).UTC()
		}
		if k.published(now, ttl) {
			kept = append(kept, k)
		}
	}
	next.SignsAt = signsAt.UTC()
	r.Keys = append(kept, next)
}

// dropAllBut keeps only the newest key: an emergency rotation after a key
// leaked, where tokens signed by the old keys must stop verifying.
func (r *keyRing) dropAllBut() {
	r.Keys = r.Keys[len(r.Keys)-1:]
}

// expiry is when the parsed state of the ring stops being true: the next
// key starts signing or a retired key leaves the JWKS. Zero: never.
func (r *keyRing) expiry(now time.Time, ttl time.Duration) time.Time {
	var at time.Time
	earliest := func(t time.Time) {
		if t.After(now) && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	for _, k := range r.Keys {
		earliest(k.signsFrom())
		if !k.RetiredAt.IsZero() {
			earliest(k.RetiredAt.Add(ttl))
		}
	}
	return at
}

// nextKeyLead is the configured lead; configs stored before it existed
// get the default.
func (c *config) nextKeyLead() time.Duration {
	if c.NextKeyLead == 0 {
		return defaultNextKeyLead
	}
	return c.NextKeyLead
}

// jwksMaxAge is the Cache-Control max-age of the JWKS and discovery
// documents, in seconds: at most a minute, and under half the lead, so a
// cache that follows it (jwx's jwk.Cache does, above its minimum refresh
// interval) refetches before the next key signs.
func (c *config) jwksMaxAge() int {
	return max(1, min(jwksMaxAge, int(c.nextKeyLead()/2/time.Second)))
}
