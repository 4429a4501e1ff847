package contract

// What a verifier reads from the plugin to follow it: keybroker/verify for a
// credential it cannot decide offline, the revocation and key-record feeds,
// and the signing keys with the discovery document naming their issuer. The
// answers are VerifyAnswer, FeedPage and KeyRecordsPage; these are the paths
// under the plugin's mount and the request fields, spelled here only.

// Paths under the plugin's mount a verifier reads (or, for verify, writes).
const (
	PathVerify             = "verify"
	PathRevocations        = "revocations"
	PathKeyRecords         = "key-records"
	PathKeyRecordsSnapshot = "key-records/snapshot"
	PathJWKS               = "jwks"
	PathOpenIDDiscovery    = ".well-known/openid-configuration"
)

// Request fields of those paths.
const (
	// verify: the credential and the address it was presented from.
	FieldCredential = "credential"
	FieldRemoteAddr = "remote_addr"

	// The feeds: a cursor (after, and for key records the epoch it
	// belongs to), the snapshot's page cursor, and how long a read may be
	// held for news (seconds).
	FieldAfter   = "after"
	FieldEpoch   = "epoch"
	FieldAfterID = "after_id"
	FieldWait    = "wait"

	// Key records only for these roles or tenants (comma-separated).
	FieldRoles   = "roles"
	FieldTenants = "tenants"
)
