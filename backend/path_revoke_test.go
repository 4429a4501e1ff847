package backend

import (
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestRevokeByValue(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	k := e.mint("web", nil)
	key := k.Data["key"].(string)
	tok := e.ok(logical.UpdateOperation, "token/agent", nil)
	unknown := "kb_" + strings.Repeat("A", 12) + "_" + strings.Repeat("B", 43)

	resp := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": key, "keys": tok.Data["token"].(string) + ",not-a-key," + key})
	got := resp.Data["results"].([]map[string]interface{})
	want := []struct{ kind, id, result string }{
		{secretTypeAPIKey, k.Data["key_id"].(string), "revoked"},
		{secretTypeJWT, tok.Data["jti"].(string), "revoked"},
		{secretTypeAPIKey, "", "malformed"},
		{secretTypeAPIKey, k.Data["key_id"].(string), "already_revoked"},
	}
	if len(got) != len(want) {
		t.Fatalf("results %#v", got)
	}
	for i, w := range want {
		if got[i]["kind"] != w.kind || (w.id != "" && got[i]["id"] != w.id) || got[i]["result"] != w.result || got[i]["index"] != i {
			t.Errorf("result %d: %#v, want %+v", i, got[i], w)
		}
	}
	for _, r := range got {
		for _, v := range r {
			if s, ok := v.(string); ok && (strings.Contains(s, key) || strings.Contains(s, tok.Data["token"].(string))) {
				t.Fatalf("a result names the credential: %#v", r)
			}
		}
	}
	if v := e.verifyKey(key); v["reason"] != "revoked" {
		t.Fatalf("key after revoke by value: %v", v["reason"])
	}
	ids, _, _ := e.feed(0)
	if !slices.Contains(ids, tok.Data["jti"].(string)) || !slices.Contains(ids, k.Data["key_id"].(string)) {
		t.Fatalf("feed %v", ids)
	}
	if r := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": unknown}).Data["results"].([]map[string]interface{}); r[0]["result"] != "not_found" && r[0]["result"] != "malformed" {
		t.Fatalf("unknown key: %#v", r)
	}
	if r := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": tok.Data["token"]}).Data["results"].([]map[string]interface{}); r[0]["result"] != "already_revoked" {
		t.Fatalf("revoked JWT again: %#v", r)
	}
	e.userError(logical.UpdateOperation, "revoke", nil, "give key")
	e.userError(logical.UpdateOperation, "revoke", map[string]interface{}{"keys": strings.Repeat("x,", 101)}, "at most 100")
}
