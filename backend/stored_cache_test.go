package backend

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/sdk/logical"
)

// A role in memory is the one stored: every write of this node (write,
// suspend, resume, delete) is seen by the next mint, and a write of another
// node once Vault invalidates the entry.
func TestRoleCacheFollowsWrites(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	e.mint("web", nil)
	e.ok(logical.UpdateOperation, "roles/web", map[string]interface{}{"scopes": "read,write"})
	if got := e.mint("web", map[string]interface{}{"scopes": "write"}).Data["scopes"]; len(got.([]string)) != 1 {
		t.Fatalf("after a role write: scopes %v", got)
	}
	e.ok(logical.UpdateOperation, "roles/web/suspend", nil)
	e.userError(logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"}, "is suspended")
	e.ok(logical.UpdateOperation, "roles/web/resume", nil)
	e.mint("web", nil)
	e.ok(logical.DeleteOperation, "roles/web", nil)
	e.userError(logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"}, "does not exist")

	// Another node's write reaches this one as a storage change and an
	// invalidation of its key.
	e.createRole("api", map[string]interface{}{"scopes": "read"})
	e.mint("api", nil)
	r, err := getRole(context.Background(), e.storage, "api")
	if err != nil {
		t.Fatal(err)
	}
	r.Suspended = true
	if err := putJSON(context.Background(), e.storage, rolePath("api"), r); err != nil {
		t.Fatal(err)
	}
	e.mint("api", nil) // not yet invalidated: the role in memory
	e.b.invalidate(context.Background(), rolePath("api"))
	e.userError(logical.UpdateOperation, "keys/api", map[string]interface{}{"name": "k"}, "is suspended")
}

// The config in memory follows this node's writes and another node's.
func TestConfigCacheFollowsWrites(t *testing.T) {
	e := newTestEnv(t)
	iss := func() string {
		tok := e.ok(logical.UpdateOperation, "token/web", nil).Data["token"].(string)
		var c jwt.RegisteredClaims
		if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil {
			t.Fatal(err)
		}
		return c.Issuer
	}
	e.createRole("web", map[string]interface{}{"scopes": "read", "audiences": "svc"})
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": "https://one.example"})
	if got := iss(); got != "https://one.example" {
		t.Fatalf("iss %q", got)
	}
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": "https://two.example"})
	if got := iss(); got != "https://two.example" {
		t.Fatalf("after a config write: iss %q", got)
	}
	c, err := getConfig(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	c.Issuer = "https://three.example"
	if err := putJSON(context.Background(), e.storage, configPath, c); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(context.Background(), configPath)
	if got := iss(); !strings.HasPrefix(got, "https://three.example") {
		t.Fatalf("after another node's config write: iss %q", got)
	}
}

// A read that raced a write does not put back what the write replaced.
func TestStoredCacheRacingFill(t *testing.T) {
	stored := "old"
	var c *storedCache[string]
	c = newStoredCache(func(context.Context, logical.Storage, string) (*string, error) {
		v := stored
		// The write lands after this read and before it is kept.
		stored = "new"
		c.forget("x")
		return &v, nil
	})
	if v, _ := c.get(context.Background(), nil, "x"); *v != "old" {
		t.Fatalf("get: %q", *v)
	}
	c.load = func(context.Context, logical.Storage, string) (*string, error) { v := stored; return &v, nil }
	if v, _ := c.get(context.Background(), nil, "x"); *v != "new" {
		t.Fatalf("after the racing write: %q; want the write's", *v)
	}
}

// Mints share the role in memory: none of them may change it. After mints
// of every kind, narrowed every way, it is still what storage holds.
func TestMintsLeaveTheRoleInMemoryAlone(t *testing.T) {
	e := delegationEnv(t)
	e.createRole("web", map[string]interface{}{
		"scopes": "read,write,admin", "default_scopes": "read", "bound_cidrs": "10.0.0.0/8,192.168.0.0/16",
		"metadata": "team=core", "audiences": "svc,other", "ttl": "1h",
	})
	e.mint("web", map[string]interface{}{"scopes": "write,read", "bound_cidrs": "10.1.0.0/16", "metadata": "owner=me"})
	e.mint("web", nil)
	e.ok(logical.UpdateOperation, "token/web", map[string]interface{}{"audience": "other", "scopes": "admin"})
	t0 := e.as("user-entity", logical.UpdateOperation, "token/user", map[string]interface{}{"scopes": "read,write"})
	e.as("tool-entity", logical.UpdateOperation, "token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"], "scopes": "read"})
	for _, name := range []string{"web", "user", "tool"} {
		held, err := e.b.roles.get(context.Background(), e.storage, name)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := getRole(context.Background(), e.storage, name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(held, stored) {
			t.Fatalf("role %s in memory after mints:\n%+v\nstored:\n%+v", name, held, stored)
		}
	}
}
