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
func (b *backend) chainEntities(ctx context.Context, s logical.Storage, c *jwtverify.Claims) (entities []string, known bool, err error) {
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
