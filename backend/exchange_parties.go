package backend

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// Who an exchange is between: the subject token it is given, the caller
// acting for it (and its actor token, when given), and the delegation
// chain they make, checked before anything of the new token is settled.

// exchangeParties are who an exchange is between: the subject token, its
// chain's Vault entities (known: see chainEntities), and the caller's own
// token when it gave one (actor_token; nil when not).
type exchangeParties struct {
	subject *jwtverify.Claims
	chain   []string
	known   bool
	actor   *jwtverify.Claims
}

// actorSubject is who the caller is as an actor: its sub under the role's
// subject setting. A caller without a Vault entity cannot act for anyone:
// all such callers look alike.
func (b *backend) actorSubject(req *logical.Request, r *role) (string, error) {
	if req.EntityID == "" {
		return "", fmt.Errorf("exchanging a token needs a Vault entity: the caller (a root or orphan token) has none, and act must name who acts")
	}
	return b.subject(req, r.Subject)
}

// parties checks m's subject token, that the caller (actor, under role r)
// may act in its chain, and m's actor token. nil with why when it may not.
func (b *backend) parties(ctx context.Context, req *logical.Request, r *role, m exchangeRequest, actor string) (*exchangeParties, *logical.Response, error) {
	subject, msg, userErr, err := b.exchangedToken(ctx, req, "subject_token", m.subjectToken, m.subjectTokenType)
	if msg != "" || userErr != nil || err != nil {
		return nil, exchangeError(msg, userErr), err
	}
	chain, known, err := chainEntities(ctx, req.Storage, subject)
	if err != nil {
		return nil, nil, err
	}
	refusal := chainRefusal(subject, chain, known, actor, req.EntityID)
	switch {
	case !slices.Contains(r.AllowedSubjectRoles, subject.Role):
		refusal = fmt.Sprintf("role %q may not act for tokens of role %q (allowed_subject_roles: %s)", m.role, subject.Role, strings.Join(r.AllowedSubjectRoles, ", "))
	case refusal != "":
	case len(subject.Actors())+1 > r.delegationDepth():
		refusal = fmt.Sprintf("the chain would be %d actors long; role %q allows at most %d (max_delegation_depth)", len(subject.Actors())+1, m.role, r.delegationDepth())
	case r.Tenant != "" && subject.Tenant != r.Tenant:
		refusal = fmt.Sprintf("subject_token belongs to tenant %q, role %q to tenant %q: no delegation across tenants", subject.Tenant, m.role, r.Tenant)
	}
	if refusal != "" {
		return nil, logical.ErrorResponse(refusal), nil
	}
	ac, resp, err := b.actorToken(ctx, req, m, actor)
	if resp != nil || err != nil {
		return nil, resp, err
	}
	return &exchangeParties{subject: subject, chain: chain, known: known, actor: ac}, nil, nil
}

// actorToken checks m's actor token, when given: a token of the plugin's
// whose sub is the caller's (actor, under role m.role's subject setting).
func (b *backend) actorToken(ctx context.Context, req *logical.Request, m exchangeRequest, actor string) (*jwtverify.Claims, *logical.Response, error) {
	if m.actorToken == "" {
		return nil, nil, nil
	}
	ac, msg, userErr, err := b.exchangedToken(ctx, req, "actor_token", m.actorToken, m.actorTokenType)
	if msg != "" || userErr != nil || err != nil {
		return nil, exchangeError(msg, userErr), err
	}
	if ac.Subject != actor {
		return nil, logical.ErrorResponse("actor_token's sub is not the caller's (%s under role %q's subject setting)", actor, m.role), nil
	}
	return ac, nil, nil
}

func exchangeError(msg string, userErr *logical.Response) *logical.Response {
	if userErr != nil {
		return userErr
	}
	if msg == "" {
		return nil
	}
	return logical.ErrorResponse(msg)
}

// exchangedToken checks a token given to token/exchange: the plugin's own,
// valid, not revoked, not bound. msg says what is wrong with it.
func (b *backend) exchangedToken(ctx context.Context, req *logical.Request, field, token, typ string) (c *jwtverify.Claims, msg string, userErr *logical.Response, err error) {
	if token == "" {
		return nil, field + " is required", nil, nil
	}
	if typ != "" && typ != tokenTypeAccessToken && typ != tokenTypeJWT {
		return nil, fmt.Sprintf("%s_type %q: keybroker exchanges only its own JWTs (%s)", field, typ, tokenTypeAccessToken), nil, nil
	}
	c, reason, userErr, err := b.ownJWT(ctx, req, token, "")
	switch {
	case userErr != nil || err != nil:
		return nil, "", userErr, err
	case reason != "":
		return nil, fmt.Sprintf("%s is not a valid keybroker token: %s", field, reason), nil, nil
	case c.BoundKey() != "":
		return nil, field + " is DPoP-bound: only its holder's key could use it, so it cannot be exchanged; its holder can mint an unbound token to delegate", nil, nil
	}
	return c, "", nil, nil
}

// Who is in a delegation chain, as Vault entities. A token's sub and act
// subs are names each role spelled under its own subject setting (an entity
// id under one role, the entity's name or an alias under another), so they
// cannot tell whether the caller already is in the chain. The plugin keeps,
// for each exchanged token, the entities behind them.

// entityChain is who a token's chain is, as Vault entities: the subject's
// first, then each actor's in the order they acted (the current actor,
// the token's client_id, last).
type entityChain struct {
	Entities  []string  `json:"entities"`
	ExpiresAt time.Time `json:"expires_at"` // the token's exp
}

// chainEntities is the Vault entities of c's chain, subject first. A
// minted (not exchanged) token's is its client_id alone: the entity that
// minted it, whose identity its sub was derived from (a refresh keeps it).
// An exchanged token's is kept under chainPrefix. known is false for a
// token exchanged before chains were kept (or a token without client_id).
func chainEntities(ctx context.Context, s logical.Storage, c *jwtverify.Claims) (entities []string, known bool, err error) {
	if c.Act == nil {
		return []string{c.ClientID}, c.ClientID != "", nil
	}
	ch, err := getJSON[entityChain](ctx, s, chainPath(c.ID))
	if err != nil || ch == nil {
		return nil, false, err
	}
	if len(ch.Entities) != len(c.Actors())+1 || ch.Entities[len(ch.Entities)-1] != c.ClientID {
		return nil, false, fmt.Errorf("the stored chain of %s (%d entities) does not match the token (%d actors)", c.ID, len(ch.Entities), len(c.Actors()))
	}
	return ch.Entities, true, nil
}

// chainRefusal says why the caller may not act in subject's chain, "" if
// it may. entities are the chain's Vault entities (known: see
// chainEntities); actor is the caller's sub under the role's subject
// setting, entity its Vault entity.
//
// The caller is compared by entity: it may be neither the subject's nor an
// actor's, whatever subject setting each earlier role had. And by name: the
// new token may not name the same sub twice (a service reading the chain
// sees names only). For a chain whose entities are not known (exchanged
// before they were kept), the entity is compared as it was then: with the
// last actor's client_id, and with the sub and act subs under the names an
// entity_id role gives (an actor of another setting may then be missed).
func chainRefusal(subject *jwtverify.Claims, entities []string, known bool, actor, entity string) string {
	actors := subject.Actors()
	own := "subject_token is the caller's own token (its subject is the caller's Vault entity): exchange is for acting for someone else"
	again := fmt.Sprintf("the caller (%s) already acts in subject_token's chain (%s): an actor appears at most once", actor, strings.Join(actors, ", "))
	switch {
	case known && entities[0] == entity:
		return own
	case known && slices.Contains(entities[1:], entity):
		return again
	case !known && (subject.Subject == entity || len(actors) == 0 && subject.ClientID == entity):
		return own
	case !known && (subject.ClientID == entity || slices.Contains(actors, entity)):
		return again
	case subject.Subject == actor:
		return fmt.Sprintf("the caller's sub under this role's subject setting (%s) is subject_token's sub: the new token would name it as both subject and actor (an actor appears at most once, by entity and by name)", actor)
	case slices.Contains(actors, actor):
		return fmt.Sprintf("the caller's sub under this role's subject setting (%s) already names an actor in subject_token's chain (%s): the new token would name it twice (an actor appears at most once, by entity and by name)", actor, strings.Join(actors, ", "))
	}
	return ""
}
