package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"strings"

	"github.com/keybroker/keybroker/contract"
)

// An authenticator decides who a presentation belongs to: a bearer
// credential, or a DPoP-bound one with its proof (authn_dpop.go). Both
// check the credential itself with its kind: an API key (authn_key.go) or
// an agent JWT (authn_jwt.go). authenticators.of is the one place that picks.
type authenticator interface {
	authenticate(ctx context.Context, p presentation) (*identity, decision)
}

// A credentialKind checks one kind of credential and says whose it is, and
// to which key it is bound (identity.jkt), without judging the binding.
type credentialKind interface {
	check(ctx context.Context, p presentation) (*identity, decision)
}

// bearer authenticates a credential presented as a bearer (Authorization:
// Bearer, or X-API-Key). A DPoP-bound one is refused: whoever holds it is
// not thereby its key's holder.
type bearer struct{ kind credentialKind }

func (a bearer) authenticate(ctx context.Context, p presentation) (*identity, decision) {
	id, d := a.kind.check(ctx, p)
	if id != nil && id.jkt != "" {
		return nil, decision{status: http.StatusUnauthorized, reason: contract.ReasonDPoPRequired, dpop: true}
	}
	return id, d
}

// notAccepted refuses a kind of credential credential_kinds leaves out,
// before anything reads it.
type notAccepted struct{}

func (notAccepted) authenticate(context.Context, presentation) (*identity, decision) {
	return nil, deny(http.StatusUnauthorized, contract.ReasonKindNotAccepted)
}

// presentation is a credential as one request presents it, with what a
// proof of possession is checked against.
type presentation struct {
	cred string
	// dpop: the Authorization scheme was DPoP; proof is the DPoP header.
	dpop  bool
	proof string
	// The request the credential came with: its method and raw path (as
	// the client sent them, or as the gateway reports them) and the
	// client's address.
	method, rawPath string
	clientIP        netip.Addr
}

// authenticators are made once (New), so that picking one per request
// allocates nothing.
type authenticators struct {
	bearerKey, bearerJWT, dpopKey, dpopJWT authenticator
}

// of picks how a presentation is authenticated: the kind of credential by
// its shape (a JWT or an API key), DPoP or bearer by the Authorization
// scheme.
func (a *authenticators) of(p *presentation) authenticator {
	jwt := contract.LooksLikeJWT(p.cred)
	switch {
	case p.dpop && jwt:
		return a.dpopJWT
	case p.dpop:
		return a.dpopKey
	case jwt:
		return a.bearerJWT
	}
	return a.bearerKey
}

// presentedFrom reads the credential from Authorization (Bearer or DPoP)
// or X-API-Key, and the DPoP proof header. ok is false for a request that
// is malformed: another auth scheme, two different credentials, or any of
// the headers repeated (a later component might read the other copy).
func presentedFrom(h http.Header) (p presentation, ok bool) {
	auth, ok1 := single(h, "Authorization")
	key, ok2 := single(h, "X-API-Key")
	proof, ok3 := single(h, "Dpop") // canonical: no allocation per request
	if !ok1 || !ok2 || !ok3 {
		return presentation{}, false
	}
	fromAuth := ""
	if auth != "" {
		scheme, rest, found := strings.Cut(auth, " ")
		switch {
		case !found || strings.TrimSpace(rest) == "":
			return presentation{}, false
		case strings.EqualFold(scheme, "Bearer"):
		case strings.EqualFold(scheme, "DPoP"):
			p.dpop = true
		default:
			return presentation{}, false
		}
		fromAuth = strings.TrimSpace(rest)
	}
	key = strings.TrimSpace(key)
	switch {
	case fromAuth != "" && key != "" && fromAuth != key:
		return presentation{}, false
	case fromAuth != "":
		p.cred = fromAuth
	default:
		p.cred = key
	}
	p.proof = strings.TrimSpace(proof)
	return p, true
}
