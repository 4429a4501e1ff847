package backend

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

// delegationEnv: a user agent's role, a tool agent's role that may act for
// it, and a sub-tool's role that may act for the tool, two deep. The user's
// tokens are for svc, and an exchange keeps the audience.
func delegationEnv(t testing.TB) *testEnv {
	return withDelegationRoles(newTestEnv(t))
}

// withDelegationRoles writes delegationEnv's config and roles in e.
func withDelegationRoles(e *testEnv) *testEnv {
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	e.createRole("user", map[string]interface{}{"scopes": "read,write,exec", "default_scopes": "read,write", "audiences": "svc", "token_ttl": "10m", "bound_cidrs": "10.0.0.0/8"})
	e.createRole("tool", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "token_ttl": "1h", "token_max_ttl": "1h", "allowed_subject_roles": "user"})
	e.createRole("subtool", map[string]interface{}{"scopes": "read,write", "default_scopes": "read", "audiences": "svc2,svc", "allowed_subject_roles": "tool", "max_delegation_depth": 2})
	return e
}

// as sends a request as another Vault entity.
func (e *testEnv) as(entity string, op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	e.t.Helper()
	prev := e.entityID
	e.entityID = entity
	defer func() { e.entityID = prev }()
	return e.ok(op, path, data)
}

func (e *testEnv) asError(entity string, op logical.Operation, path string, data map[string]interface{}, want string) {
	e.t.Helper()
	prev := e.entityID
	e.entityID = entity
	defer func() { e.entityID = prev }()
	e.userError(op, path, data, want)
}

func TestExchangeChain(t *testing.T) {
	e := delegationEnv(t)
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", map[string]interface{}{"scopes": "read,write,exec"})
	subjectToken := t0.Data["token"].(string)
	c0, _ := e.offline(subjectToken, "svc")

	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{
		"role": "tool", "subject_token": subjectToken, "subject_token_type": tokenTypeAccessToken, "scopes": "read",
	})
	if t1.Data["issued_token_type"] != tokenTypeAccessToken || t1.Data["sub"] != "user-entity" || strings.Join(t1.Data["actors"].([]string), ",") != "tool-entity" {
		t.Fatalf("exchange answer %#v", t1.Data)
	}
	c1, err := e.offline(t1.Data["token"].(string), "svc")
	if err != nil {
		t.Fatal(err)
	}
	if c1.Subject != "user-entity" || c1.ClientID != "tool-entity" || c1.Scope != "read" || c1.Role != "tool" ||
		c1.Act == nil || c1.Act.Subject != "tool-entity" || c1.Act.Act != nil || c1.ExpiresAt.After(c0.ExpiresAt.Time) ||
		strings.Join(c1.CIDR, ",") != "10.0.0.0/8" || !c1.AuthTime.Equal(c0.AuthTime.Time) {
		t.Fatalf("exchanged claims %+v act %+v (subject exp %v)", c1, c1.Act, c0.ExpiresAt)
	}
	if _, ok := t1.Data["refresh_token"]; ok {
		t.Fatal("an exchanged token came with a refresh token")
	}

	// Second hop: nested act, the current actor outermost, narrowed again.
	t2 := e.as("subtool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "subtool", "subject_token": t1.Data["token"]})
	c2, err := e.offline(t2.Data["token"].(string), "svc")
	if err != nil {
		t.Fatal(err)
	}
	if c2.Subject != "user-entity" || strings.Join(c2.Actors(), ",") != "subtool-entity,tool-entity" || c2.Scope != "read" {
		t.Fatalf("second hop: %+v actors %v", c2, c2.Actors())
	}
	v := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": t2.Data["token"], "remote_addr": "10.1.1.1"}).Data
	if v["valid"] != true || strings.Join(v["actors"].([]string), ",") != "subtool-entity,tool-entity" {
		t.Fatalf("verify of the second hop: %#v", v)
	}

	// Refused, each with what is wrong.
	for _, tc := range []struct {
		entity string
		data   map[string]interface{}
		want   string
	}{
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "scopes": "exec"}, "not allowed by the role"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": t1.Data["token"], "scopes": "write"}, "may not act for tokens of role \"tool\""},
		{"subtool-entity", map[string]interface{}{"role": "subtool", "subject_token": t1.Data["token"], "scopes": "write"}, "cannot widen"},
		{"subtool-entity", map[string]interface{}{"role": "subtool", "subject_token": subjectToken}, "may not act for tokens of role \"user\""},
		{"subtool-entity", map[string]interface{}{"role": "subtool", "subject_token": t2.Data["token"]}, "may not act for tokens of role \"subtool\""},
		{"user-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken}, "the caller's own token"},
		{"", map[string]interface{}{"role": "tool", "subject_token": subjectToken}, "needs a Vault entity"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken + "x"}, "not a valid keybroker token: malformed"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": "not-a-jwt"}, "not a valid keybroker token"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "only its own JWTs"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "requested_token_type"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "audience": "other"}, "audience \"other\" is not allowed"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "bound_cidrs": "192.168.0.0/16"}, "no block in common"},
		{"tool-entity", map[string]interface{}{"role": "user", "subject_token": subjectToken}, "may not act for anyone"},
		{"tool-entity", map[string]interface{}{"role": "nope", "subject_token": subjectToken}, "does not exist"},
		{"tool-entity", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "budget": 5}, "unknown field"},
	} {
		e.asError(tc.entity, logical.UpdateOperation, "token/exchange", tc.data, tc.want)
	}

	// Depth: the tool role allows chains of one.
	e.createRole("tool", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "allowed_subject_roles": "user,tool"})
	e.asError("other-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t1.Data["token"]}, "at most 1 (max_delegation_depth)")

	// The token minted as "actor_token" narrows what the caller may take.
	e.createRole("tool", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "allowed_subject_roles": "user,tool"})
	own := e.as("tool-entity", logical.UpdateOperation, "token/tool", map[string]interface{}{"scopes": "write"}).Data["token"]
	got := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "actor_token": own})
	if !slices.Equal(got.Data["scopes"].([]string), []string{"write"}) {
		t.Fatalf("with an actor token of scope write: scopes %v", got.Data["scopes"])
	}
	e.asError("other-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": subjectToken, "actor_token": own}, "actor_token's sub is not the caller's")
}

// Revoking a token revokes every token exchanged from it, down the chain,
// through the feed; and a revoked subject cannot be exchanged.
func TestExchangeRevocationCascades(t *testing.T) {
	e := delegationEnv(t)
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]})
	t2 := e.as("subtool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "subtool", "subject_token": t1.Data["token"]})
	other := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": e.as("user-entity", logical.UpdateOperation, "token/user", nil).Data["token"]})

	if resp, err := e.lease(logical.RevokeOperation, t0.Secret); err != nil || resp.IsError() {
		t.Fatalf("revoking the first token: %v %v", err, resp)
	}
	ids, _, _ := e.feed(0)
	for _, tk := range []*logical.Response{t0, t1, t2} {
		if !slices.Contains(ids, tk.Data["jti"].(string)) {
			t.Errorf("%s (%v) not in the feed %v", tk.Data["jti"], tk.Data["actors"], ids)
		}
		if v := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": tk.Data["token"], "remote_addr": "10.0.0.1"}).Data; v["reason"] != "revoked" {
			t.Errorf("verify %v after the first was revoked: %v", tk.Data["actors"], v["reason"])
		}
	}
	if slices.Contains(ids, other.Data["jti"].(string)) {
		t.Error("a token exchanged from another subject was revoked")
	}
	e.asError("subtool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "subtool", "subject_token": t1.Data["token"]}, "not a valid keybroker token: revoked")
}

// A metered subject's budget is shared by what is exchanged from it.
func TestExchangeSharesTheSubjectsBudget(t *testing.T) {
	e := delegationEnv(t)
	e.createRole("payer", map[string]interface{}{"scopes": "read", "audiences": "svc", "budget": 100, "max_cost_per_request": 10})
	e.createRole("tool", map[string]interface{}{"allowed_subject_roles": "user,payer"})
	t0 := e.as("user-entity", logical.UpdateOperation, "token/payer", nil)
	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]})
	c1, _ := e.offline(t1.Data["token"].(string), "svc")
	if c1.Budget == nil || c1.Budget.Units != 100 {
		t.Fatalf("exchanged token budget claim %+v, want the subject's 100", c1.Budget)
	}
	e.reserve(t1.Data["jti"].(string), 40)
	if left := e.ok(logical.ReadOperation, "budget/"+t0.Data["jti"].(string), nil).Data["remaining"]; left != int64(60) {
		t.Fatalf("subject's remaining after 40 reserved through the exchanged token: %v, want 60", left)
	}
}

// DPoP: a bound subject token cannot be exchanged; the new token can be
// bound to the caller's key.
func TestExchangeDPoP(t *testing.T) {
	e := delegationEnv(t)
	holder := dpoptest.NewKey(t, "ES256")
	bound := e.as("user-entity", logical.UpdateOperation, "token/user", map[string]interface{}{"dpop_jkt": holder.JKT})
	e.asError("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": bound.Data["token"]}, "DPoP-bound")

	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	actorKey := dpoptest.NewKey(t, "ES256")
	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"], "dpop_jkt": actorKey.JKT})
	v, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: testIssuer, Audiences: []string{"svc"}, AcceptBound: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(t1.Data["token"].(string), e.jwks())
	if err != nil || c.BoundKey() != actorKey.JKT || t1.Data["token_type"] != "DPoP" {
		t.Fatalf("bound exchange: %v, cnf %q, token_type %v", err, c.BoundKey(), t1.Data["token_type"])
	}
}

func TestDelegationRoleFields(t *testing.T) {
	e := newTestEnv(t)
	e.userError(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "max_delegation_depth": 9}, "max_delegation_depth must be between 1 and 8")
	e.userError(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "allowed_subject_roles": "bad name"}, "is not a role name")
	e.userError(logical.UpdateOperation, "roles/exchange", map[string]interface{}{"scopes": "read"}, "reserved")
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "allowed_subject_roles": "a,b,a", "max_delegation_depth": 3})
	d := e.ok(logical.ReadOperation, "roles/r", nil).Data
	if !slices.Equal(d["allowed_subject_roles"].([]string), []string{"a", "b"}) || d["max_delegation_depth"] != 3 {
		t.Fatalf("role %#v", d)
	}
}

// An exchange narrows within the subject token's audience: a token sent to
// one resource server cannot become one for another, whatever the role
// allows; the new token carries one aud.
func TestExchangeKeepsTheSubjectsAudience(t *testing.T) {
	for _, tc := range []struct {
		name       string
		subjectAud string // the user's token is for this one
		roleAud    string // the tool role's audiences
		asked      string
		want       string // the new token's one aud, or the error
	}{
		{"same audience, default", "svc", "svc", "", "svc"},
		{"same audience, asked", "svc", "svc,other", "svc", "svc"},
		{"role has more, default is the subject's", "svc", "other,svc", "", "svc"},
		{"to another audience of the role", "svc", "svc,other", "other", `audience "other" is not the subject token's (svc): an exchange cannot widen`},
		{"the role lacks the subject's", "svc", "other", "", `the subject token's audience (svc) is not among role "tool"'s (other)`},
		{"the role lacks the subject's, asked", "svc", "other", "other", `the subject token's audience (svc) is not among role "tool"'s (other)`},
		{"outside the role", "svc", "svc", "nope", `audience "nope" is not allowed by role "tool"`},
		{"a token for svc to svc2", "svc", "svc2", "", "cannot widen to another resource server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := delegationEnv(t)
			e.createRole("user", map[string]interface{}{"audiences": "svc,other,svc2"})
			e.createRole("tool", map[string]interface{}{"audiences": tc.roleAud})
			t0 := e.as("user-entity", logical.UpdateOperation, "token/user", map[string]interface{}{"audience": tc.subjectAud})
			data := map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]}
			if tc.asked != "" {
				data["audience"] = tc.asked
			}
			if strings.Contains(tc.want, " ") {
				before := e.storageKeys("")
				e.asError("tool-entity", logical.UpdateOperation, "token/exchange", data, tc.want)
				if after := e.storageKeys(""); !slices.Equal(before, after) {
					t.Fatalf("a refused exchange stored %v (before %v)", after, before)
				}
				return
			}
			t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", data)
			if got := t1.Data["audience"].([]string); !slices.Equal(got, []string{tc.want}) {
				t.Fatalf("exchanged audience %v, want [%s]", got, tc.want)
			}
			if c, err := e.offline(t1.Data["token"].(string), tc.want); err != nil || len(c.Audience) != 1 {
				t.Fatalf("exchanged token at %s: %v %v", tc.want, err, c)
			}
		})
	}
}

// An actor appears at most once in a chain: neither the subject nor an
// actor already in it may act again, by its sub or by its entity.
func TestExchangeRefusesCycles(t *testing.T) {
	e := delegationEnv(t)
	e.createRole("tool", map[string]interface{}{"allowed_subject_roles": "user,tool,tool2", "max_delegation_depth": 4})
	e.createRole("tool2", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "allowed_subject_roles": "tool,tool2", "max_delegation_depth": 4})
	e.createRole("byname", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "allowed_subject_roles": "tool,tool2", "max_delegation_depth": 4, "subject": "entity_id"})
	e.createRole("userrole", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "allowed_subject_roles": "tool,tool2", "max_delegation_depth": 4})
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]})
	t2 := e.as("tool2-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool2", "subject_token": t1.Data["token"]})
	for _, tc := range []struct {
		name, entity, role string
		subject            *logical.Response
		want               string
	}{
		{"back to the first actor: [tool, tool2, tool]", "tool-entity", "tool", t2, "already acts in subject_token's chain (tool2-entity, tool-entity): an actor appears at most once"},
		{"the first actor under another role", "tool-entity", "byname", t2, "an actor appears at most once"},
		{"the last actor again: [tool2, tool2, tool]", "tool2-entity", "tool2", t2, "an actor appears at most once"},
		{"the last actor again, one hop: [tool, tool]", "tool-entity", "tool", t1, "an actor appears at most once"},
		{"the subject acts for itself through the chain", "user-entity", "userrole", t1, "the caller's own token"},
		{"the subject acts for itself two hops down", "user-entity", "userrole", t2, "the caller's own token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.storageKeys("")
			e.asError(tc.entity, logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": tc.role, "subject_token": tc.subject.Data["token"]}, tc.want)
			if after := e.storageKeys(""); !slices.Equal(before, after) {
				t.Fatalf("a refused exchange stored %v", after)
			}
		})
	}
	// A third actor extends the chain.
	t3 := e.as("tool3-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool2", "subject_token": t2.Data["token"]})
	if got := t3.Data["actors"].([]string); !slices.Equal(got, []string{"tool3-entity", "tool2-entity", "tool-entity"}) {
		t.Fatalf("chain %v", got)
	}
}

// Each actor has its own exchange slots per subject token: one actor that
// holds them all locks no other out, and an exchange refused past the limit
// mints nothing, revokes nothing and stores nothing.
func TestExchangeSlotsPerActor(t *testing.T) {
	e := delegationEnv(t)
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	parent := t0.Data["jti"].(string)
	e.createRole("tool", map[string]interface{}{"allowed_subject_roles": "user"})
	exchange := map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]}
	e.as("tool-entity", logical.UpdateOperation, "token/exchange", exchange)

	// The tool agent's slots fill up (as 999 more exchanges would).
	ctx := context.Background()
	key := derivedKey(parent, "tool-entity")
	full, err := getJSON[derivedTokens](ctx, e.storage, key)
	if err != nil || full == nil || len(full.Children) != 1 {
		t.Fatalf("the tool agent's slots after one exchange: %+v %v", full, err)
	}
	live := time.Now().Add(time.Hour)
	for i := len(full.Children); i < maxDerived; i++ {
		full.Children[fmt.Sprintf("filler-%d", i)] = live
	}
	if err := putJSON(ctx, e.storage, key, full); err != nil {
		t.Fatal(err)
	}
	before := e.storageKeys("")
	stored, _ := e.storage.Get(ctx, key)
	for range 3 {
		e.asError("tool-entity", logical.UpdateOperation, "token/exchange", exchange, fmt.Sprintf("the caller already has %d live tokens exchanged from subject_token", maxDerived))
	}
	if ids, _, _ := e.feed(0); len(ids) != 0 {
		t.Fatalf("refused exchanges minted and revoked %v", ids)
	}
	now, err := e.storage.Get(ctx, key)
	if after := e.storageKeys(""); err != nil || !slices.Equal(before, after) || !bytes.Equal(now.Value, stored.Value) {
		t.Fatalf("refused exchanges wrote to storage: keys %v (before %v)", after, before)
	}

	// Another actor is not locked out, and is counted apart.
	other := e.as("tool2-entity", logical.UpdateOperation, "token/exchange", exchange)
	if got, _ := getJSON[derivedTokens](ctx, e.storage, derivedKey(parent, "tool2-entity")); got == nil || len(got.Children) != 1 {
		t.Fatalf("the other actor's slots: %+v", got)
	}
	// A slot is freed for its actor once its token passes nowhere: past
	// its exp and every verifier's leeway (within it, a revocation of the
	// subject must still reach the token).
	for c := range full.Children {
		full.Children[c] = time.Now().Add(-contract.RevocationGrace - time.Second)
		break
	}
	if err := putJSON(ctx, e.storage, key, full); err != nil {
		t.Fatal(err)
	}
	again := e.as("tool-entity", logical.UpdateOperation, "token/exchange", exchange)

	// Revoking the subject revokes every actor's tokens.
	if resp, err := e.lease(logical.RevokeOperation, t0.Secret); err != nil || resp.IsError() {
		t.Fatalf("revoking the subject: %v %v", err, resp)
	}
	for _, tk := range []*logical.Response{other, again} {
		if reason := e.verifyReason(tk.Data["token"].(string), "10.0.0.1", nil); reason != "revoked" {
			t.Errorf("%v's token after its subject was revoked: %s", tk.Data["actors"], reason)
		}
	}
}

// Tokens exchanged before slots were per actor were filed under the subject
// token's jti itself: revoking the subject still revokes them, and tidy
// drops both layouts once nothing in them is live.
func TestExchangeFiledBeforeSlotsPerActor(t *testing.T) {
	e := delegationEnv(t)
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	parent := t0.Data["jti"].(string)
	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]})
	ctx := context.Background()
	legacy := &derivedTokens{Children: map[string]time.Time{"legacy-child": time.Now().Add(time.Hour)}}
	if err := putJSON(ctx, e.storage, derivedPrefix+parent, legacy); err != nil {
		t.Fatal(err)
	}
	if resp, err := e.lease(logical.RevokeOperation, t0.Secret); err != nil || resp.IsError() {
		t.Fatalf("revoking the subject: %v %v", err, resp)
	}
	ids, _, _ := e.feed(0)
	if !slices.Contains(ids, "legacy-child") || !slices.Contains(ids, t1.Data["jti"].(string)) {
		t.Fatalf("feed %v lacks the legacy child or the exchanged token", ids)
	}
	if err := e.b.revoker.tidyDerived(ctx, e.storage, time.Now()); err != nil {
		t.Fatal(err)
	}
	if keys := e.storageKeys(derivedPrefix); len(keys) != 2 {
		t.Fatalf("tidy dropped live indexes: %v", keys)
	}
	if err := e.b.revoker.tidyDerived(ctx, e.storage, time.Now().Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if keys := e.storageKeys(derivedPrefix); len(keys) != 0 {
		t.Fatalf("tidy left %v", keys)
	}
}

// token/exchange's role is a field, not a path segment: what is not a role
// name is a 400 that says so, never a storage error (500).
func TestExchangeRoleName(t *testing.T) {
	e := delegationEnv(t)
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	for _, tc := range []struct{ name, want string }{
		{"../tool", `role: "../tool" is not a role name`},
		{"tool/../tool", "is not a role name"},
		{"..", "is not a role name"},
		{".", "is not a role name"},
		{"tool/", "is not a role name"},
		{"/tool", "is not a role name"},
		{"a b", "is not a role name"},
		{"tool\x00", "is not a role name"},
		{"-tool", "is not a role name"},
		{"tool.", "is not a role name"},
		{"%2e%2e%2ftool", "is not a role name"},
		{"exchange", `role: "exchange" is reserved`},
		{"refresh", "is reserved"},
		{"id", "is reserved"},
		{"", "role: a role name is required"},
		{strings.Repeat("../", 100) + "tool", "at most 128 characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.asError("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": tc.name, "subject_token": t0.Data["token"]}, tc.want)
		})
	}
}

// A subject token minted for several audiences (before tokens carried one)
// is exchanged for one of them, named: never for all, nor for the role's
// choice.
func TestExchangeOfASeveralAudienceToken(t *testing.T) {
	e := delegationEnv(t)
	e.createRole("tool", map[string]interface{}{"audiences": "svc,svc2,other"})
	req := &logical.Request{Storage: e.storage, MountPoint: "keybroker/", EntityID: "user-entity", Operation: logical.UpdateOperation}
	old, err := e.b.issueToken(context.Background(), req, grant{Role: "user", Scopes: []string{"read"}, Audiences: []string{"svc", "svc2"}, Subject: "user-entity", EntityID: "user-entity"}, time.Hour, "", "")
	if err != nil || old.IsError() {
		t.Fatalf("minting as the old code did: %v %v", err, old)
	}
	exchange := map[string]interface{}{"role": "tool", "subject_token": old.Data["token"]}
	e.asError("tool-entity", logical.UpdateOperation, "token/exchange", exchange, `the subject token with role "tool" allows several audiences (svc, svc2): name the one`)
	exchange["audience"] = "other"
	e.asError("tool-entity", logical.UpdateOperation, "token/exchange", exchange, `audience "other" is not the subject token's (svc, svc2)`)
	exchange["audience"] = "svc2"
	got := e.as("tool-entity", logical.UpdateOperation, "token/exchange", exchange)
	if aud := got.Data["audience"].([]string); !slices.Equal(aud, []string{"svc2"}) {
		t.Fatalf("exchanged audience %v", aud)
	}
}

// entitySystem answers EntityInfo for several Vault entities, as Vault does
// for each caller.
type entitySystem struct {
	*logical.StaticSystemView
	byID map[string]*logical.Entity
}

func (s entitySystem) EntityInfo(id string) (*logical.Entity, error) { return s.byID[id], nil }

// chainEnv: entities with names and one alias each, two subject roles (by
// entity id and by entity name) and an acting role per subject setting,
// each of which may act for any of them, four deep. other's alias spells
// the tool's entity name, mallory's the user's.
func chainEnv(t *testing.T) *testEnv {
	ent := func(id, name, alias string) *logical.Entity {
		return &logical.Entity{ID: id, Name: name, Aliases: []*logical.Alias{{Name: alias, MountType: "approle"}}}
	}
	e := newTestEnvWith(t, entitySystem{logical.TestSystemView(), map[string]*logical.Entity{
		"user-entity":    ent("user-entity", "alice", "alice@idp"),
		"tool-entity":    ent("tool-entity", "toolname", "tool-role-id"),
		"tool2-entity":   ent("tool2-entity", "tool2name", "tool2-role-id"),
		"other-entity":   ent("other-entity", "other", "toolname"),
		"mallory-entity": ent("mallory-entity", "mallory", "alice"),
	}})
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	e.createRole("user", map[string]interface{}{"scopes": "read", "audiences": "svc"})
	e.createRole("user-name", map[string]interface{}{"scopes": "read", "audiences": "svc", "subject": subjectEntityName})
	for role, subject := range map[string]string{"by-id": subjectEntityID, "by-name": subjectEntityName, "by-alias": subjectAliasName} {
		e.createRole(role, map[string]interface{}{"scopes": "read", "audiences": "svc", "subject": subject,
			"allowed_subject_roles": "user,user-name,by-id,by-name,by-alias", "max_delegation_depth": 4})
	}
	return e
}

// An actor appears at most once in a chain as a Vault entity, whatever
// subject setting each role of the chain spells it with; and the new token
// never names one sub twice. The first cases were minted by the code that
// compared the caller's sub under the current role's setting only.
func TestExchangeChainByEntity(t *testing.T) {
	type hop struct{ entity, role string }
	user, userByName := hop{"user-entity", "user"}, hop{"user-entity", "user-name"}
	for _, tc := range []struct {
		name   string
		mint   hop   // the subject token: token/<role> as entity
		hops   []hop // exchanges before the one tested
		last   hop   // the exchange tested
		want   string
		actors []string // when it is allowed
	}{
		{"the first actor again under entity_id after entity_name: [toolname, tool2, tool]", user,
			[]hop{{"tool-entity", "by-name"}, {"tool2-entity", "by-id"}}, hop{"tool-entity", "by-id"},
			"the caller (tool-entity) already acts in subject_token's chain (tool2-entity, toolname): an actor appears at most once", nil},
		{"the first actor again by alias after two entity_name actors", user,
			[]hop{{"tool-entity", "by-name"}, {"tool2-entity", "by-name"}}, hop{"tool-entity", "by-alias"},
			"already acts in subject_token's chain", nil},
		{"the subject (sub alice) acts for itself under entity_id", userByName,
			[]hop{{"tool-entity", "by-id"}}, hop{"user-entity", "by-id"},
			"subject_token is the caller's own token", nil},
		{"the subject acts for itself by alias two hops down", userByName,
			[]hop{{"tool-entity", "by-name"}, {"tool2-entity", "by-id"}}, hop{"user-entity", "by-alias"},
			"subject_token is the caller's own token", nil},
		{"the subject of a minted token under another setting", userByName,
			nil, hop{"user-entity", "by-id"},
			"subject_token is the caller's own token", nil},
		{"the last actor again under another setting", user,
			[]hop{{"tool-entity", "by-name"}}, hop{"tool-entity", "by-id"},
			"already acts in subject_token's chain", nil},
		{"another entity whose alias spells an actor's name", user,
			[]hop{{"tool-entity", "by-name"}}, hop{"other-entity", "by-alias"},
			"the caller's sub under this role's subject setting (toolname) already names an actor in subject_token's chain (toolname): the new token would name it twice", nil},
		{"another entity whose alias spells the subject's sub", userByName,
			nil, hop{"mallory-entity", "by-alias"},
			"the caller's sub under this role's subject setting (alice) is subject_token's sub", nil},
		{"another entity after an entity_name actor", user,
			[]hop{{"tool-entity", "by-name"}}, hop{"other-entity", "by-id"},
			"", []string{"other-entity", "toolname"}},
		{"a chain across the three settings", userByName,
			[]hop{{"tool-entity", "by-alias"}, {"tool2-entity", "by-name"}}, hop{"other-entity", "by-id"},
			"", []string{"other-entity", "tool2name", "tool-role-id"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := chainEnv(t)
			tok := e.as(tc.mint.entity, logical.UpdateOperation, "token/"+tc.mint.role, nil)
			for _, h := range tc.hops {
				tok = e.as(h.entity, logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": h.role, "subject_token": tok.Data["token"]})
			}
			exchange := map[string]interface{}{"role": tc.last.role, "subject_token": tok.Data["token"]}
			if tc.want != "" {
				before := e.storageKeys("")
				e.asError(tc.last.entity, logical.UpdateOperation, "token/exchange", exchange, tc.want)
				if after := e.storageKeys(""); !slices.Equal(before, after) {
					t.Fatalf("a refused exchange stored %v (before %v)", after, before)
				}
				if ids, _, _ := e.feed(0); len(ids) != 0 {
					t.Fatalf("a refused exchange minted and revoked %v", ids)
				}
				return
			}
			got := e.as(tc.last.entity, logical.UpdateOperation, "token/exchange", exchange)
			if actors := got.Data["actors"].([]string); !slices.Equal(actors, tc.actors) {
				t.Fatalf("actors %v, want %v", actors, tc.actors)
			}
			// The new token's chain is kept as entities, subject first.
			want := []string{tc.mint.entity}
			for _, h := range tc.hops {
				want = append(want, h.entity)
			}
			want = append(want, tc.last.entity)
			ch, err := getJSON[entityChain](context.Background(), e.storage, chainPrefix+got.Data["jti"].(string))
			if err != nil || ch == nil || !slices.Equal(ch.Entities, want) {
				t.Fatalf("stored chain %+v (%v), want %v", ch, err, want)
			}
		})
	}
}

// A token exchanged before chains were kept as entities has none stored:
// the caller is compared as it was then (the last actor by client_id, the
// subject and actors by the names an entity_id role gives), and what is
// exchanged from it has none either. Tidy drops a chain once its token
// cannot pass anywhere.
func TestExchangeChainKeptOrNot(t *testing.T) {
	e := chainEnv(t)
	ctx := context.Background()
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "by-name", "subject_token": t0.Data["token"]})
	if err := e.storage.Delete(ctx, chainPrefix+t1.Data["jti"].(string)); err != nil {
		t.Fatal(err)
	}
	legacy := map[string]interface{}{"role": "by-id", "subject_token": t1.Data["token"]}
	e.asError("tool-entity", logical.UpdateOperation, "token/exchange", legacy, "already acts in subject_token's chain")
	e.asError("user-entity", logical.UpdateOperation, "token/exchange", legacy, "subject_token is the caller's own token")
	t2 := e.as("tool2-entity", logical.UpdateOperation, "token/exchange", legacy)
	if keys := e.storageKeys(chainPrefix); len(keys) != 0 {
		t.Fatalf("a chain was stored for a token exchanged from one without: %v", keys)
	}
	e.asError("tool2-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "by-name", "subject_token": t2.Data["token"]}, "already acts in subject_token's chain")

	t3 := e.as("tool2-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "by-id", "subject_token": t0.Data["token"]})
	key := chainPrefix + t3.Data["jti"].(string)
	exp := time.Unix(0, 0)
	if c, err := e.offline(t3.Data["token"].(string), "svc"); err == nil {
		exp = c.ExpiresAt.Time
	} else {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   time.Time
		kept bool
	}{
		{exp, true},
		{exp.Add(contract.RevocationGrace - time.Second), true},
		{exp.Add(contract.RevocationGrace), false},
	} {
		if _, err := e.b.tidy(ctx, e.storage, tc.at); err != nil {
			t.Fatal(err)
		}
		if got, _ := e.storage.Get(ctx, key); (got != nil) != tc.kept {
			t.Fatalf("tidy at exp%+v: chain kept %v, want %v", tc.at.Sub(exp), got != nil, tc.kept)
		}
	}
}

// failingPuts refuses to store below prefix, as a storage backend that
// fails mid-request would.
type failingPuts struct {
	logical.Storage
	prefix string
}

func (s failingPuts) Put(ctx context.Context, e *logical.StorageEntry) error {
	if strings.HasPrefix(e.Key, s.prefix) {
		return fmt.Errorf("storage refused %s", e.Key)
	}
	return s.Storage.Put(ctx, e)
}

// An exchange whose mint fails after its slot was taken gives the slot and
// its kept chain back: nothing of it stays in storage.
func TestExchangeFailedMintStoresNothing(t *testing.T) {
	e := chainEnv(t)
	e.createRole("user", map[string]interface{}{"budget": 100})
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	t1 := e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "by-name", "subject_token": t0.Data["token"]})
	before := e.storageKeys("")
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.UpdateOperation, Path: "token/exchange", MountPoint: "keybroker/", EntityID: "tool2-entity",
		Storage: failingPuts{e.storage, meterPrefix}, // the shared meter cannot be written
		Data:    map[string]interface{}{"role": "by-id", "subject_token": t1.Data["token"]},
	})
	if err == nil || !strings.Contains(err.Error(), "storage refused") {
		t.Fatalf("exchange with the meter unwritable: %v %v", resp, err)
	}
	if after := e.storageKeys(""); !slices.Equal(before, after) {
		t.Fatalf("a failed mint left %v (before %v)", after, before)
	}
}

// A token exchanged from a subject stays in the subject's index past its
// exp while any verifier may still take it: another exchange by the same
// actor, or tidy, must not drop it before exp + the revocation grace, or a
// revocation of the subject would not reach it (from review).
func TestExchangedTokenRevokedWithinItsLeeway(t *testing.T) {
	e := delegationEnv(t)
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
	parent := t0.Data["jti"].(string)
	e.createRole("tool", map[string]interface{}{"allowed_subject_roles": "user"})
	exchange := map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]}
	child := e.as("tool-entity", logical.UpdateOperation, "token/exchange", exchange).Data["jti"].(string)

	// As if the child expired 10 s ago: within every verifier's leeway.
	ctx := context.Background()
	key := derivedKey(parent, "tool-entity")
	dt, err := getJSON[derivedTokens](ctx, e.storage, key)
	if err != nil || dt == nil {
		t.Fatal(err)
	}
	dt.Children[child] = time.Now().Add(-10 * time.Second)
	if err := putJSON(ctx, e.storage, key, dt); err != nil {
		t.Fatal(err)
	}
	e.as("tool-entity", logical.UpdateOperation, "token/exchange", exchange) // prunes the index
	if err := e.b.revoker.tidyDerived(ctx, e.storage, time.Now()); err != nil {
		t.Fatal(err)
	}
	if resp, err := e.lease(logical.RevokeOperation, t0.Secret); err != nil || resp.IsError() {
		t.Fatalf("revoking the subject: %v %v", err, resp)
	}
	if ids, _, _ := e.feed(0); !slices.Contains(ids, child) {
		t.Fatalf("the feed %v lacks the exchanged token %s, expired 10 s ago", ids, child)
	}
}

// The chain is filed outside the revocation lock: a revocation of the
// subject racing exchanges still revokes every token exchanged from it
// (the slot is taken under the lock), and down a level too.
func TestExchangeRacingSubjectRevocationRevokesEveryToken(t *testing.T) {
	for round := 0; round < 5; round++ {
		e := delegationEnv(t)
		t0 := e.as("user-entity", logical.UpdateOperation, "token/user", nil)
		var mu sync.Mutex
		var minted []string
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 6; i++ {
					r1, err := e.req("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]})
					if err != nil || r1.IsError() {
						continue
					}
					mu.Lock()
					minted = append(minted, r1.Data["jti"].(string))
					mu.Unlock()
					r2, err := e.req("subtool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "subtool", "subject_token": r1.Data["token"]})
					if err != nil || r2.IsError() {
						continue
					}
					mu.Lock()
					minted = append(minted, r2.Data["jti"].(string))
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(round) * 3 * time.Millisecond)
		if resp, err := e.lease(logical.RevokeOperation, t0.Secret); err != nil || resp.IsError() {
			t.Fatalf("revoking the subject: %v %v", resp, err)
		}
		wg.Wait()
		for _, jti := range minted {
			if en, _ := e.storage.Get(context.Background(), revokedJTIPath(jti)); en == nil {
				t.Errorf("round %d: %s exchanged (directly or down a level) from a revoked subject is not revoked", round, jti)
			}
		}
		t.Logf("round %d: %d exchanged, all revoked", round, len(minted))
	}
}
