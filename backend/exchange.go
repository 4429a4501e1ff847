package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Exchanging a token (RFC 8693), token/exchange, one step after the other:
// the role's opening, the parties (exchange_parties.go), the grant narrowed
// to the subject's and the role's (narrow.go), its limits and lifetime, and
// the new token, filed under its subject token's derived index before it
// is minted (exchange_derived.go).

// exchangeRequest is an exchange (token/exchange): the grant asked, and
// the tokens given with their RFC 8693 types.
type exchangeRequest struct {
	grantAsk
	audience                       string
	subjectToken, subjectTokenType string
	actorToken, actorTokenType     string
	requestedTokenType             string
}

// exchange mints, under the role m names, a token for the caller to act
// for the subject of m's subject token. Every check comes before the new
// token's slot is filed: a refused exchange mints and stores nothing.
func (b *backend) exchange(ctx context.Context, req *logical.Request, m exchangeRequest) (*logical.Response, error) {
	r, release, resp, err := b.openMint(ctx, req.Storage, mintOpening{role: m.role, delegates: true, audiences: true})
	if r == nil {
		return resp, err
	}
	defer release()
	if rt := m.requestedTokenType; rt != "" && rt != tokenTypeAccessToken {
		return logical.ErrorResponse("requested_token_type %q: keybroker issues %s", rt, tokenTypeAccessToken), nil
	}
	actor, err := b.actorSubject(req, r)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	x, resp, err := b.parties(ctx, req, r, m, actor)
	if x == nil {
		return resp, err
	}
	g, resp, err := exchangeGrant(req, r, m, x, actor)
	if resp != nil || err != nil {
		return resp, err
	}
	meterID, err := exchangeLimits(ctx, req.Storage, r, x.subject, &g)
	if err != nil {
		return nil, err
	}
	ttl, warnings, err := b.mintTTL(m.ttl, r.TokenTTL, r.TokenMaxTTL, true, r, nil)
	if err != nil {
		return nil, err
	}
	if left := time.Until(x.subject.ExpiresAt.Time).Truncate(time.Second); left < ttl {
		ttl = left // never outlives the token it was exchanged from
		warnings = append(warnings, fmt.Sprintf("ttl capped at the subject token's expiry (%s)", left))
	}
	if ttl < time.Second {
		return logical.ErrorResponse("subject_token expires now"), nil
	}
	resp, err = b.issueExchanged(ctx, req, g, x, ttl, meterID)
	if err != nil || resp.IsError() {
		return resp, err
	}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	return resp, nil
}
