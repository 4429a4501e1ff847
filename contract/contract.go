package contract

import (
	"strings"
	"time"

	"github.com/keybroker/keybroker/jwtverify"
)

// Reasons keybroker/verify gives. A bad credential is an answer, not an error.
const (
	ReasonOK                = "ok"
	ReasonMalformed         = "malformed"
	ReasonNotFound          = "not_found"
	ReasonExpired           = "expired"
	ReasonRevoked           = "revoked"
	ReasonCIDRDenied        = "cidr_denied"
	ReasonInsufficientScope = "insufficient_scope"
	// JWTs only.
	ReasonInvalidSignature = "invalid_signature"
	ReasonInvalidClaims    = "invalid_claims"
	ReasonNotYetValid      = "not_yet_valid"
	// ReasonDPoPRequired: the credential (a JWT or an API key) is
	// DPoP-bound; keybroker/verify cannot check the proof each request
	// needs (nor refuse its replay), so it refuses it. Verify it with a
	// DPoP-aware verifier (the sidecar).
	ReasonDPoPRequired = "dpop_required"
	// ReasonSuspended: an operator suspended the API key (or its role's
	// keys); it works again when resumed.
	ReasonSuspended = "suspended"
)

// LooksLikeJWT tells a JWT from an API key by its shape: three dot-separated
// parts (an API key has no dot). Both sides pick how to check a credential
// by it.
func LooksLikeJWT(cred string) bool { return strings.Count(cred, ".") == 2 }

// VerifyAnswer is keybroker/verify's answer for an API key.
type VerifyAnswer struct {
	Valid  bool   `json:"valid"`
	Reason string `json:"reason"`
	// UnknownKeyID is set with not_found when no key has the key_id at
	// all (as opposed to a wrong secret for a key that exists): a verifier
	// may then refuse every key with that key_id without asking again.
	// key_ids are public handles, so this tells a caller nothing secret.
	UnknownKeyID bool     `json:"unknown_key_id,omitempty"`
	KeyID        string   `json:"key_id"`
	Name         string   `json:"name"`
	Role         string   `json:"role"`
	Scopes       []string `json:"scopes"`
	Tenant       string   `json:"tenant"`
	BoundCIDRs   []string `json:"bound_cidrs"`
	ExpiresAt    string   `json:"expires_at"`

	Budget    *jwtverify.Budget    `json:"budget"`
	RateLimit *jwtverify.RateLimit `json:"rate_limit"`
	// ReplacedBy: the key was rotated to this key_id, and works only until
	// ExpiresAt, the end of its grace.
	ReplacedBy string `json:"replaced_by,omitempty"`
}

// FeedEntry is one revocation in keybroker/revocations.
type FeedEntry struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	ExpiresAt string `json:"expires_at"`
}

// FeedPage is one read of keybroker/revocations.
type FeedPage struct {
	Revocations []FeedEntry `json:"revocations"`
	Next        uint64      `json:"next"`
	More        bool        `json:"more"`
	// Epoch and Last: a reader whose epoch is not the page's, or whose
	// cursor is above Last, reads again from 0 (storage went back). Empty
	// from plugins older than the epoch.
	Epoch string `json:"epoch"`
	Last  uint64 `json:"last"`
}

// FeedRestart says whether a reader that followed the feed in epoch up to
// cursor must read it again from 0 on seeing page.
func FeedRestart(epoch string, cursor uint64, page *FeedPage) bool {
	if page.Epoch == "" {
		return false // a plugin that keeps no epoch
	}
	return (epoch != "" && page.Epoch != epoch) || page.Last < cursor
}

// RevocationGrace is how long past its credential's expires_at a
// revocation is kept: in the feed, in the plugin's own index (verify,
// exchange) and in a verifier's revoked set. It is the most leeway any
// verifier may allow past exp (jwtverify refuses a larger one), so no
// verifier's clock rule takes a revoked credential back, and a verifier
// that starts reading the feed while a credential is still within its
// leeway learns of its revocation. API keys' revocations are kept as long:
// no verifier applies a grace to them, but a verifier's clock may run
// behind Vault's by that much.
const RevocationGrace = jwtverify.MaxLeeway

// RevokedUntil is when a revocation of a credential expiring at exp may be
// forgotten.
func RevokedUntil(exp time.Time) time.Time { return exp.Add(RevocationGrace) }

// MaxRevocationPage is the most entries one feed read returns.
const MaxRevocationPage = 1000

// Identity headers a verifier sets on an allowed request, for the service
// behind it. On a gateway's auth answer every one of them is set (empty when
// it does not apply), so a gateway that copies them always overwrites what
// the client sent. A service must read identity only from these names, and
// only behind a verifier or gateway that removes the client's copies.
const (
	HeaderPrefix  = "X-Keybroker-"
	HeaderSubject = "X-Keybroker-Subject"
	HeaderKeyID   = "X-Keybroker-Key-Id"
	HeaderJTI     = "X-Keybroker-Jti"
	HeaderRole    = "X-Keybroker-Role"
	HeaderTenant  = "X-Keybroker-Tenant"
	HeaderScopes  = "X-Keybroker-Scopes"
	// HeaderActor is the delegation chain of an exchanged token
	// (RFC 8693 act), the current actor first, comma-separated, each
	// subject with "%" and "," percent-encoded; empty when nobody acts for
	// the subject.
	HeaderActor = "X-Keybroker-Actor"
	// HeaderReason says why a request was denied (on denials only).
	HeaderReason = "X-Keybroker-Reason"
)

// IdentityHeaders returns the identity headers in a fixed order: subject,
// key id, jti, role, tenant, scopes, actor. A new slice each call.
func IdentityHeaders() []string {
	return []string{HeaderSubject, HeaderKeyID, HeaderJTI, HeaderRole, HeaderTenant, HeaderScopes, HeaderActor}
}

// RoutingOverrides are the request headers that name another path or
// method than the request's own (IIS URL Rewrite, Symfony, Express's
// method-override honour them): the sidecar's default strip_headers, and
// what every gateway example drops. A new slice each call.
func RoutingOverrides() []string {
	return []string{"X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"}
}

// ActorHeader renders a delegation chain (current actor first) as
// HeaderActor's value.
func ActorHeader(actors []string) string {
	var b strings.Builder
	for i, a := range actors {
		if i > 0 {
			b.WriteString(", ")
		}
		for j := 0; j < len(a); j++ {
			switch a[j] {
			case '%':
				b.WriteString("%25")
			case ',':
				b.WriteString("%2C")
			default:
				b.WriteByte(a[j])
			}
		}
	}
	return b.String()
}

// KeyRecord is what a verifier keeps of one API key to verify it without
// asking Vault, from keybroker/key-records: never the key, only the SHA-256
// of it, which cannot be turned back into the key (its secret holds 256
// random bits).
type KeyRecord struct {
	KeyID string `json:"key_id"`
	// Gone: the key no longer exists (tidied, or never stored); a verifier
	// drops its record. Only key_id is set.
	Gone bool `json:"gone,omitempty"`
	// Hash is the hex SHA-256 of the whole key. There is no name or
	// metadata: a verifier does not decide on them, and their size is the
	// minter's to choose, so they would let any minter bloat every read.
	Hash       string   `json:"hash,omitempty"`
	Role       string   `json:"role,omitempty"`
	Scopes     []string `json:"scopes,omitempty"`
	BoundCIDRs []string `json:"bound_cidrs,omitempty"`
	Tenant     string   `json:"tenant,omitempty"`
	ExpiresAt  string   `json:"expires_at,omitempty"`
	Revoked    bool     `json:"revoked,omitempty"`
	// Budget is the key's own limits. The key is metered when Budget.Units
	// is above 0 or its tenant is in the page's metered_tenants; a verifier
	// then passes Budget on as keybroker/verify's answer would.
	Budget    *jwtverify.Budget    `json:"budget,omitempty"`
	RateLimit *jwtverify.RateLimit `json:"rate_limit,omitempty"`
	// JKT binds the key to its holder's key pair (DPoP, RFC 9449): a
	// verifier accepts it only with a proof signed by it.
	JKT string `json:"jkt,omitempty"`
	// Suspended: refused until an operator resumes it. The key's own
	// suspension; its role's is in the page's SuspendedRoles.
	Suspended bool `json:"suspended,omitempty"`
	// ReplacedBy is the key_id of the key's successor once the key was
	// rotated; the key works until its expires_at, the end of the grace.
	ReplacedBy string `json:"replaced_by,omitempty"`
}

// KeyRecordsPage is one read of keybroker/key-records (the changes) or of
// keybroker/key-records/snapshot.
//
// A verifier reads the snapshot from after_id "" to the end, then follows
// the changes from the first snapshot page's cursor: a key minted, renewed,
// revoked or changed while it read the snapshot is among those changes, and
// every change is given as the key's record as it is when read, so applying
// one twice does no harm. A new epoch, or resync, means the changes it
// follows are no longer held: it reads the snapshot again.
type KeyRecordsPage struct {
	Records []KeyRecord `json:"records"`
	// MeteredTenants are the tenants with a budget ceiling now.
	MeteredTenants []string `json:"metered_tenants"`
	// SuspendedRoles are the roles suspended now (of those the reader
	// asked for): a key of one of them is refused as suspended, whatever
	// its record's Suspended (which is the key's own suspension) says.
	SuspendedRoles []string `json:"suspended_roles"`
	Epoch          string   `json:"epoch"`

	// Changes: Next is the cursor to pass as after next time, Last the
	// newest change, More whether another read returns more now, Resync
	// that after is older than the changes held (or from another epoch).
	Next   uint64 `json:"next"`
	Last   uint64 `json:"last"`
	More   bool   `json:"more"`
	Resync bool   `json:"resync"`

	// Snapshot: NextID is the after_id of the next page, More whether there
	// is one; Cursor is where to follow changes from.
	NextID string `json:"next_id"`
	Cursor uint64 `json:"cursor"`

	// Format is FormatPacked1 when the snapshot page's records are in
	// Packed (base64 of UnpackKeyRecords's input) instead of Records;
	// empty for JSON. Only a reader that asked for it gets it.
	Format string `json:"format,omitempty"`
	Packed string `json:"packed,omitempty"`
}

// MaxKeyRecordPage is the most records one read returns, and
// MaxKeyRecordPageBytes about the most bytes their JSON takes (a page
// ends early rather than exceed it; scopes and bounds are the large part).
const (
	MaxKeyRecordPage      = 1000
	MaxKeyRecordPageBytes = 4 << 20
	// MaxPackedKeyRecordPage is the most records a packed snapshot page
	// holds (within MaxKeyRecordPageBytes too): ten times a JSON page,
	// for a tenth of the reads.
	MaxPackedKeyRecordPage = 10 * MaxKeyRecordPage
)

// KeyUse is one API key in a verifier's report to keybroker/key-usage: the
// report's usage field is a JSON array of them, at most MaxKeyUsageEntries,
// and its report_id (at most MaxReportIDLength letters, digits, '-', '_')
// is random per report and the same when the report is sent again, so that
// the plugin counts it once.
type KeyUse struct {
	KeyID string `json:"key_id"`
	Last  int64  `json:"last"` // Unix seconds
	From  string `json:"from,omitempty"`
	Count int64  `json:"count"`
}

const (
	MaxKeyUsageEntries = 10000
	MaxReportIDLength  = 64
)
