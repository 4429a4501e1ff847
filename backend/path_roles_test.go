package backend

import (
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestRoleCRUD(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.CreateOperation, "roles/web", map[string]interface{}{
		"scopes":      "read,write",
		"ttl":         "1h",
		"max_ttl":     "2h",
		"bound_cidrs": "10.0.0.1/8, 2001:db8::/32",
		"tenant":      "acme",
		"metadata":    map[string]interface{}{"team": "payments"},
	})

	got := e.ok(logical.ReadOperation, "roles/web", nil).Data
	want := map[string]interface{}{
		"scopes":                []string{"read", "write"},
		"default_scopes":        []string{"read", "write"},
		"ttl":                   int64(3600),
		"max_ttl":               int64(7200),
		"bound_cidrs":           []string{"10.0.0.0/8", "2001:db8::/32"},
		"tenant":                "acme",
		"key_prefix":            "kb",
		"orphan":                false,
		"renewable":             true,
		"allowed_subject_roles": []string{},
		"max_delegation_depth":  1,
		"approval_scopes":       []string{},
		"approvals_required":    1,
		"approval_ttl":          int64(3600),
		"approval_redeem_ttl":   int64(900),
		"approved_max_ttl":      int64(3600),
		"suspended":             false,
		"metadata":              map[string]string{"team": "payments"},
		"audiences":             []string{},
		"token_ttl":             int64(900),
		"token_max_ttl":         int64(3600),
		"subject":               "entity_id",
		"refresh_ttl":           int64(0),
		"refresh_max_ttl":       int64(86400),
		"require_dpop":          false,
		"budget":                int64(0),
		"budget_period":         int64(86400),
		"max_cost_per_request":  int64(1),
		"rate_limit":            float64(0),
		"rate_burst":            0,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read role:\n got %#v\nwant %#v", got, want)
	}

	// An update changes only the fields given.
	e.ok(logical.UpdateOperation, "roles/web", map[string]interface{}{"default_scopes": "read", "key_prefix": "acme"})
	got = e.ok(logical.ReadOperation, "roles/web", nil).Data
	if !reflect.DeepEqual(got["default_scopes"], []string{"read"}) || got["key_prefix"] != "acme" || got["ttl"] != int64(3600) {
		t.Fatalf("after partial update: %#v", got)
	}

	e.ok(logical.CreateOperation, "roles/batch", map[string]interface{}{"scopes": "read"})
	list := e.ok(logical.ListOperation, "roles/", nil)
	if !reflect.DeepEqual(list.Data["keys"], []string{"batch", "web"}) {
		t.Fatalf("list roles = %#v", list.Data["keys"])
	}

	e.ok(logical.DeleteOperation, "roles/web", nil)
	if resp := e.ok(logical.ReadOperation, "roles/web", nil); resp != nil {
		t.Fatalf("read after delete = %#v", resp)
	}
}

func TestRoleBadInput(t *testing.T) {
	cases := []struct {
		name string
		path string
		data map[string]interface{}
		want string
	}{
		{"unknown field", "roles/r", map[string]interface{}{"scope": "read"}, "unknown field(s): scope"},
		{"scope with space", "roles/r", map[string]interface{}{"scopes": []string{"read write"}}, "RFC 6749"},
		{"scope with quote", "roles/r", map[string]interface{}{"scopes": `re"ad`}, "RFC 6749"},
		{"too many scopes", "roles/r", map[string]interface{}{"scopes": strings.Repeat("s,", maxScopes) + "x"}, "at most 64 scopes"},
		{"oversize scope", "roles/r", map[string]interface{}{"scopes": strings.Repeat("s", maxScopeLength+1)}, "1 to 128 characters"},
		{"default scope outside", "roles/r", map[string]interface{}{"scopes": "read", "default_scopes": "write"}, "default_scopes write are not in the role's scopes"},
		{"ttl above max_ttl", "roles/r", map[string]interface{}{"ttl": "2h", "max_ttl": "1h"}, "must not exceed max_ttl"},
		{"negative ttl", "roles/r", map[string]interface{}{"ttl": -5}, "ttl must be a duration of zero or more: seconds, or a string such as \"90s\" or \"1h\"; got -5"},
		{"ttl not a duration", "roles/r", map[string]interface{}{"ttl": "soon"}, "ttl"},
		{"max_ttl above mount", "roles/r", map[string]interface{}{"max_ttl": "1000h"}, "exceeds the mount's max lease TTL"},
		{"bad cidr", "roles/r", map[string]interface{}{"bound_cidrs": "10.0.0.0/33"}, `"10.0.0.0/33" is not a CIDR block`},
		{"cidr garbage", "roles/r", map[string]interface{}{"bound_cidrs": "localhost"}, "is not a CIDR block"},
		{"too many cidrs", "roles/r", map[string]interface{}{"bound_cidrs": strings.Repeat("10.0.0.0/8,", maxCIDRs) + "10.0.0.0/8"}, "at most 32 CIDRs"},
		{"bad tenant", "roles/r", map[string]interface{}{"tenant": "acme corp"}, "tenant"},
		{"bad prefix", "roles/r", map[string]interface{}{"key_prefix": "KB"}, "lowercase letters and digits"},
		{"prefix with underscore", "roles/r", map[string]interface{}{"key_prefix": "k_b"}, "lowercase letters and digits"},
		{"metadata too large", "roles/r", map[string]interface{}{"metadata": map[string]interface{}{"k": strings.Repeat("v", maxMetadataValue+1)}}, "at most 512 characters"},
		{"metadata control char", "roles/r", map[string]interface{}{"metadata": map[string]interface{}{"k": "a\nb"}}, "control characters"},
		{"reserved name id", "roles/id", map[string]interface{}{"scopes": "read"}, "reserved"},
		{"reserved name refresh", "roles/refresh", map[string]interface{}{"scopes": "read"}, "reserved"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.userError(logical.CreateOperation, tc.path, tc.data, tc.want)
			if keys := e.storageKeys(""); len(keys) != 0 {
				t.Fatalf("a rejected role write stored %v", keys)
			}
		})
	}
}

// A rejected update leaves the stored role as it was.
func TestRoleBadUpdateKeepsRole(t *testing.T) {
	e := newTestEnv(t)
	e.ok(logical.CreateOperation, "roles/web", map[string]interface{}{"scopes": "read,write"})
	before := e.ok(logical.ReadOperation, "roles/web", nil).Data
	e.userError(logical.UpdateOperation, "roles/web", map[string]interface{}{"scopes": "read", "default_scopes": "write"}, "not in the role's scopes")
	after := e.ok(logical.ReadOperation, "roles/web", nil).Data
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("role changed by a rejected update:\nbefore %#v\nafter  %#v", before, after)
	}
}
