package e2e

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/backend"
	"github.com/keybroker/keybroker/internal/vaultserver"
)

// The OpenAPI document a real Vault serves (sys/internal/specs/openapi)
// documents every path of the plugin, as Vault gets it from the plugin
// process: each operation with a unique operationId keybroker-..., and
// each answer the operation declares, a 200 with the schema of every field
// its Responses list (no more, of the declared type), or a 204.
func TestOpenAPIDocumentsKeybroker(t *testing.T) {
	v := vaultserver.StartT(t)
	resp, err := v.Client.Logical().ReadRawWithContext(ctxT(t), "sys/internal/specs/openapi")
	if err != nil {
		t.Fatalf("reading the OpenAPI document: %v", err)
	}
	defer resp.Body.Close()
	var doc framework.OASDocument
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("decoding the OpenAPI document: %v", err)
	}

	ids := map[string]string{}
	ops := 0
	for _, p := range backend.Paths() {
		for op, h := range p.Operations {
			if op == logical.CreateOperation && p.Operations[logical.UpdateOperation] != nil {
				continue // one POST, documented as the update
			}
			ops++
			path := "/" + v.Mount + "/" + openAPIPath(t, p.Pattern, op == logical.ListOperation)
			pi := doc.Paths[path]
			if pi == nil {
				t.Errorf("%s (pattern %s) is not in the document", path, p.Pattern)
				continue
			}
			method, o := oasOperation(pi, op)
			where := method + " " + path
			if o == nil {
				t.Errorf("%s: not documented (the %s operation)", where, op)
				continue
			}
			if !strings.HasPrefix(o.OperationID, "keybroker-") {
				t.Errorf("%s: operationId %q", where, o.OperationID)
			} else if other, dup := ids[o.OperationID]; dup {
				t.Errorf("%s: operationId %q is also %s's", where, o.OperationID, other)
			}
			ids[o.OperationID] = where
			if strings.HasPrefix(p.Pattern, "jwks") || strings.Contains(p.Pattern, "well-known") {
				if !pi.Unauthenticated {
					t.Errorf("%s: not marked x-vault-unauthenticated", where)
				}
			}
			checkDocumentedAnswers(t, &doc, where, o, h.Properties().Responses)
		}
	}
	if ops < 25 {
		t.Fatalf("only %d operations in backend.Paths(): the plugin's paths were not listed", ops)
	}
	t.Logf("%d operations documented: %v", len(ids), sortedIDs(ids))

	// vault path-help still answers from the same paths.
	h, err := v.Client.HelpWithContext(ctxT(t), v.Mount+"/keys/web")
	if err != nil || !strings.Contains(h.Help, "Mint an API key") || !strings.Contains(h.Help, "bound_cidrs") {
		t.Fatalf("path-help keys/web: %v\n%v", err, h)
	}
}

// checkDocumentedAnswers fails unless o documents each declared answer,
// and at least a 200 with fields or a 204: Vault's default, a bare "OK",
// says nothing of the answer.
func checkDocumentedAnswers(t *testing.T, doc *framework.OASDocument, where string, o *framework.OASOperation, declared map[int][]framework.Response) {
	t.Helper()
	if len(declared[http.StatusOK]) == 0 && len(declared[http.StatusNoContent]) == 0 {
		t.Errorf("%s: the plugin declares no 200 or 204 answer", where)
	}
	if ok := o.Responses[http.StatusOK]; o.Responses[http.StatusNoContent] == nil && (ok == nil || responseSchema(doc, ok) == nil || len(responseSchema(doc, ok).Properties) == 0) {
		t.Errorf("%s: the document shows neither a 204 nor a 200 with fields", where)
	}
	for code, rs := range declared {
		r := o.Responses[code]
		if r == nil {
			t.Errorf("%s: no %d response in the document", where, code)
			continue
		}
		var fields map[string]*framework.FieldSchema
		if len(rs) > 0 {
			fields = rs[0].Fields
		}
		if len(fields) == 0 {
			if code == http.StatusOK {
				t.Errorf("%s: the plugin declares a 200 without fields", where)
			}
			continue
		}
		schema := responseSchema(doc, r)
		if schema == nil {
			t.Errorf("%s: the %d response has no JSON schema", where, code)
			continue
		}
		for name, f := range fields {
			prop := schema.Properties[name]
			switch {
			case prop == nil:
				t.Errorf("%s: %d response lacks %q", where, code, name)
			case prop.Type != oasType(f.Type):
				t.Errorf("%s: %d response field %q is %q, want %q", where, code, name, prop.Type, oasType(f.Type))
			case prop.Description == "":
				t.Errorf("%s: %d response field %q has no description", where, code, name)
			}
		}
		for name := range schema.Properties {
			if fields[name] == nil {
				t.Errorf("%s: %d response documents %q, which the plugin does not declare", where, code, name)
			}
		}
	}
}

// responseSchema is the JSON schema of r, its reference resolved.
func responseSchema(doc *framework.OASDocument, r *framework.OASResponse) *framework.OASSchema {
	c := r.Content["application/json"]
	if c == nil || c.Schema == nil {
		return nil
	}
	if ref, ok := strings.CutPrefix(c.Schema.Ref, "#/components/schemas/"); ok {
		return doc.Components.Schemas[ref]
	}
	return c.Schema
}

// oasOperation is the method and OpenAPI operation of a logical operation:
// create and update are a POST, list a GET of the path with a slash.
func oasOperation(pi *framework.OASPathItem, op logical.Operation) (string, *framework.OASOperation) {
	switch op {
	case logical.ReadOperation, logical.ListOperation:
		return "GET", pi.Get
	case logical.CreateOperation, logical.UpdateOperation:
		return "POST", pi.Post
	case logical.DeleteOperation:
		return "DELETE", pi.Delete
	case logical.PatchOperation:
		return "PATCH", pi.Patch
	}
	return string(op), nil
}

// oasType is the OpenAPI type of a field type, as the plugin's fields use them.
func oasType(t framework.FieldType) string {
	switch t {
	case framework.TypeString, framework.TypeNameString, framework.TypeLowerCaseString, framework.TypeTime, framework.TypeDurationSecond:
		return "string"
	case framework.TypeInt, framework.TypeInt64:
		return "integer"
	case framework.TypeFloat:
		return "number"
	case framework.TypeBool:
		return "boolean"
	case framework.TypeMap, framework.TypeKVPairs:
		return "object"
	case framework.TypeSlice, framework.TypeStringSlice, framework.TypeCommaStringSlice, framework.TypeCommaIntSlice:
		return "array"
	}
	return "unknown type " + t.String()
}

// openAPIPath turns a path pattern into its OpenAPI path: named groups
// become {name}, an optional trailing slash goes (a list keeps one).
// Patterns with other regexp syntax fail the test, which would then need
// to learn it.
func openAPIPath(t *testing.T, pattern string, list bool) string {
	t.Helper()
	p := strings.TrimSuffix(strings.TrimPrefix(pattern, "^"), "$")
	for {
		i := strings.Index(p, "(?P<")
		if i < 0 {
			break
		}
		name, _, ok := strings.Cut(p[i+len("(?P<"):], ">")
		end, depth := i, 0
		for ; ok && end < len(p); end++ {
			if p[end] == '(' {
				depth++
			} else if p[end] == ')' {
				if depth--; depth == 0 {
					break
				}
			}
		}
		if !ok || end == len(p) {
			t.Fatalf("pattern %q: unbalanced named group", pattern)
		}
		p = p[:i] + "{" + name + "}" + p[end+1:]
	}
	p = strings.TrimSuffix(strings.ReplaceAll(p, `\.`, "."), "/?")
	if strings.ContainsAny(p, `\()[]?*+|^$`) {
		t.Fatalf("pattern %q: cannot turn %q into an OpenAPI path", pattern, p)
	}
	if list {
		p += "/"
	}
	return p
}

func sortedIDs(ids map[string]string) []string {
	out := make([]string, 0, len(ids))
	for id := range ids {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}
