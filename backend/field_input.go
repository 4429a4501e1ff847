package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"sort"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Vault's framework converts every field before a handler runs, and a value
// it cannot convert is answered with mapstructure's words: "expected type
// 'string', got unconvertible type 'map[string]interface {}', value: ...",
// the value echoed whatever its size. checkFieldInput runs first, on the
// same conversions, and answers instead with what the field takes and what
// was sent, for every wrong field at once, never echoing a long value.
// It also decodes the fields that take JSON (jsonFields) in either form.

// jsonFields take a JSON object: as one (an HTTP body, `vault write -` with
// a JSON document) or as a string holding one (`vault write f=@file.json`).
// Their schema type is TypeString, which is what a handler reads: an object
// is encoded back to its JSON text here, before the framework sees it.
var jsonFields = map[string]string{
	"dpop_jwk": "a public JWK: a JSON object, or a string holding one",
}

// HandleExistenceCheck runs before Vault's ACL check, for every create or
// update. A path without an existence check (every one but roles and
// tenants) reads no field here, as the framework's own: a caller without a
// policy must get Vault's 403, not a 400 that tells a keybroker mount and
// its field names apart from nothing mounted. On roles and tenants, a
// field that does not convert (which the framework would answer with its
// own 400, before the ACL) is left to HandleRequest, after the ACL, by
// answering "does not exist": Vault then checks the create capability.
func (b *backend) HandleExistenceCheck(ctx context.Context, req *logical.Request) (bool, bool, error) {
	if p := b.Route(req.Path); p == nil || p.ExistenceCheck == nil {
		return b.Backend.HandleExistenceCheck(ctx, req)
	}
	if msg := b.checkFieldInput(req); msg != "" {
		return true, false, nil
	}
	return b.Backend.HandleExistenceCheck(ctx, req)
}

// checkFieldInput decodes req's JSON fields and checks every field the
// matched path's operation takes; it returns the message of a 400, "" when
// the fields convert (or no operation of ours will run, which the framework
// answers itself).
func (b *backend) checkFieldInput(req *logical.Request) string {
	if req == nil || len(req.Data) == 0 || req.Operation == logical.HelpOperation {
		return ""
	}
	p := b.Route(req.Path)
	if p == nil || p.Operations[req.Operation] == nil {
		return ""
	}
	var problems []string
	data, copied := req.Data, false
	for k, v := range req.Data {
		if _, ok := p.Fields[k]; !ok || jsonFields[k] == "" || isCapture(p, k) {
			continue
		}
		text, err := jsonText(k, v)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if _, isText := v.(string); !isText {
			// Copied before the first change: req.Data is the caller's.
			if !copied {
				data, copied = maps.Clone(req.Data), true
			}
			data[k] = text
		}
	}
	req.Data = data
	d := &framework.FieldData{Raw: data, Schema: p.Fields}
	for k := range data {
		if _, ok := p.Fields[k]; ok && jsonFields[k] == "" && !isCapture(p, k) {
			if err := checkFieldType(d, k); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	sort.Strings(problems)
	return strings.Join(problems, "; ")
}

// isCapture says whether field is a segment of p's pattern: the URL's value
// replaces a body's, which is therefore not checked.
func isCapture(p *framework.Path, field string) bool {
	return strings.Contains(p.Pattern, "(?P<"+field+">")
}

// maxJSONField bounds a JSON field's text: a public key is under 2 KiB
// (RSA 4096 is ~0.8), and the handler refuses over 8 KiB.
const maxJSONField = 16 << 10

// jsonText is a JSON field's value as the string a handler reads.
func jsonText(field string, v interface{}) (string, error) {
	switch t := v.(type) {
	case string:
		return t, nil
	case map[string]interface{}:
		text, err := json.Marshal(t)
		if err != nil || len(text) > maxJSONField {
			return "", fmt.Errorf("%s must be %s of at most %d KiB", field, jsonFields[field], maxJSONField>>10)
		}
		return string(text), nil
	}
	return "", fmt.Errorf("%s must be %s; got %s", field, jsonFields[field], kindOf(v))
}

// checkFieldType converts d's field as the framework will, and says
// what the field takes when it cannot. A JSON true or false is refused for
// a string field, which the framework would turn into "1" or "0".
func checkFieldType(d *framework.FieldData, field string) error {
	v, schema := d.Raw[field], d.Schema[field]
	_, _, err := d.GetOkErr(field)
	_, isBool := v.(bool)
	// The framework truncates a fraction for a whole-number field (a budget
	// of 0.5 became 0, a ttl of 1.5 one second): refused, as a bool for a
	// string field is, which it would turn into "1" or "0".
	if err == nil && !(isBool && isStringType(schema.Type)) && !(fractional(v) && wholeType(schema.Type)) {
		return nil
	}
	// A value is echoed only when it is short and the field is not a
	// string: a credential sent to the wrong field (a key is 65 characters
	// or more, its secret part 43) must not come back in an error, which
	// Vault's audit log and the caller's terminal keep.
	got := kindOf(v)
	switch n := v.(type) {
	case string:
		if len(n) <= maxEcho && !isStringType(schema.Type) {
			got = fmt.Sprintf("%q", n)
		}
	case json.Number, int, int64, float64:
		if text := fmt.Sprint(n); len(text) <= maxEcho {
			got = text
		}
	}
	return fmt.Errorf("%s must be %s; got %s", field, typeWords(schema.Type), got)
}

// fractional says whether v is a JSON number with a fractional part.
func fractional(v interface{}) bool {
	var f float64
	switch n := v.(type) {
	case float64:
		f = n
	case json.Number:
		var err error
		if f, err = n.Float64(); err != nil {
			return false
		}
	default:
		return false
	}
	return f != math.Trunc(f)
}

// wholeType says whether fields of type t hold whole numbers (a duration
// in seconds included).
func wholeType(t framework.FieldType) bool {
	switch t {
	case framework.TypeInt, framework.TypeInt64, framework.TypeDurationSecond, framework.TypeSignedDurationSecond:
		return true
	}
	return false
}

// maxEcho is the longest value an error repeats.
const maxEcho = 32

func isStringType(t framework.FieldType) bool {
	return t == framework.TypeString || t == framework.TypeLowerCaseString || t == framework.TypeNameString
}

// kindOf names a decoded JSON value's kind as a person would, not its Go
// type.
func kindOf(v interface{}) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "true or false"
	case json.Number, int, int64, float64, uint64:
		return "a number"
	case []interface{}, []string:
		return "a list"
	case map[string]interface{}:
		return "an object"
	default:
		return "a value of another kind"
	}
}

// typeWords says what a field of type t takes, in the terms of the request
// (JSON or the CLI's key=value).
func typeWords(t framework.FieldType) string {
	switch t {
	case framework.TypeBool:
		return "true or false"
	case framework.TypeInt, framework.TypeInt64:
		return "a whole number"
	case framework.TypeFloat:
		return "a number"
	case framework.TypeString, framework.TypeLowerCaseString:
		return "a string"
	case framework.TypeNameString:
		return "a name (letters, digits, '_', '-', '.')"
	case framework.TypeDurationSecond:
		return `a duration of zero or more: seconds, or a string such as "90s" or "1h"`
	case framework.TypeSignedDurationSecond:
		return `a duration: seconds, or a string such as "90s" or "-1h"`
	case framework.TypeTime:
		return "a time: RFC 3339, or seconds since 1970"
	case framework.TypeStringSlice, framework.TypeCommaStringSlice:
		return "a list of strings, or one comma-separated string"
	case framework.TypeCommaIntSlice:
		return "a list of whole numbers, or one comma-separated string of them"
	case framework.TypeKVPairs:
		return `key=value pairs: an object of strings, or a list of "key=value" strings`
	case framework.TypeMap:
		return "an object"
	case framework.TypeSlice:
		return "a list"
	}
	return "a value of type " + t.String()
}
