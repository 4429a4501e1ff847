package backend

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
)

func (e *testEnv) createRole(name string, data map[string]interface{}) {
	e.t.Helper()
	e.ok(logical.CreateOperation, "roles/"+name, data)
}

func (e *testEnv) mint(role string, data map[string]interface{}) *logical.Response {
	e.t.Helper()
	if data == nil {
		data = map[string]interface{}{}
	}
	if _, ok := data["name"]; !ok {
		data["name"] = "test key"
	}
	return e.ok(logical.UpdateOperation, "keys/"+role, data)
}

// lease sends what Vault's expiration manager sends for a lease: a renew or
// a revoke carrying the secret from the mint response.
func (e *testEnv) lease(op logical.Operation, s *logical.Secret) (*logical.Response, error) {
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: "keys/web", Secret: s, Storage: e.storage,
	})
}

func TestMintKey(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{
		"scopes": "read,write,admin", "default_scopes": "read", "ttl": "1h", "max_ttl": "4h",
		"bound_cidrs": "10.0.0.0/8", "tenant": "acme", "key_prefix": "acme",
		"metadata": map[string]interface{}{"team": "payments"},
	})
	before := time.Now().Truncate(time.Second)
	resp := e.mint("web", map[string]interface{}{
		"name": "ci deploy", "scopes": "read,write,read", "bound_cidrs": "10.1.0.0/16",
		"metadata": map[string]interface{}{"ticket": "OPS-1"},
	})

	key := resp.Data["key"].(string)
	parsed, err := apikey.Parse(key)
	if err != nil {
		t.Fatalf("minted key does not parse: %v", err)
	}
	if parsed.Prefix != "acme" || parsed.ID != resp.Data["key_id"] {
		t.Fatalf("key %+v does not match key_id %v", parsed, resp.Data["key_id"])
	}
	if !reflect.DeepEqual(resp.Data["scopes"], []string{"read", "write"}) {
		t.Fatalf("scopes = %#v, want de-duplicated [read write]", resp.Data["scopes"])
	}
	if !reflect.DeepEqual(resp.Data["bound_cidrs"], []string{"10.1.0.0/16"}) || resp.Data["tenant"] != "acme" || resp.Data["role"] != "web" {
		t.Fatalf("response data = %#v", resp.Data)
	}
	exp, err := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))
	if err != nil || exp.Before(before.Add(time.Hour)) || exp.After(time.Now().Add(time.Hour)) {
		t.Fatalf("expires_at = %v (%v), want about now+1h", resp.Data["expires_at"], err)
	}
	if resp.Secret == nil || resp.Secret.TTL != time.Hour || resp.Secret.MaxTTL != 4*time.Hour || !resp.Secret.Renewable {
		t.Fatalf("lease = %#v, want renewable 1h lease with 4h max", resp.Secret)
	}
	e.assertNotStored(key)

	read := e.ok(logical.ReadOperation, "keys/id/"+parsed.ID, nil).Data
	if _, ok := read["hash"]; ok {
		t.Fatal("key read returns the hash")
	}
	if _, ok := read["key"]; ok {
		t.Fatal("key read returns the key")
	}
	wantMD := map[string]string{"team": "payments", "ticket": "OPS-1"}
	if read["name"] != "ci deploy" || read["revoked"] != false || read["entity_id"] != "test-entity" || !reflect.DeepEqual(read["metadata"], wantMD) {
		t.Fatalf("key read = %#v", read)
	}

	list := e.ok(logical.ListOperation, "keys/id/", nil)
	if !reflect.DeepEqual(list.Data["keys"], []string{parsed.ID}) {
		t.Fatalf("list keys = %#v", list.Data["keys"])
	}
	info := list.Data["key_info"].(map[string]interface{})[parsed.ID].(map[string]interface{})
	if info["name"] != "ci deploy" || info["role"] != "web" {
		t.Fatalf("key_info = %#v", info)
	}
}

func TestMintDefaults(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read,write", "bound_cidrs": "10.0.0.0/8"})
	resp := e.mint("web", nil)
	if !reflect.DeepEqual(resp.Data["scopes"], []string{"read", "write"}) {
		t.Fatalf("default scopes = %#v, want all of the role's", resp.Data["scopes"])
	}
	if !reflect.DeepEqual(resp.Data["bound_cidrs"], []string{"10.0.0.0/8"}) {
		t.Fatalf("default bound_cidrs = %#v, want the role's", resp.Data["bound_cidrs"])
	}
	if !strings.HasPrefix(resp.Data["key"].(string), "kb_") {
		t.Fatalf("default prefix: key does not start with kb_")
	}
	// No role ttl: the mount's default lease TTL (24h in the test system view).
	if resp.Secret.TTL != 24*time.Hour {
		t.Fatalf("ttl = %s, want the mount default 24h", resp.Secret.TTL)
	}
}

func TestMintTTLCappedWithWarning(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h", "max_ttl": "2h"})
	resp := e.mint("web", map[string]interface{}{"ttl": "5h"})
	if resp.Secret.TTL != 2*time.Hour {
		t.Fatalf("ttl = %s, want capped at 2h", resp.Secret.TTL)
	}
	if len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "capped") {
		t.Fatalf("warnings = %v, want a capped-TTL warning", resp.Warnings)
	}
}

func TestMintOrphan(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("batch", map[string]interface{}{"orphan": true, "ttl": "30m"})
	resp := e.mint("batch", nil)
	if resp.Secret != nil {
		t.Fatalf("orphan key minted as a lease: %#v", resp.Secret)
	}
	id := resp.Data["key_id"].(string)
	if read := e.ok(logical.ReadOperation, "keys/id/"+id, nil).Data; read["orphan"] != true {
		t.Fatalf("key read orphan = %v", read["orphan"])
	}
}

func TestMintBadInput(t *testing.T) {
	cases := []struct {
		name string
		role string
		data map[string]interface{}
		want string
	}{
		{"missing role", "nope", map[string]interface{}{"name": "k"}, `role "nope" does not exist`},
		{"no name", "web", map[string]interface{}{}, "name is required"},
		{"blank name", "web", map[string]interface{}{"name": "   "}, "name is required"},
		{"oversize name", "web", map[string]interface{}{"name": strings.Repeat("n", maxNameLength+1)}, "at most 128 characters"},
		{"name with newline", "web", map[string]interface{}{"name": "a\nb"}, "control characters"},
		{"unknown field", "web", map[string]interface{}{"name": "k", "tenant": "other"}, "unknown field(s): tenant"},
		{"scope outside role", "web", map[string]interface{}{"name": "k", "scopes": "read,admin"}, `scopes admin are not allowed by role "web"`},
		{"bad scope", "web", map[string]interface{}{"name": "k", "scopes": []string{"re ad"}}, "RFC 6749"},
		{"cidr unparsable", "web", map[string]interface{}{"name": "k", "bound_cidrs": "10.0.0/8"}, "is not a CIDR block"},
		{"cidr widens role", "web", map[string]interface{}{"name": "k", "bound_cidrs": "0.0.0.0/0"}, "not within role"},
		{"cidr other family", "web", map[string]interface{}{"name": "k", "bound_cidrs": "2001:db8::/64"}, "not within role"},
		{"cidr beside role", "web", map[string]interface{}{"name": "k", "bound_cidrs": "11.0.0.0/16"}, "not within role"},
		{"metadata overrides role", "web", map[string]interface{}{"name": "k", "metadata": map[string]interface{}{"team": "x"}}, `metadata key "team" is set by role`},
		{"metadata oversize key", "web", map[string]interface{}{"name": "k", "metadata": map[string]interface{}{strings.Repeat("k", maxMetadataKey+1): "v"}}, "at most 128 characters"},
		{"metadata too many", "web", map[string]interface{}{"name": "k", "metadata": manyPairs(maxMetadataPairs + 1)}, "at most 32 entries"},
		{"metadata too many with role's", "web", map[string]interface{}{"name": "k", "metadata": manyPairs(maxMetadataPairs)}, "together exceed 32"},
		{"negative ttl", "web", map[string]interface{}{"name": "k", "ttl": "-1h"}, "ttl must be a duration of zero or more"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.createRole("web", map[string]interface{}{
				"scopes": "read,write", "bound_cidrs": "10.0.0.0/8",
				"metadata": map[string]interface{}{"team": "payments"},
			})
			e.userError(logical.UpdateOperation, "keys/"+tc.role, tc.data, tc.want)
			if keys := e.storageKeys(keyPrefix); len(keys) != 0 {
				t.Fatalf("a rejected mint stored %v", keys)
			}
		})
	}
}

func manyPairs(n int) map[string]interface{} {
	m := map[string]interface{}{}
	for i := 0; i < n; i++ {
		m[strings.Repeat("k", i+1)] = "v"
	}
	return m
}

func TestMintFromDeletedRole(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	e.mint("web", nil)
	e.ok(logical.DeleteOperation, "roles/web", nil)
	e.userError(logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"}, `role "web" does not exist`)
}

// Deleting a role keeps its keys verifiable until they expire or are revoked,
// but they can no longer be renewed.
func TestRoleDeleteKeepsKeysButStopsRenewal(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	resp := e.mint("web", nil)
	key := resp.Data["key"].(string)
	e.ok(logical.DeleteOperation, "roles/web", nil)

	if v := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"key": key}); v.Data["valid"] != true {
		t.Fatalf("key of a deleted role: verify = %#v, want valid", v.Data)
	}
	e.renewRefused(resp.Secret, `its role "web" was deleted`)
}

func TestRenewExtendsExpiry(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h", "max_ttl": "3h"})
	resp := e.mint("web", nil)
	id := resp.Data["key_id"].(string)

	// Pretend the key was issued a while ago and has 10 minutes left.
	k, _ := getKey(context.Background(), e.storage, id)
	k.ExpiresAt = time.Now().Add(10 * time.Minute)
	if err := putKey(context.Background(), e.storage, k); err != nil {
		t.Fatal(err)
	}
	resp.Secret.IssueTime = time.Now()
	resp.Secret.Increment = 2 * time.Hour
	r, err := e.lease(logical.RenewOperation, resp.Secret)
	if err != nil || r.IsError() {
		t.Fatalf("renew: %v %#v", err, r)
	}
	if r.Secret.TTL != 2*time.Hour {
		t.Fatalf("renewed ttl = %s, want 2h", r.Secret.TTL)
	}
	k, _ = getKey(context.Background(), e.storage, id)
	if time.Until(k.ExpiresAt) < 119*time.Minute {
		t.Fatalf("expires_at after renew = %s, want about now+2h", k.ExpiresAt)
	}
}

// A role with renewable=false mints keys whose leases Vault does not renew
// (Vault Agent then mints a successor early); keys minted before the change
// are refused renewal by the plugin.
func TestNotRenewableRole(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h", "max_ttl": "3h"})
	before := e.mint("web", nil)
	e.ok(logical.UpdateOperation, "roles/web", map[string]interface{}{"renewable": false})
	if got := e.ok(logical.ReadOperation, "roles/web", nil).Data["renewable"]; got != false {
		t.Fatalf("role renewable = %v, want false", got)
	}
	if resp := e.mint("web", nil); resp.Secret == nil || resp.Secret.Renewable || resp.Secret.TTL != time.Hour {
		t.Fatalf("lease = %#v, want a non-renewable 1h lease", resp.Secret)
	}
	e.renewRefused(before.Secret, `role "web" has renewable=false`)
	e.userError(logical.UpdateOperation, "roles/web", map[string]interface{}{"orphan": true}, "renewable=false means nothing with orphan=true")
	e.ok(logical.UpdateOperation, "roles/web", map[string]interface{}{"renewable": true})
	if resp := e.mint("web", nil); !resp.Secret.Renewable {
		t.Fatal("renewable=true again: lease not renewable")
	}
}

func TestKeyIDPathsRejectBadIDs(t *testing.T) {
	e := newTestEnv(t)
	e.userError(logical.ReadOperation, "keys/id/short", nil, "is not a key_id")
	e.userError(logical.DeleteOperation, "keys/r/id/short", nil, "is not a key_id")
	if resp := e.ok(logical.ReadOperation, "keys/id/AAAAAAAAAAAA", nil); resp != nil {
		t.Fatalf("read of unknown key = %#v, want nil (404)", resp)
	}
}

// A key minted with the holder's public key is bound: its record carries the
// thumbprint for verifiers, keybroker/verify (which cannot check a proof)
// refuses it, and a role with require_dpop mints no unbound key.
func TestMintDPoPBoundKey(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("r", map[string]interface{}{"scopes": "read"})
	k := dpoptest.NewKey(t, "EdDSA")
	minted := e.mint("r", map[string]interface{}{"dpop_jwk": string(k.JWK)})
	id, key := minted.Data["key_id"].(string), minted.Data["key"].(string)
	if minted.Data["dpop_jkt"] != k.JKT {
		t.Fatalf("mint answer dpop_jkt %v", minted.Data["dpop_jkt"])
	}
	recs, _, _ := e.snapshotAll(nil)
	if recs[id].JKT != k.JKT {
		t.Fatalf("record jkt %q, want %q", recs[id].JKT, k.JKT)
	}
	if r := e.ok(logical.ReadOperation, "keys/id/"+id, nil); r.Data["dpop_jkt"] != k.JKT {
		t.Fatalf("key read dpop_jkt %v", r.Data["dpop_jkt"])
	}
	if got := e.verifyReason(key, "10.0.0.1", nil); got != contract.ReasonDPoPRequired {
		t.Fatalf("verify on a bound key: %s", got)
	}
	e.userError(logical.UpdateOperation, "keys/r", map[string]interface{}{"name": "x", "dpop_jkt": "nope"}, "43 characters")
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"require_dpop": true})
	e.userError(logical.UpdateOperation, "keys/r", map[string]interface{}{"name": "x"}, "requires DPoP-bound credentials")
	e.mint("r", map[string]interface{}{"dpop_jkt": k.JKT})
}

// A policy on keybroker/keys/<role>/* must reach that role's keys and no
// others: every path that changes or reads one key names its role, and a
// key of another role is answered as one that does not exist, changing
// nothing. (Issue 23: keys/id/<key_id>/rotate took over any key.)
func TestKeyPathsAreScopedByRole(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("billing", map[string]interface{}{"scopes": "read", "ttl": "1h"})
	e.createRole("admin", map[string]interface{}{"scopes": "admin", "ttl": "1h", "tenant": ""})
	bill := e.mint("billing", map[string]interface{}{"name": "b"}).Data["key_id"].(string)
	adm := e.mint("admin", map[string]interface{}{"name": "a"}).Data["key_id"].(string)

	foreign := "keys/billing/id/" + adm
	if resp := e.ok(logical.ReadOperation, foreign, nil); resp != nil {
		t.Fatalf("read of another role's key under billing = %#v, want 404", resp)
	}
	for _, c := range []struct {
		op   logical.Operation
		path string
		data map[string]interface{}
	}{
		{logical.DeleteOperation, foreign, nil},
		{logical.UpdateOperation, foreign + "/rotate", map[string]interface{}{"grace": "0s"}},
		{logical.UpdateOperation, foreign + "/suspend", nil},
		{logical.UpdateOperation, foreign + "/resume", nil},
		{logical.UpdateOperation, "keys/nosuchrole/id/" + adm + "/rotate", nil},
	} {
		e.userError(c.op, c.path, c.data, "does not exist under role")
	}
	k, err := getKey(context.Background(), e.storage, adm)
	if err != nil || k.revoked() || k.suspended() || k.ReplacedBy != "" {
		t.Fatalf("the admin key changed through billing's paths: %+v %v", k, err)
	}
	if keys := e.ok(logical.ListOperation, "keys/billing/id/", nil).Data["keys"].([]string); !slices.Equal(keys, []string{bill}) {
		t.Fatalf("keys/billing/id/ = %v, want only %s", keys, bill)
	}
	if keys := e.ok(logical.ListOperation, "keys/id/", nil).Data["keys"].([]string); len(keys) != 2 {
		t.Fatalf("keys/id/ (every role) = %v, want both", keys)
	}
	// The key's own role reaches it; a rotated successor's lease lives
	// under the role's path, so revoke -prefix keys/<role> reaches it.
	rot := e.ok(logical.UpdateOperation, "keys/admin/id/"+adm+"/rotate", map[string]interface{}{"grace": "1m"})
	if rot.Data["replaces"] != adm || rot.Data["scopes"].([]string)[0] != "admin" {
		t.Fatalf("rotate under the key's role: %#v", rot.Data)
	}
	e.ok(logical.DeleteOperation, "keys/billing/id/"+bill, nil)
	if d := e.ok(logical.ReadOperation, "keys/billing/id/"+bill, nil).Data; d["revoked"] != true || d["revoked_at"] == nil {
		t.Fatalf("billing key after delete under its role: %#v", d)
	}
	// The old role-less paths change nothing any more.
	for _, p := range []string{"keys/id/" + adm + "/rotate", "keys/id/" + adm + "/suspend"} {
		if _, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: p, Storage: e.storage}); err == nil {
			t.Fatalf("%s still answers", p)
		}
	}
	if _, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.DeleteOperation, Path: "keys/id/" + adm, Storage: e.storage}); err == nil {
		t.Fatalf("delete keys/id/<key_id> still answers")
	}
}
