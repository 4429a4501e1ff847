package backend

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

func TestVerify(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{
		"scopes": "read,write", "bound_cidrs": "10.0.0.0/8,2001:db8::/32", "tenant": "acme",
	})
	e.createRole("open", map[string]interface{}{"scopes": "read"})
	mintKey := func(role string) (key, id string) {
		resp := e.mint(role, map[string]interface{}{"scopes": "read"})
		return resp.Data["key"].(string), resp.Data["key_id"].(string)
	}
	good, goodID := mintKey("web")
	open, _ := mintKey("open")
	revoked, revokedID := mintKey("web")
	e.ok(logical.DeleteOperation, e.keyPath(revokedID), nil)
	expired, expiredID := mintKey("web")
	k, _ := getKey(context.Background(), e.storage, expiredID)
	k.ExpiresAt = time.Now().Add(-time.Second)
	if err := putKey(context.Background(), e.storage, k); err != nil {
		t.Fatal(err)
	}
	// A well-formed key whose key_id exists but whose secret differs: it must
	// answer exactly like an unknown key.
	forged, forgedID, _ := apikey.Generate(nil, "kb")
	other, _, _ := apikey.Generate(nil, "kb")
	h := apikey.Hash(other)
	if err := putKey(context.Background(), e.storage, &keyEntry{ID: forgedID, Hash: h[:], ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	unknown, _, _ := apikey.Generate(nil, "kb")

	cases := []struct {
		name   string
		key    string
		addr   string
		scopes string
		reason string
	}{
		{"ok ipv4", good, "10.1.2.3", "read", contract.ReasonOK},
		{"ok ipv4 with port", good, "10.1.2.3:4431", "", contract.ReasonOK},
		{"ok ipv6", good, "2001:db8::1", "read", contract.ReasonOK},
		{"ok ipv6 with port", good, "[2001:db8::1]:443", "read", contract.ReasonOK},
		{"ok ipv4-mapped ipv6", good, "::ffff:10.0.0.1", "read", contract.ReasonOK},
		{"ok unbound key without addr", open, "", "read", contract.ReasonOK},
		{"malformed", "kb_garbage", "10.1.2.3", "", contract.ReasonMalformed},
		{"typo", typo(good), "10.1.2.3", "", contract.ReasonMalformed},
		{"unknown key", unknown, "10.1.2.3", "", contract.ReasonNotFound},
		{"wrong secret for known id", forged, "10.1.2.3", "", contract.ReasonNotFound},
		{"revoked", revoked, "10.1.2.3", "", contract.ReasonRevoked},
		{"expired", expired, "10.1.2.3", "", contract.ReasonExpired},
		{"cidr denied ipv4", good, "192.168.1.1", "", contract.ReasonCIDRDenied},
		{"cidr denied ipv6", good, "2001:db9::1", "", contract.ReasonCIDRDenied},
		{"cidr denied without addr", good, "", "", contract.ReasonCIDRDenied},
		{"insufficient scope", good, "10.1.2.3", "read,write", contract.ReasonInsufficientScope},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := map[string]interface{}{"key": tc.key, "remote_addr": tc.addr}
			if tc.scopes != "" {
				data["scopes"] = tc.scopes
			}
			resp := e.ok(logical.UpdateOperation, "verify", data)
			if resp.Data["reason"] != tc.reason || resp.Data["valid"] != (tc.reason == contract.ReasonOK) {
				t.Fatalf("verify = %#v, want reason %s", resp.Data, tc.reason)
			}
			if tc.reason != contract.ReasonOK {
				// Only a key_id no key has says so; a wrong secret for a
				// known key_id must look like any other not_found.
				want := 2
				if tc.name == "unknown key" {
					want = 3
					if resp.Data["unknown_key_id"] != true {
						t.Fatalf("unknown key_id not flagged: %#v", resp.Data)
					}
				}
				if len(resp.Data) != want {
					t.Fatalf("a denial says more than valid and reason: %#v", resp.Data)
				}
				return
			}
			if tc.key == good && (resp.Data["key_id"] != goodID || resp.Data["tenant"] != "acme" || resp.Data["role"] != "web") {
				t.Fatalf("valid answer = %#v", resp.Data)
			}
			if _, ok := resp.Data["hash"]; ok {
				t.Fatal("verify returns the hash")
			}
		})
	}
}

func TestVerifyBadRequest(t *testing.T) {
	e := newTestEnv(t)
	e.userError(logical.UpdateOperation, "verify", map[string]interface{}{}, "credential (or key) is required")
	e.userError(logical.UpdateOperation, "verify", map[string]interface{}{"key": "kb_x", "remote_addr": "not-an-ip"}, `remote_addr "not-an-ip" is not an IP address`)
	e.userError(logical.UpdateOperation, "verify", map[string]interface{}{"key": "kb_x", "remote_addr": "10.0.0.300"}, "is not an IP address")
	e.userError(logical.UpdateOperation, "verify", map[string]interface{}{"key": "kb_x", "scope": "read"}, "unknown field(s): scope")
}

// The plaintext of a key never appears in an error message, even for a
// malformed key.
func TestVerifyDoesNotEchoKey(t *testing.T) {
	e := newTestEnv(t)
	secret := "kb_thisisnotakey_butitmightbeasecret"
	resp := e.do(logical.UpdateOperation, "verify", map[string]interface{}{"key": secret, "remote_addr": "bogus"})
	if resp == nil || !resp.IsError() {
		t.Fatalf("want a 400, got %#v", resp)
	}
	if msg := resp.Error().Error(); strings.Contains(msg, secret) {
		t.Fatalf("error message echoes the key: %q", msg)
	}
}

// typo changes the last character of key, as a mistyped copy would.
func typo(key string) string {
	last := key[len(key)-1]
	if last == 'x' {
		return key[:len(key)-1] + "y"
	}
	return key[:len(key)-1] + "x"
}
