// Package revoked holds the credential ids the plugin's revocation feed
// says are revoked, for as long as any verifier could still accept them.
//
// It matters for security because forgetting an id too early lets a
// revoked credential through: an id is kept until contract.RevocationGrace
// past its credential's expiry, not until the expiry (a JWT passes until
// exp plus leeway, and an API key's expiry is Vault's clock, which this one
// may trail), and an entry whose expiry cannot be read is kept a day rather
// than dropped. The revocation feed (sidecar/feed_revocations.go) writes
// the set; the decision core asks it Has on every request.
package revoked
