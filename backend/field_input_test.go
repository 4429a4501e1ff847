package backend

import (
	"context"
	"encoding/json"
	"maps"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// goInternals are what a 400 must never show: mapstructure's and the
// framework's words, Go type names, fmt's verbs gone wrong, struct dumps.
var goInternals = []string{"unconvertible", "expected type", "error converting input", "mapstructure",
	"interface {}", "map[", "[]string", "%!", "&logical", "&{", "0xc0", "<nil>"}

func assertNoGoInternals(t *testing.T, where, msg string) {
	t.Helper()
	for _, bad := range goInternals {
		if strings.Contains(msg, bad) {
			t.Errorf("%s: the error shows Go internals (%q): %s", where, bad, msg)
			return
		}
	}
}

// wrongKinds are values each field type cannot take: refused with a 400
// that names the field and what it takes. (What a type can take weakly, a
// number for a string, the string "5" for a number, is not listed.)
func wrongKinds(t framework.FieldType) map[string]interface{} {
	object := map[string]interface{}{"a": map[string]interface{}{"b": 1}}
	nested := []interface{}{[]interface{}{1}, map[string]interface{}{}}
	w := map[string]interface{}{}
	switch t {
	case framework.TypeMap:
		w["a list"] = nested
		w["a string"] = "abc"
	case framework.TypeKVPairs:
		w["a string"] = "no-equals-sign"
		w["a nested list"] = nested
	case framework.TypeStringSlice, framework.TypeCommaStringSlice, framework.TypeCommaIntSlice:
		w["an object"] = object
		w["a nested list"] = nested
	case framework.TypeString, framework.TypeLowerCaseString, framework.TypeNameString:
		w["an object"] = object
		w["a nested list"] = nested
		w["true"] = true
	default: // numbers, durations, times, bools
		w["an object"] = object
		w["a nested list"] = nested
		w["a word"] = "abc"
	}
	return w
}

// Every field of every path's operations, sent a value of a kind it cannot
// take: a 400 that starts with the field's name and says what it takes,
// never the framework's mapstructure message (which, among other things,
// echoed the value whatever its size). Then two wrong fields at once: both
// are named.
func TestWrongTypedFieldsSayWhatTheFieldTakes(t *testing.T) {
	e := newTestEnv(t)
	captures := map[string]string{"name": "nothing", "role": "nothing", "key_id": "AAAAAAAAAAAA", "id": "nothing"}
	checked := 0
	for _, p := range e.b.Paths {
		path := concretePath(p.Pattern, captures)
		for op := range p.Operations {
			for field, schema := range p.Fields {
				if isCapture(p, field) {
					continue
				}
				for what, v := range wrongKinds(schema.Type) {
					if jsonFields[field] != "" && what == "an object" {
						continue
					}
					where := string(op) + " " + path + " " + field + "=" + what
					resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
						Operation: op, Path: path, Data: map[string]interface{}{field: v}, Storage: e.storage,
						EntityID: e.entityID, MountPoint: "keybroker/", Connection: &logical.Connection{RemoteAddr: "127.0.0.1"},
					})
					if err != nil || resp == nil || !resp.IsError() {
						t.Errorf("%s: %v %v, want a 400", where, resp, err)
						continue
					}
					msg := resp.Error().Error()
					if !strings.HasPrefix(msg, field+" must be ") {
						t.Errorf("%s: %q does not start with %q", where, msg, field+" must be ")
					}
					assertNoGoInternals(t, where, msg)
					checked++
				}
			}
		}
	}
	if checked < 500 {
		t.Fatalf("only %d wrong-typed requests checked: the table lost its paths", checked)
	}
	resp := e.do(logical.UpdateOperation, "keys/nothing", map[string]interface{}{"ttl": "soon", "scopes": map[string]interface{}{"read": true}, "name": "k"})
	if msg := resp.Error().Error(); !strings.Contains(msg, `scopes must be a list of strings, or one comma-separated string; got an object`) ||
		!strings.Contains(msg, `ttl must be a duration of zero or more: seconds, or a string such as "90s" or "1h"; got "soon"`) {
		t.Fatalf("two wrong fields: %q", msg)
	}
	// A long value is not echoed back.
	resp = e.do(logical.UpdateOperation, "keys/nothing", map[string]interface{}{"ttl": strings.Repeat("9", 1000), "name": "k"})
	if msg := resp.Error().Error(); len(msg) > 200 || !strings.HasPrefix(msg, "ttl must be") {
		t.Fatalf("a long wrong value: %q", msg)
	}
}

// Vault asks a path with an existence check (roles, tenants) before the
// write, and the framework converts the fields there too: the same
// Vault runs the existence check before its ACL. A path without one reads
// no field there, so a caller without a policy gets Vault's 403 whatever it
// sends; on roles and tenants a field that does not convert is answered
// "does not exist" (Vault then checks the create capability) and its 400
// comes from HandleRequest, after the ACL.
func TestExistenceCheckReadsNoFieldBeforeTheACL(t *testing.T) {
	e := newTestEnv(t)
	bad := map[string]interface{}{"ttl": "x", "scopes": map[string]interface{}{}, "rotation_period": "x", "dpop_jwk": 5, "budget": map[string]interface{}{}}
	for _, path := range []string{"token/anyrole", "keys/anyrole", "config", "verify", "token/exchange", "budget/reserve"} {
		found, exists, err := e.b.HandleExistenceCheck(context.Background(), &logical.Request{
			Operation: logical.UpdateOperation, Path: path, Data: maps.Clone(bad), Storage: e.storage,
		})
		if found || exists || err != nil {
			t.Errorf("%s: found=%v exists=%v err=%v, want the framework's (false, false, nil)", path, found, exists, err)
		}
	}
	for _, path := range []string{"roles/r", "tenants/t"} {
		req := &logical.Request{Operation: logical.UpdateOperation, Path: path, Data: map[string]interface{}{"budget": map[string]interface{}{}}, Storage: e.storage}
		found, exists, err := e.b.HandleExistenceCheck(context.Background(), req)
		if !found || exists || err != nil {
			t.Fatalf("%s: found=%v exists=%v err=%v, want (true, false, nil)", path, found, exists, err)
		}
		req.Operation = logical.CreateOperation
		resp, err := e.b.HandleRequest(context.Background(), req)
		if err != nil || resp == nil || !resp.IsError() || !strings.HasPrefix(resp.Error().Error(), "budget must be ") {
			t.Fatalf("%s after the ACL: %v %v", path, resp, err)
		}
		assertNoGoInternals(t, path, resp.Error().Error())
	}
}

// A fraction for a whole-number field is refused, not truncated; a long
// value, or any value for a string field, is never echoed.
func TestFieldErrorsRefuseFractionsAndEchoLittle(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		field string
		v     interface{}
		want  string
	}{
		{"budget", 0.5, "budget must be a whole number; got 0.5"},
		{"budget", json.Number("-0.5"), "budget must be a whole number; got -0.5"},
		{"ttl", 1.5, "ttl must be a duration"},
		{"ttl", strings.Repeat("9", 40), "got a string"},
		{"budget", json.Number(strings.Repeat("9", 400)), "got a number"},
	} {
		req := &logical.Request{Operation: logical.UpdateOperation, Path: "roles/r", Data: map[string]interface{}{tc.field: tc.v}}
		msg := e.b.checkFieldInput(req)
		if !strings.Contains(msg, tc.want) || len(msg) > 200 {
			t.Errorf("%s=%v: %q, want it to say %q", tc.field, tc.v, msg, tc.want)
		}
	}
	if msg := e.b.checkFieldInput(&logical.Request{Operation: logical.UpdateOperation, Path: "roles/r", Data: map[string]interface{}{"budget": 2.0, "ttl": 60.0}}); msg != "" {
		t.Errorf("whole numbers as JSON numbers: %q", msg)
	}
}

// dpop_jwk's object form reaches the handler as its JSON text; a JSON
// field in the URL, or a field the path does not take, is left alone.
func TestJSONFieldsAreReadAsText(t *testing.T) {
	e := newTestEnv(t)
	req := &logical.Request{Operation: logical.UpdateOperation, Path: "token/nothing", Data: map[string]interface{}{
		"dpop_jwk": map[string]interface{}{"kty": "OKP", "crv": "Ed25519", "x": json.Number("1")},
	}}
	if msg := e.b.checkFieldInput(req); msg != "" {
		t.Fatal(msg)
	}
	if got := req.Data["dpop_jwk"]; got != `{"crv":"Ed25519","kty":"OKP","x":1}` {
		t.Fatalf("dpop_jwk as read: %#v", got)
	}
}
