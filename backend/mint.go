package backend

import (
	"cmp"
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A mint as the domain sees it, and how it opens. The path layer
// (mint_fields.go) reads a request's fields, checked, into these types, as
// Vault's PKI engine reads a request into its CreationBundleInput; minting,
// approval and exchange are functions over them and never see the request's
// raw fields. Each mint (key_mint.go, token_mint.go, exchange.go) then goes
// one way: its opening here, the approved request a redemption opens
// (mint_approval.go), the grant narrowed to the role (narrow.go), approval,
// and the credential issued and stored (key_entry.go, token_issue.go).

// grantAsk is what a mint asks of its role, each field as the request gave
// it, zero when it gave none.
type grantAsk struct {
	role        string
	scopes      []string       // well formed, each once
	scopesGiven bool           // scopes was sent, even empty
	cidrs       []netip.Prefix // empty: the role's
	budget      *int64         // nil: the role's
	ttl         time.Duration
	// dpopJKT is the thumbprint of the key the credential is asked to be
	// bound to (DPoP: dpop_jkt, or dpop_jwk's), "" for a bearer one.
	dpopJKT string
}

// approvalAsk is what a mint that may need approval carries for it.
type approvalAsk struct {
	kind string // approvalKindKey, approvalKindToken
	// fields are the request's fields as sent (role and approval_id aside):
	// an approval request stores them, and its redemption mints them again.
	fields map[string]interface{}
	// approvalID asks to redeem that approved request instead of minting
	// fields (it comes alone). The request it names, once opened
	// (redeeming), is the mint's approved parameter: it skips approval,
	// caps the lifetime at the role's approved_max_ttl and is recorded on
	// the credential.
	approvalID string
}

// keyMintRequest is a mint of an API key (keys/<role>).
type keyMintRequest struct {
	grantAsk
	approvalAsk
	name     string
	metadata map[string]string // nil: none asked
}

// tokenMintRequest is a mint of an agent JWT (token/<role>).
type tokenMintRequest struct {
	grantAsk
	approvalAsk
	audience string
	// read: minted by a read (Vault Agent's template), which mints again
	// rather than refresh, so it gets no refresh token.
	read bool
}

// mintOpening is how a mint path opens on its role: which role (a name
// already checked), whether the mint holds the role's lock, and what it
// requires of the role beyond existing.
type mintOpening struct {
	role string
	// locked: the role's lock is held for reading from the checks to the
	// credential's write, so a suspension waits for the mints under way and
	// no mint passes the check once it answered (keys).
	locked bool
	// missing is the refusal for a role that does not exist (a format with
	// the role's name); "" for "role %q does not exist".
	missing string
	// What the mint needs of the role: not suspended (keys), audiences
	// (tokens), subject roles to act for (exchange).
	unsuspended, audiences, delegates bool
}

// openMint is the opening every mint path shares: the role read (under its
// lock for a locked mint) and refused where it does not exist or does not
// serve the mint. r is nil when refused: resp or err says why. The caller
// calls release once done with r (a no-op for an unlocked mint); a refusal
// has released already.
func (b *backend) openMint(ctx context.Context, s logical.Storage, o mintOpening) (r *role, release func(), resp *logical.Response, err error) {
	release = func() {}
	if o.locked {
		l := b.roleLocks.of(o.role)
		l.RLock()
		release = sync.OnceFunc(l.RUnlock)
	}
	r, err = b.roles.get(ctx, s, o.role)
	switch {
	case err != nil:
	case r == nil:
		resp = logical.ErrorResponse(cmp.Or(o.missing, "role %q does not exist"), o.role)
	case o.unsuspended && r.Suspended:
		resp = logical.ErrorResponse("role %q is suspended: resume it (roles/%s/resume) to mint keys", o.role, o.role)
	case o.delegates && len(r.AllowedSubjectRoles) == 0:
		resp = logical.ErrorResponse("role %q may not act for anyone: set allowed_subject_roles on it", o.role)
	case o.audiences && len(r.Audiences) == 0:
		resp = logical.ErrorResponse("role %q has no audiences; set audiences on the role to mint tokens from it", o.role)
	}
	if resp != nil || err != nil {
		release()
		return nil, func() {}, resp, err
	}
	return r, release, nil, nil
}
