package backend

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
)

func TestRefreshRotationAndReuse(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h"})
	first := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing"})
	rt1, _ := first.Data["refresh_token"].(string)
	if rt1 == "" {
		t.Fatal("no refresh_token from a role with refresh_ttl")
	}
	e.assertNotStored(rt1)

	second := e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt1})
	rt2 := second.Data["refresh_token"].(string)
	if rt2 == rt1 || second.Data["jti"] == first.Data["jti"] {
		t.Fatal("refresh returned the same refresh token or jti")
	}
	c, err := e.offline(second.Data["token"].(string), "billing")
	if err != nil || c.Subject != "test-entity" || c.Scope != "read" || len(c.Audience) != 1 {
		t.Fatalf("refreshed token keeps the grant: %v %+v", err, c)
	}
	// The first access token still works: refresh does not revoke it.
	if got := e.verifyReason(first.Data["token"].(string), "10.0.0.1", nil); got != contract.ReasonOK {
		t.Fatalf("first token after refresh: %s", got)
	}

	// Presenting the spent rt1 again is theft: the family dies.
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt1}, "already used")
	for _, r := range []*logical.Response{first, second} {
		if got := e.verifyReason(r.Data["token"].(string), "10.0.0.1", nil); got != contract.ReasonRevoked {
			t.Fatalf("token %v after reuse: %s, want revoked", r.Data["jti"], got)
		}
	}
	ids, _, _ := e.feed(0)
	if !equalStrings(sortedCopy(ids), sortedCopy([]string{first.Data["jti"].(string), second.Data["jti"].(string)})) {
		t.Fatalf("feed = %v, want both jtis", ids)
	}
	// rt2 was never spent, but its family is revoked.
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt2}, "family was revoked")

	// A read (Vault Agent's template) gets no refresh token: Agent mints
	// again instead, and would leave a family per render.
	if rt, ok := e.ok(logical.ReadOperation, "token/agent", nil).Data["refresh_token"]; ok {
		t.Fatalf("read of a role with refresh_ttl: refresh_token %q", rt)
	}
}

func sortedCopy(s []string) []string { return slices.Sorted(slices.Values(s)) }

func TestRefreshBadInput(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h"})
	rt := e.ok(logical.UpdateOperation, "token/agent", nil).Data["refresh_token"].(string)
	apiKey := func() string {
		e.createRole("keys", nil)
		return e.mint("keys", nil).Data["key"].(string)
	}()
	for _, tc := range []struct {
		name string
		data map[string]interface{}
		want string
	}{
		{"missing", map[string]interface{}{}, "refresh_token is required"},
		{"garbage", map[string]interface{}{"refresh_token": "nope"}, "invalid or expired"},
		{"typo", map[string]interface{}{"refresh_token": typo(rt)}, "invalid or expired"},
		{"an API key", map[string]interface{}{"refresh_token": apiKey}, "invalid or expired"},
		{"unknown field", map[string]interface{}{"refresh_token": rt, "scopes": "write"}, "unknown field(s): scopes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.userError(logical.UpdateOperation, "token/refresh", tc.data, tc.want)
		})
	}
	// Another Vault identity cannot use it, and trying does not spend it.
	e.entityID = "someone-else"
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt}, "another Vault identity")
	e.entityID = "test-entity"
	e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt})
}

// Revoking an access token's lease revokes its family: a refresh token must
// not bring a revoked grant back.
func TestLeaseRevokeRevokesFamily(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h"})
	first := e.ok(logical.UpdateOperation, "token/agent", nil)
	if _, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RevokeOperation, Path: "token/agent", Secret: first.Secret, Storage: e.storage,
	}); err != nil {
		t.Fatal(err)
	}
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]}, "family was revoked")
}

func TestRefreshFollowsRoleChanges(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h"})
	resp := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "write"})
	e.ok(logical.UpdateOperation, "roles/agent", map[string]interface{}{"scopes": "read", "default_scopes": "read"})
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": resp.Data["refresh_token"]}, "no longer allows scopes")
}

func TestTidyRefreshState(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h"})
	first := e.ok(logical.UpdateOperation, "token/agent", nil)
	e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]})
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]}, "already used")
	if n := len(e.storageKeys(revokedJTIPrefix)); n != 2 {
		t.Fatalf("%d revoked jtis indexed, want 2", n)
	}
	if n := len(e.storageKeys(tokenFamilyPrefix)); n != 2 {
		t.Fatalf("%d tokens indexed to their family, want 2", n)
	}
	st, err := e.b.tidy(context.Background(), e.storage, time.Now())
	if err != nil || st.RefreshDeleted != 0 || st.FamiliesDeleted != 0 {
		t.Fatalf("tidy now = %+v %v, want nothing removed", st, err)
	}
	st, err = e.b.tidy(context.Background(), e.storage, time.Now().Add(2*time.Hour))
	if err != nil || st.RefreshDeleted != 2 || st.FamiliesDeleted != 1 || st.RevocationsDeleted != 2 {
		t.Fatalf("tidy in 2h = %+v %v", st, err)
	}
	for _, prefix := range []string{refreshPrefix, familyPrefix, tokenFamilyPrefix, revokedJTIPrefix, revocationEntryPrefix} {
		if left := e.storageKeys(prefix); len(left) != 0 {
			t.Fatalf("tidy left %v", left)
		}
	}
}

// A refresh gets no more than a new mint would: the role as it is now
// narrows audiences, CIDRs and limits, and a family has an absolute life.
func TestRefreshFollowsTheRoleNow(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "10m", "refresh_max_ttl": "1h", "bound_cidrs": "", "budget": 100, "max_cost_per_request": 10})
	first := e.ok(logical.UpdateOperation, "token/agent", nil)
	refresh := func(rt interface{}) *logical.Response {
		return e.do(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt})
	}
	// The operator narrows the role.
	e.ok(logical.UpdateOperation, "roles/agent", map[string]interface{}{"audiences": "billing", "bound_cidrs": "10.1.0.0/16", "budget": 50, "max_cost_per_request": 5})
	second := refresh(first.Data["refresh_token"])
	if second.IsError() {
		t.Fatalf("refresh: %v", second.Error())
	}
	c, err := e.offline(second.Data["token"].(string), "billing")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual([]string(c.Audience), []string{"billing"}) || !reflect.DeepEqual(c.CIDR, []string{"10.1.0.0/16"}) || c.Budget == nil || c.Budget.Units != 50 || c.Budget.MaxCost != 5 {
		t.Fatalf("refreshed claims: aud %v cidr %v budget %+v", c.Audience, c.CIDR, c.Budget)
	}
	if d := e.ok(logical.ReadOperation, "budget/"+c.ID, nil).Data; d["limit"] != int64(50) {
		t.Fatalf("the family's meter kept limit %v", d["limit"])
	}
	// What the role no longer allows at all ends the family's refreshes.
	for _, tc := range []struct {
		change map[string]interface{}
		want   string
	}{
		{map[string]interface{}{"audiences": "search"}, "no longer allows audience"},
		{map[string]interface{}{"tenant": "other"}, "another tenant"},
		{map[string]interface{}{"bound_cidrs": "192.168.0.0/16"}, "CIDRs"},
	} {
		e.ok(logical.UpdateOperation, "roles/agent", map[string]interface{}{"audiences": "billing", "tenant": "acme", "bound_cidrs": "10.1.0.0/16"})
		again := e.ok(logical.UpdateOperation, "token/agent", nil)
		e.ok(logical.UpdateOperation, "roles/agent", tc.change)
		if r := refresh(again.Data["refresh_token"]); !r.IsError() || !strings.Contains(r.Error().Error(), tc.want) {
			t.Errorf("role change %v: refresh %v, want an error about %q", tc.change, r.Data, tc.want)
		}
	}
}

// A family lives at most refresh_max_ttl from its first mint, and lowering
// it reaches existing families.
func TestRefreshFamilyHasAnAbsoluteLife(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "10m", "refresh_max_ttl": "1h"})
	first := e.ok(logical.UpdateOperation, "token/agent", nil)
	age := func(d time.Duration) {
		for _, path := range e.storageKeys(familyPrefix) {
			f, _ := getJSON[family](context.Background(), e.storage, path)
			f.CreatedAt = time.Now().Add(-d)
			if err := putJSON(context.Background(), e.storage, path, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	age(30 * time.Minute)
	second := e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]})
	e.ok(logical.UpdateOperation, "roles/agent", map[string]interface{}{"refresh_max_ttl": "20m"})
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": second.Data["refresh_token"]}, "older than role \"agent\"'s refresh_max_ttl")
	e.userError(logical.UpdateOperation, "roles/agent", map[string]interface{}{"refresh_max_ttl": "5m"}, "must be at least refresh_ttl")
}

// Callers without a Vault entity share one identity: they get no refresh
// token, and cannot refresh one.
func TestEntitylessCallersCannotRefresh(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "10m"})
	withEntity := e.ok(logical.UpdateOperation, "token/agent", nil)
	e.entityID = ""
	resp := e.ok(logical.UpdateOperation, "token/agent", nil)
	if _, ok := resp.Data["refresh_token"]; ok || len(resp.Warnings) == 0 {
		t.Fatalf("entity-less mint: refresh_token %v, warnings %v", resp.Data["refresh_token"], resp.Warnings)
	}
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": withEntity.Data["refresh_token"]}, "needs a Vault entity")
}

// A DPoP-bound family refreshes only with a fresh proof by its key, for
// this path; a refused attempt leaves the refresh token unspent, and the
// new token stays bound to the same key.
func TestRefreshDPoPBound(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h"})
	k, other := dpoptest.NewKey(t, "ES256"), dpoptest.NewKey(t, "EdDSA")
	first := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"dpop_jkt": k.JKT})
	rt := first.Data["refresh_token"].(string)
	const url = "https://vault.example.com:8200/v1/keybroker/token/refresh"
	now := time.Now()
	for _, tt := range []struct {
		name, proof, want string
	}{
		{"no proof", "", "give dpop_proof"},
		{"another key", other.Proof(t, "POST", url, "", now, nil), "another key"},
		{"another path", k.Proof(t, "POST", "https://vault.example.com:8200/v1/keybroker/token/agent", "", now, nil), "do not match"},
		{"another mount", k.Proof(t, "POST", "https://vault.example.com:8200/v1/other/token/refresh", "", now, nil), "do not match"},
		{"GET", k.Proof(t, "GET", url, "", now, nil), "do not match"},
		{"stale", k.Proof(t, "POST", url, "", now.Add(-2*time.Minute), nil), "window"},
		{"garbage", "garbage", "not a compact JWS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := map[string]interface{}{"refresh_token": rt}
			if tt.proof != "" {
				data["dpop_proof"] = tt.proof
			}
			e.userError(logical.UpdateOperation, "token/refresh", data, tt.want)
		})
	}
	// None of those spent it.
	second := e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt, "dpop_proof": k.Proof(t, "PUT", url, "", now, nil)})
	// The spent rt again without the key: refused, and the family lives
	// (whoever stole it cannot burn it); with the key it is theft.
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt, "dpop_proof": other.Proof(t, "POST", url, "", now, nil)}, "another key")
	if ids, _, _ := e.feed(0); len(ids) != 0 {
		t.Fatalf("a spent refresh token without the key revoked the family: %v", ids)
	}
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt, "dpop_proof": k.Proof(t, "POST", url, "", now, nil)}, "already used")
	if ids, _, _ := e.feed(0); len(ids) != 2 {
		t.Fatalf("reuse with the key: feed %v, want the family's two jtis", ids)
	}
	c, err := e.offline(second.Data["token"].(string), "billing")
	if err != nil || c.BoundKey() != k.JKT || second.Data["token_type"] != "DPoP" {
		t.Fatalf("refreshed token: %v cnf %+v", err, c.Cnf)
	}

	// A bearer family given a proof is told so; once the role requires
	// DPoP, it cannot refresh at all.
	bearer := e.ok(logical.UpdateOperation, "token/agent", nil)
	brt := bearer.Data["refresh_token"].(string)
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": brt, "dpop_proof": k.Proof(t, "POST", url, "", now, nil)}, "not DPoP-bound")
	e.ok(logical.UpdateOperation, "roles/agent", map[string]interface{}{"require_dpop": true})
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": brt}, "requires DPoP-bound tokens")
}
