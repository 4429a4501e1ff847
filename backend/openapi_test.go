package backend

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Every operation of every path names itself for the OpenAPI document
// (operationId keybroker-<verb>-<suffix>, never one derived from the
// regexp) and declares its answers: 200 with the fields it returns, or 204.
func TestOpenAPIDeclarations(t *testing.T) {
	b := newBackend()
	want := 0
	for _, p := range b.Paths {
		if p.DisplayAttrs == nil {
			t.Errorf("path %q has no DisplayAttrs", p.Pattern)
			continue
		}
		for op, h := range p.Operations {
			props := h.Properties()
			attrs := props.DisplayAttrs
			if attrs == nil {
				attrs = &framework.DisplayAttributes{}
			}
			prefix := firstSet(attrs.OperationPrefix, p.DisplayAttrs.OperationPrefix)
			verb := firstSet(attrs.OperationVerb, p.DisplayAttrs.OperationVerb)
			suffix := firstSet(attrs.OperationSuffix, p.DisplayAttrs.OperationSuffix)
			if prefix != operationPrefixKeybroker {
				t.Errorf("%s %s: operation prefix %q, want %q", op, p.Pattern, prefix, operationPrefixKeybroker)
			}
			if verb == "" && suffix == "" {
				t.Errorf("%s %s: neither OperationVerb nor OperationSuffix: the operationId would be made from the regexp", op, p.Pattern)
			}
			if len(props.Responses) == 0 {
				t.Errorf("%s %s: no Responses", op, p.Pattern)
			}
			for code, rs := range props.Responses {
				switch {
				case code != http.StatusOK && code != http.StatusNoContent:
					t.Errorf("%s %s: response %d: only 200 and 204 are answered on success", op, p.Pattern, code)
				case len(rs) == 0 || strings.TrimSpace(rs[0].Description) == "":
					t.Errorf("%s %s: response %d has no description", op, p.Pattern, code)
				case code == http.StatusOK && len(rs[0].Fields) == 0:
					t.Errorf("%s %s: a 200 without fields: say what it answers, or declare 204", op, p.Pattern)
				case code == http.StatusNoContent && len(rs[0].Fields) > 0:
					t.Errorf("%s %s: a 204 with fields", op, p.Pattern)
				}
				for _, r := range rs {
					for name, f := range r.Fields {
						if f.Type == framework.TypeInvalid || strings.TrimSpace(f.Description) == "" {
							t.Errorf("%s %s: response field %q has no type or no description", op, p.Pattern, name)
						}
					}
				}
			}
			// Create is documented as Update (one POST): they must answer alike.
			if op == logical.CreateOperation {
				if u := p.Operations[logical.UpdateOperation]; u == nil || fmt.Sprint(u.Properties().Responses) != fmt.Sprint(props.Responses) {
					t.Errorf("%s: create and update answer differently, but OpenAPI shows update only", p.Pattern)
				}
				continue
			}
			want++
		}
	}

	// The document Vault asks the plugin for: every operation is in it,
	// with a unique operationId.
	doc := openAPIDocument(t)
	ids := map[string]string{}
	for path, pi := range doc.Paths {
		n := 0
		for method, op := range map[string]*framework.OASOperation{"get": pi.Get, "post": pi.Post, "delete": pi.Delete, "patch": pi.Patch} {
			if op == nil {
				continue
			}
			n++
			id := op.OperationID
			if !strings.HasPrefix(id, operationPrefixKeybroker+"-") {
				t.Errorf("%s %s: operationId %q", method, path, id)
			}
			if other, dup := ids[id]; dup {
				t.Errorf("operationId %q of %s %s is also %s's", id, method, path, other)
			}
			ids[id] = method + " " + path
		}
		if n == 0 {
			t.Errorf("OpenAPI path %s has no operation: its pattern could not be expanded", path)
		}
	}
	if len(ids) != want {
		t.Errorf("the OpenAPI document has %d operations, the paths %d", len(ids), want)
	}
}

// Vault gets an external plugin's document as JSON and decodes it with
// framework.NewOASDocumentFromMap, which drops "$ref": every request body
// and answer must come through it with its fields.
func TestOpenAPIDocumentSurvivesPluginTransport(t *testing.T) {
	doc := openAPIDocument(t)
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]interface{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	got, err := framework.NewOASDocumentFromMap(m)
	if err != nil {
		t.Fatal(err)
	}
	schemas := 0
	for path, pi := range doc.Paths {
		for method, op := range map[string][2]*framework.OASOperation{
			"get": {pi.Get, got.Paths[path].Get}, "post": {pi.Post, got.Paths[path].Post}, "delete": {pi.Delete, got.Paths[path].Delete},
		} {
			if op[0] == nil {
				continue
			}
			contents := map[string][2]framework.OASContent{}
			if op[0].RequestBody != nil {
				contents["request body"] = [2]framework.OASContent{op[0].RequestBody.Content, op[1].RequestBody.Content}
			}
			for code, r := range op[0].Responses {
				contents[fmt.Sprint(code)] = [2]framework.OASContent{r.Content, op[1].Responses[code].Content}
			}
			for what, c := range contents {
				want, have := c[0]["application/json"], c[1]["application/json"]
				if want == nil {
					continue
				}
				schemas++
				if want.Schema.Ref != "" || len(want.Schema.Properties) == 0 {
					t.Errorf("%s %s %s: schema %q, not written out", method, path, what, want.Schema.Ref)
					continue
				}
				if have == nil || have.Schema == nil || fmt.Sprint(sortedKeys(toAny(have.Schema.Properties))) != fmt.Sprint(sortedKeys(toAny(want.Schema.Properties))) {
					t.Errorf("%s %s %s: fields lost on the way to Vault", method, path, what)
				}
			}
		}
	}
	if schemas == 0 {
		t.Fatal("no request or response schema in the document")
	}
}

func toAny(m map[string]*framework.OASSchema) map[string]interface{} {
	a := make(map[string]interface{}, len(m))
	for k, v := range m {
		a[k] = v
	}
	return a
}

func firstSet(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// openAPIDocument is the backend's OpenAPI document, as Vault's
// sys/internal/specs/openapi asks the plugin for it.
func openAPIDocument(t *testing.T) *framework.OASDocument {
	t.Helper()
	e := newTestEnv(t)
	e.b.sys.(*logical.StaticSystemView).PluginEnvironment = &logical.PluginEnvironment{VaultVersion: "test"}
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.HelpOperation, Storage: e.storage})
	if err != nil {
		t.Fatal(err)
	}
	doc, ok := resp.Data["openapi"].(*framework.OASDocument)
	if !ok {
		t.Fatalf("root help has no OpenAPI document: %#v", resp.Data)
	}
	return doc
}

// checkAnswers makes every answer e's backend gives, to whatever request
// of whichever test, fail the test unless its operation's Responses declare
// it: the status (200 for data, 204 for none) and each field, with a value
// of the declared type. Warnings are not data; a raw JSON answer (jwks,
// .well-known) is checked by its document's top-level keys.
func (e *testEnv) checkAnswers() {
	var ended atomic.Bool // handlers of long polls may outlive the test
	e.t.Cleanup(func() { ended.Store(true) })
	var reported sync.Map // each problem once, not once per request
	for _, p := range e.b.Paths {
		for op, h := range p.Operations {
			po := h.(*framework.PathOperation)
			cb, where := po.Callback, answerKey(op, p.Pattern)
			po.Callback = func(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
				resp, err := cb(ctx, req, d)
				if err != nil || ended.Load() {
					return resp, err
				}
				for _, problem := range answerProblems(op, po.Responses, resp, func(code int, field string) {
					answered.Store(fmt.Sprintf("%s %d %s", where, code, field), true)
				}) {
					if _, dup := reported.LoadOrStore(where+problem, true); !dup {
						e.t.Errorf("%s %s: %s", op, req.Path, problem)
					}
				}
				return resp, err
			}
		}
	}
}

// answered holds "<operation> <pattern> <status> <field>" for each field
// some test got answered, for TestMain.
var answered sync.Map

func answerKey(op logical.Operation, pattern string) string {
	return string(op) + " " + strings.TrimSuffix(strings.TrimPrefix(pattern, "^"), "$")
}

// TestMain also checks, after a run of the whole suite, the other way
// round: every declared field is answered by some test, so no field stays
// documented after its handler stopped answering it.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if code != 0 || flag.Lookup("test.run").Value.String() != "" || flag.Lookup("test.skip").Value.String() != "" {
		os.Exit(code)
	}
	var never []string
	for _, p := range newBackend().Paths {
		for op, h := range p.Operations {
			for status, rs := range h.Properties().Responses {
				for field := range rs[0].Fields {
					if k := fmt.Sprintf("%s %d %s", answerKey(op, p.Pattern), status, field); !isAnswered(k) {
						never = append(never, k)
					}
				}
			}
		}
	}
	if len(never) > 0 {
		sort.Strings(never)
		fmt.Fprintf(os.Stderr, "FAIL: declared in Responses but answered to no test (a test that gets it, or drop the declaration):\n  %s\n", strings.Join(never, "\n  "))
		os.Exit(1)
	}
	os.Exit(code)
}

func isAnswered(k string) bool {
	_, ok := answered.Load(k)
	return ok
}

// rawHTTPKeys are the keys of a raw answer (logical.HTTPRawBody), which
// Vault turns into the HTTP response itself.
var rawHTTPKeys = []string{logical.HTTPStatusCode, logical.HTTPRawBody, logical.HTTPContentType, logical.HTTPCacheControlHeader}

// answerProblems says what of resp its operation's Responses do not
// declare, and tells seen each status and field it answers.
func answerProblems(op logical.Operation, responses map[int][]framework.Response, resp *logical.Response, seen func(code int, field string)) []string {
	if resp != nil && resp.IsError() {
		return nil
	}
	if resp == nil {
		// Vault answers a read or list of nothing with 404, anything else with 204.
		if op == logical.ReadOperation || op == logical.ListOperation {
			return nil
		}
		if len(responses[http.StatusNoContent]) == 0 {
			return []string{"answered nothing (204), which its Responses do not declare"}
		}
		return nil
	}
	code := http.StatusOK
	var data map[string]interface{}
	if raw, ok := resp.Data[logical.HTTPRawBody]; ok {
		var problems []string
		for k := range resp.Data {
			if !slices.Contains(rawHTTPKeys, k) {
				problems = append(problems, fmt.Sprintf("raw answer has data key %q besides the HTTP ones", k))
			}
		}
		if c, ok := resp.Data[logical.HTTPStatusCode].(int); ok {
			code = c
		}
		body, _ := raw.([]byte)
		if err := json.Unmarshal(body, &data); err != nil {
			return append(problems, fmt.Sprintf("raw body is not a JSON object: %v", err))
		}
		if problems != nil {
			return problems
		}
	} else {
		b, err := json.Marshal(resp.Data)
		if err != nil {
			return []string{fmt.Sprintf("data does not encode as JSON: %v", err)}
		}
		if err := json.Unmarshal(b, &data); err != nil {
			return []string{err.Error()}
		}
	}
	rs := responses[code]
	if len(rs) == 0 {
		return []string{fmt.Sprintf("answered %d, which its Responses do not declare (keys %v)", code, sortedKeys(data))}
	}
	var problems []string
	for k, v := range data {
		f := rs[0].Fields[k]
		if f == nil {
			problems = append(problems, fmt.Sprintf("answers %q, which its %d response does not declare", k, code))
			continue
		}
		if msg := valueProblem(f, v); msg != "" {
			problems = append(problems, fmt.Sprintf("field %q: %s", k, msg))
			continue
		}
		seen(code, k)
	}
	sort.Strings(problems)
	return problems
}

// valueProblem says how v, decoded from JSON, is not of f's type. null is
// taken for objects and arrays only.
func valueProblem(f *framework.FieldSchema, v interface{}) string {
	ok := false
	switch f.Type {
	case framework.TypeString, framework.TypeNameString, framework.TypeLowerCaseString:
		_, ok = v.(string)
	case framework.TypeTime:
		s, _ := v.(string)
		_, err := time.Parse(time.RFC3339Nano, s)
		ok = err == nil
	case framework.TypeInt, framework.TypeInt64:
		n, isNum := v.(float64)
		ok = isNum && n == math.Trunc(n)
	case framework.TypeFloat:
		_, ok = v.(float64)
	case framework.TypeBool:
		_, ok = v.(bool)
	case framework.TypeMap, framework.TypeKVPairs:
		_, ok = v.(map[string]interface{})
		ok = ok || v == nil
	case framework.TypeSlice:
		_, ok = v.([]interface{})
		ok = ok || v == nil
	case framework.TypeStringSlice, framework.TypeCommaStringSlice:
		items, isList := v.([]interface{})
		ok = isList || v == nil
		for _, it := range items {
			if _, isString := it.(string); !isString {
				ok = false
			}
		}
	default:
		return fmt.Sprintf("declared with type %s, which this check does not know", f.Type)
	}
	if !ok {
		return fmt.Sprintf("%#v is not a %s", v, f.Type)
	}
	if len(f.AllowedValues) > 0 && !slices.Contains(f.AllowedValues, v) {
		return fmt.Sprintf("%#v is none of the declared values %v", v, f.AllowedValues)
	}
	return ""
}

func sortedKeys(m map[string]interface{}) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// The check finds what it should: an undeclared field, a field of another
// type, an answer where 204 is declared, a raw document's undeclared key.
func TestAnswerProblems(t *testing.T) {
	declared := answers(map[string]*framework.FieldSchema{
		"n":    out(framework.TypeInt64, "n"),
		"at":   out(framework.TypeTime, "at"),
		"list": out(framework.TypeStringSlice, "list"),
		"kind": withAllowed(out(framework.TypeString, "kind"), "a", "b"),
	})
	ok := &logical.Response{Data: map[string]interface{}{"n": int64(3), "at": "2026-01-02T03:04:05Z", "list": []string{"x"}, "kind": "a"}}
	ok.AddWarning("warnings are not data")
	for _, tc := range []struct {
		name      string
		op        logical.Operation
		responses map[int][]framework.Response
		resp      *logical.Response
		want      string
	}{
		{"declared", logical.UpdateOperation, declared, ok, ""},
		{"undeclared field", logical.UpdateOperation, declared, &logical.Response{Data: map[string]interface{}{"n": 1, "extra": true}}, `"extra"`},
		{"wrong type", logical.ReadOperation, declared, &logical.Response{Data: map[string]interface{}{"n": "3"}}, "is not a"},
		{"not a time", logical.ReadOperation, declared, &logical.Response{Data: map[string]interface{}{"at": "yesterday"}}, "is not a"},
		{"not a string list", logical.ReadOperation, declared, &logical.Response{Data: map[string]interface{}{"list": []int{1}}}, "is not a"},
		{"not an allowed value", logical.ReadOperation, declared, &logical.Response{Data: map[string]interface{}{"kind": "c"}}, "none of the declared values"},
		{"data where 204 is declared", logical.DeleteOperation, noContent(), &logical.Response{Data: map[string]interface{}{"n": 1}}, "answered 200"},
		{"nothing where 200 is declared", logical.UpdateOperation, declared, nil, "answered nothing"},
		{"read of nothing is a 404", logical.ReadOperation, declared, nil, ""},
		{"error", logical.UpdateOperation, declared, logical.ErrorResponse("no"), ""},
		{"raw document", logical.ReadOperation, declared, rawJSON([]byte(`{"n":1}`), jwksMaxAge), ""},
		{"raw document's undeclared key", logical.ReadOperation, declared, rawJSON([]byte(`{"n":1,"issuer":"x"}`), jwksMaxAge), `"issuer"`},
	} {
		got := strings.Join(answerProblems(tc.op, tc.responses, tc.resp, func(int, string) {}), "; ")
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: problems %q, want %q", tc.name, got, tc.want)
		}
	}
}
