package backend

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// What Vault's OpenAPI document (sys/internal/specs/openapi) says of the
// mount comes from each path's DisplayAttrs, which name its operations
// (operationId keybroker-<verb>-<suffix>), and from each operation's
// Responses, which list every field its handler answers with.
// openapi_test.go checks every answer the backend tests get against them.

// HandleRequest is the framework's, but for the OpenAPI document of the
// root help: its request and response schemas are written out where they
// are used. An external plugin's document reaches Vault as JSON, which
// Vault decodes (framework.NewOASDocumentFromMap, Vault 1.21) without the
// "$ref" of a schema, so a reference would leave every request body and
// answer in sys/internal/specs/openapi an empty schema. The named schemas
// stay in components.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	if msg := b.checkFieldInput(req); msg != "" { // field_input.go
		return logical.ErrorResponse(msg), nil
	}
	resp, err := b.Backend.HandleRequest(ctx, req)
	if err == nil && resp != nil && req.Operation == logical.HelpOperation && req.Path == "" {
		if doc, ok := resp.Data["openapi"].(*framework.OASDocument); ok {
			inlineSchemas(doc)
		}
	}
	return resp, err
}

// inlineSchemas replaces each reference to a component schema in the
// operations of doc by the schema itself.
func inlineSchemas(doc *framework.OASDocument) {
	inline := func(c framework.OASContent) {
		for _, media := range c {
			if media == nil || media.Schema == nil {
				continue
			}
			if name, ok := strings.CutPrefix(media.Schema.Ref, "#/components/schemas/"); ok && doc.Components.Schemas[name] != nil {
				media.Schema = doc.Components.Schemas[name]
			}
		}
	}
	for _, pi := range doc.Paths {
		for _, op := range []*framework.OASOperation{pi.Get, pi.Post, pi.Delete, pi.Patch} {
			if op == nil {
				continue
			}
			if op.RequestBody != nil {
				inline(op.RequestBody.Content)
			}
			for _, r := range op.Responses {
				if r != nil {
					inline(r.Content)
				}
			}
		}
	}
}

// Paths are the plugin's paths as a mount serves them, for tests of the
// OpenAPI document Vault builds from them (e2e/openapi_test.go).
func Paths() []*framework.Path {
	return newBackend().Paths
}

// pathAttrs are the display attributes of a path whose operations act on
// suffix, e.g. "role": keybroker-read-role, keybroker-write-role.
func pathAttrs(suffix string) *framework.DisplayAttributes {
	return &framework.DisplayAttributes{OperationPrefix: operationPrefixKeybroker, OperationSuffix: suffix}
}

// operation is a path operation and its answers.
func operation(cb framework.OperationFunc, responses map[int][]framework.Response) *framework.PathOperation {
	return &framework.PathOperation{Callback: cb, Responses: responses}
}

// operationAs is an operation whose operationId has its own verb, and its
// own suffix when not "" (else the path's): keybroker-<verb>-<suffix>.
func operationAs(verb, suffix string, cb framework.OperationFunc, responses map[int][]framework.Response) *framework.PathOperation {
	op := operation(cb, responses)
	op.DisplayAttrs = &framework.DisplayAttributes{OperationVerb: verb, OperationSuffix: suffix}
	return op
}

// answers is a 200 answer with these fields.
func answers(fields map[string]*framework.FieldSchema) map[int][]framework.Response {
	return map[int][]framework.Response{http.StatusOK: {{Description: "OK", Fields: fields}}}
}

// noContent is the answer of an operation that returns nothing on success.
func noContent() map[int][]framework.Response {
	return map[int][]framework.Response{http.StatusNoContent: {{Description: "No content."}}}
}

// listAnswer is the answer of a list: the names in keys, and with an info
// description, key_info for each of them.
func listAnswer(what, info string) map[int][]framework.Response {
	fields := map[string]*framework.FieldSchema{"keys": out(framework.TypeStringSlice, what)}
	if info != "" {
		fields["key_info"] = out(framework.TypeMap, info)
	}
	return answers(fields)
}

// out is a response field.
func out(t framework.FieldType, description string) *framework.FieldSchema {
	return &framework.FieldSchema{Type: t, Description: description}
}

// secretOut is a response field that carries a credential.
func secretOut(description, name string) *framework.FieldSchema {
	f := out(framework.TypeString, description)
	f.DisplayAttrs = &framework.DisplayAttributes{Name: name, Sensitive: true}
	return f
}

// withAllowed sets the values a field may have and returns it.
func withAllowed(f *framework.FieldSchema, values ...interface{}) *framework.FieldSchema {
	f.AllowedValues = values
	return f
}

// merged is the union of field sets; a later set's field wins.
func merged(sets ...map[string]*framework.FieldSchema) map[string]*framework.FieldSchema {
	m := map[string]*framework.FieldSchema{}
	for _, s := range sets {
		for k, v := range s {
			m[k] = v
		}
	}
	return m
}

// withoutFields is m without the fields named.
func withoutFields(m map[string]*framework.FieldSchema, names ...string) map[string]*framework.FieldSchema {
	out := maps.Clone(m)
	for _, n := range names {
		delete(out, n)
	}
	return out
}

// pick is the fields of m named.
func pick(m map[string]*framework.FieldSchema, names ...string) map[string]*framework.FieldSchema {
	p := make(map[string]*framework.FieldSchema, len(names))
	for _, n := range names {
		f, ok := m[n]
		if !ok {
			panic("keybroker: no field " + n + " to pick")
		}
		p[n] = f
	}
	return p
}

// echoed are the request fields, but those named in except, as a read
// answers them: durations in seconds, lists as arrays, key=value pairs as
// an object.
func echoed(request map[string]*framework.FieldSchema, except ...string) map[string]*framework.FieldSchema {
	m := make(map[string]*framework.FieldSchema, len(request))
	for name, f := range request {
		if slices.Contains(except, name) {
			continue
		}
		r := &framework.FieldSchema{Type: f.Type, Description: f.Description, AllowedValues: f.AllowedValues}
		if f.DisplayAttrs != nil && (f.DisplayAttrs.Name != "" || f.DisplayAttrs.Sensitive) {
			r.DisplayAttrs = &framework.DisplayAttributes{Name: f.DisplayAttrs.Name, Sensitive: f.DisplayAttrs.Sensitive}
		}
		switch f.Type {
		case framework.TypeDurationSecond:
			r.Type, r.Description = framework.TypeInt64, strings.TrimSpace(f.Description)+" In seconds."
		case framework.TypeCommaStringSlice:
			r.Type = framework.TypeStringSlice
		case framework.TypeKVPairs:
			r.Type = framework.TypeMap
		}
		m[name] = r
	}
	return m
}
