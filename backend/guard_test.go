package backend

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Every field's default has the Go type FieldData.Get returns for its type,
// so no handler's type assertion can panic on a request that omits it (the
// old revocations "after" default, an int on a TypeInt64 field, did).
func TestFieldDefaultsMatchTheirTypes(t *testing.T) {
	b := newTestEnv(t).b
	check := func(where, name string, f *framework.FieldSchema) {
		if got, want := reflect.TypeOf(f.DefaultOrZero()), reflect.TypeOf(f.Type.Zero()); got != want {
			t.Errorf("%s field %q: default %#v is a %v, but a %v field gives %v", where, name, f.Default, got, f.Type, want)
		}
	}
	for _, p := range b.Paths {
		for name, f := range p.Fields {
			check("path "+p.Pattern, name, f)
		}
	}
	for _, s := range b.Secrets {
		for name, f := range s.Fields {
			check("secret "+s.Type, name, f)
		}
	}
}

// A handler that panics answers a 500; the process lives on.
func TestGuardTurnsPanicsIntoErrors(t *testing.T) {
	b := newTestEnv(t).b
	p := &framework.Path{
		Pattern: "boom$",
		Fields:  map[string]*framework.FieldSchema{"n": {Type: framework.TypeInt64}},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{Callback: func(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
				var m map[string]int
				m["x"] = 1 // nil map: panics
				return nil, nil
			}},
		},
	}
	b.guardPaths([]*framework.Path{p})
	cb := p.Operations[logical.ReadOperation].(*framework.PathOperation).Callback
	d := &framework.FieldData{Raw: map[string]interface{}{}, Schema: p.Fields}
	resp, err := cb(context.Background(), &logical.Request{}, d)
	if err == nil || resp != nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("panicking handler: %v %v", resp, err)
	}
	// And the validation runs before the handler: a wrong type is a 400.
	d.Raw["n"] = "not a number"
	if resp, err := cb(context.Background(), &logical.Request{}, d); err != nil || resp == nil || !resp.IsError() {
		t.Fatalf("wrong type: %v %v", resp, err)
	}
	d.Raw = map[string]interface{}{"typo": 1}
	if resp, _ := cb(context.Background(), &logical.Request{}, d); resp == nil || !strings.Contains(resp.Error().Error(), "unknown field") {
		t.Fatalf("unknown field: %v", resp)
	}
}

// concretePath turns a pattern into a request path: each named capture
// (?P<name>...), parentheses nested inside, becomes captures[name].
func concretePath(pattern string, captures map[string]string) string {
	var b strings.Builder
	p := strings.TrimPrefix(pattern, "^")
	for {
		i := strings.Index(p, "(?P<")
		if i < 0 {
			b.WriteString(p)
			break
		}
		b.WriteString(p[:i])
		name := p[i+4 : i+4+strings.IndexByte(p[i+4:], '>')]
		depth, j := 0, i
		for ; j < len(p); j++ {
			if p[j] == '(' {
				depth++
			} else if p[j] == ')' {
				if depth--; depth == 0 {
					break
				}
			}
		}
		b.WriteString(captures[name])
		p = p[j+1:]
	}
	out := strings.TrimSuffix(strings.TrimSuffix(b.String(), "$"), "/?")
	return strings.ReplaceAll(out, `\.`, ".")
}

// hostileValues are what a caller can put in a field: wrong types, extreme
// numbers, huge and control-character strings, huge lists.
func hostileValues() map[string]interface{} {
	huge := make([]interface{}, 10_000)
	for i := range huge {
		huge[i] = "s"
	}
	return map[string]interface{}{
		"map":           map[string]interface{}{"a": 1},
		"nested list":   []interface{}{[]interface{}{1}},
		"string":        "abc",
		"negative":      -1,
		"min int64":     int64(-1 << 63),
		"huge float":    1e300,
		"bool":          true,
		"nil":           nil,
		"1 MiB string":  strings.Repeat("a", 1<<20),
		"control chars": "a\x00b\r\nc\x1b",
		"10k list":      huge,
		"numeric str":   "99999999999999999999999",
		"duration":      "-5m",
		"parent ref":    "../tool",
	}
}

// acceptable is a valid answer or a 4xx: never a 500 or a panic.
func acceptable(resp *logical.Response, err error) bool {
	if err == nil {
		return true
	}
	switch {
	case errors.Is(err, logical.ErrInvalidRequest), errors.Is(err, logical.ErrPermissionDenied),
		errors.Is(err, logical.ErrUnsupportedPath), errors.Is(err, logical.ErrUnsupportedOperation):
		return true
	}
	var coded logical.HTTPCodedError
	if errors.As(err, &coded) && coded.Code() >= 400 && coded.Code() < 500 {
		return true
	}
	return resp != nil && resp.IsError() && !errors.Is(err, logical.ErrReadOnly) && err.Error() == resp.Error().Error()
}

// Every path and operation, on an empty mount and on one with state, with
// no fields, every field given every hostile value, and an unknown field:
// a valid answer or a 4xx, never a 500 or a panic.
func TestEveryPathSurvivesHostileFields(t *testing.T) {
	for _, state := range []string{"empty", "populated", "dotted names"} {
		t.Run(state, func(t *testing.T) {
			e := newTestEnv(t)
			captures := map[string]string{"name": "nothing", "role": "nothing", "key_id": "AAAAAAAAAAAA", "id": "nothing"}
			if state == "dotted names" {
				// The path patterns' name form admits "a..b"; Vault's
				// storage refuses any key holding "..".
				captures = map[string]string{"name": "a..b", "role": "a..b", "key_id": "AAAAAAAAAAAA", "id": "a..b"}
			}
			if state == "populated" {
				e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 100})
				e.ok(logical.UpdateOperation, "roles/r1", map[string]interface{}{"scopes": "read", "tenant": "acme", "budget": 10, "audiences": "svc"})
				k := e.ok(logical.UpdateOperation, "keys/r1", map[string]interface{}{"name": "k"})
				id := k.Data["key_id"].(string)
				captures = map[string]string{"name": "r1", "role": "r1", "key_id": id, "id": id}
			}
			for _, p := range e.b.Paths {
				path := concretePath(p.Pattern, captures)
				if path == "" || strings.ContainsAny(path, `()?<>$^\`) {
					t.Fatalf("pattern %q: cannot make a path (%q)", p.Pattern, path)
				}
				for op := range p.Operations {
					cases := map[string]map[string]interface{}{"no fields": {}, "unknown field": {"surely_not_a_field": 1}}
					for field := range p.Fields {
						for what, v := range hostileValues() {
							cases[field+"="+what] = map[string]interface{}{field: v}
						}
					}
					for name, data := range cases {
						resp, err := func() (resp *logical.Response, err error) {
							defer func() {
								if r := recover(); r != nil {
									t.Errorf("%s %s (%s): panic %v", op, path, name, r)
								}
							}()
							return e.b.HandleRequest(context.Background(), &logical.Request{
								Operation: op, Path: path, Data: data, Storage: e.storage,
								EntityID: e.entityID, MountPoint: "keybroker/", Connection: &logical.Connection{RemoteAddr: "127.0.0.1"},
							})
						}()
						if !acceptable(resp, err) {
							t.Errorf("%s %s (%s): %v %v, want a valid answer or a 4xx", op, path, name, resp, err)
						}
						if resp != nil && resp.IsError() {
							assertNoGoInternals(t, string(op)+" "+path+" ("+name+")", resp.Error().Error())
						}
					}
				}
			}
		})
	}
}

var _ = http.StatusOK
