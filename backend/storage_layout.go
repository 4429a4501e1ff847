package backend

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// The plugin's storage, all in one place: every prefix and key the backend
// reads or writes, and what lives there. A path here is never a request
// path, though some look alike (roles/<name> is both).
//
//	key                                    holds                                         written by
//	config                                 config: issuer, signing algorithm, periods    path_config.go
//	signing/keys                           keyRing (seal-wrapped)                        signing.go
//	tidy/last                              when periodic tidy last ran                   backend.go
//	roles/<name>                           role                                          path_roles.go, path_role_suspend.go
//	suspended-roles/<name>                 roleSuspension, read by verifiers' feeds      path_role_suspend.go
//	keys/<key_id>                          keyEntry (the key's hash, never the key)      key_entry.go, path_key_lifecycle.go, revocation
//	rotations/<key_id>                     rotation: when a rotated key's grace ends     path_key_lifecycle.go
//	revoked/jti/<jti>                      revokedJTI: the index verify reads            path_token.go
//	revocations/seq                        feedCounter: the feed's last seq and epoch    path_revocations.go
//	revocations/entries/<seq, 20 digits>   revocation, in feed order                     path_revocations.go
//	refresh/<id>                           refreshEntry (hash, grant)                    path_refresh.go
//	families/<family>                      family: a refresh family's tokens             path_refresh.go
//	token-families/<jti>                   tokenFamily: an access token's family         path_refresh.go
//	derived/<jti>/<hex sha256(actor)[:16]> derivedTokens one actor exchanged from jti    exchange_derived.go
//	derived/<jti>                          the same, filed before slots were per actor   (read and tidied only)
//	chains/<jti>                           entityChain: an exchanged token's entities    exchange_derived.go
//	approvals/<role>/<id>                  approvalRequest                               mint_approval.go, approval_store.go
//	approvals/<id>                         the same, before issue 23 (moved at start)    (read and moved only)
//	approval-index/<role>                  approvalIndex: a role's live requests         approval_store.go
//	tenants/<name>                         tenantEntry: a tenant's spend ceiling         path_tenants.go, path_budget.go
//	meters/<id>                            meter: a credential's budget, or a link       path_budget.go, budget.go
//	rates/<sha256(lineage), hex>           rateWindow: a cluster-wide rate window        path_rate.go
//	usage/shards/<2 hex digits>            key use, 1/usageShards of the keys each       path_key_usage.go
//	usage/reports/<hour>/<report_id>       one recorded key-usage report                 path_key_usage.go

const (
	configPath            = "config"
	signingKeysPath       = "signing/keys" // in SealWrapStorage: with an HSM (Vault Enterprise) the private keys are seal-wrapped too
	lastTidyPath          = "tidy/last"
	rolePrefix            = "roles/"
	suspendedRolePrefix   = "suspended-roles/"
	keyPrefix             = "keys/"
	rotationPrefix        = "rotations/"
	revokedJTIPrefix      = "revoked/jti/"
	revocationSeqPath     = "revocations/seq"
	revocationEntryPrefix = "revocations/entries/"
	refreshPrefix         = "refresh/"
	familyPrefix          = "families/"
	tokenFamilyPrefix     = "token-families/"
	derivedPrefix         = "derived/"
	chainPrefix           = "chains/"
	approvalPrefix        = "approvals/"
	approvalIndexPrefix   = "approval-index/"
	tenantPrefix          = "tenants/"
	meterPrefix           = "meters/"
	ratePrefix            = "rates/"
	usageShardPrefix      = "usage/shards/"
	usageReportPrefix     = "usage/reports/" // <hour>/<report_id>
)

func rolePath(name string) string            { return rolePrefix + name }
func suspendedRolePath(name string) string   { return suspendedRolePrefix + name }
func apiKeyPath(id string) string            { return keyPrefix + id }
func rotationPath(id string) string          { return rotationPrefix + id }
func revokedJTIPath(jti string) string       { return revokedJTIPrefix + jti }
func refreshPath(id string) string           { return refreshPrefix + id }
func familyPath(id string) string            { return familyPrefix + id }
func tokenFamilyPath(jti string) string      { return tokenFamilyPrefix + jti }
func chainPath(jti string) string            { return chainPrefix + jti }
func tenantPath(name string) string          { return tenantPrefix + name }
func approvalIndexPath(role string) string   { return approvalIndexPrefix + role }
func approvalPath(role, id string) string    { return approvalPrefix + role + "/" + id }
func approvalsOfRole(role string) string     { return approvalPrefix + role + "/" }
func legacyApprovalPath(id string) string    { return approvalPrefix + id }
func revocationEntryPath(name string) string { return revocationEntryPrefix + name }

// meterPath is a credential's meter.
func meterPath(id string) string { return meterPrefix + id }

// revocationPath is the entry of feed sequence number seq: zero-padded, so
// storage lists entries in feed order.
func revocationPath(seq uint64) string {
	return fmt.Sprintf("%s%020d", revocationEntryPrefix, seq)
}

// derivedKey is where the tokens one actor exchanged from parent are filed:
// each actor has its own maxDerived slots, so no actor can use up another's.
// The actor (a Vault entity id) is hashed into one path segment whatever it
// holds. Tokens exchanged before slots were per actor are filed under
// derivedLegacyPath(parent).
func derivedKey(parent, actor string) string {
	sum := sha256.Sum256([]byte(actor))
	return derivedActorsOf(parent) + hex.EncodeToString(sum[:16])
}

// derivedActorsOf is the folder of parent's per-actor derived indexes.
func derivedActorsOf(parent string) string { return derivedPrefix + parent + "/" }

// derivedLegacyPath is parent's derived index from before slots were per
// actor.
func derivedLegacyPath(parent string) string { return derivedPrefix + parent }

// derivedIndexPath is a derived index by its name under derivedPrefix
// (<jti> or <jti>/<actor hash>), as tidy lists them.
func derivedIndexPath(name string) string { return derivedPrefix + name }
