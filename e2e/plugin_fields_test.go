package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/internal/vaultserver"
)

// The sidecar's narrow policy reads keybroker/revocations without "after",
// in a loop (this once panicked the plugin process, failing every mount's
// requests), and sends fields of the wrong type: each is answered, and the
// plugin keeps answering.
func TestPluginSurvivesHostileReads(t *testing.T) {
	v := vaultserver.StartT(t)
	policy := readExample(t, "policies/sidecar.hcl")
	c, err := v.LoginAs(ctxT(t), "keybroker-sidecar", policy)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		s := read(t, c, "keybroker/revocations", nil)
		if _, ok := s.Data["revocations"]; !ok {
			t.Fatalf("read %d: %v", i, s.Data)
		}
	}
	for _, bad := range []map[string][]string{{"after": {"abc"}}, {"after": {"-1"}}, {"after": {"99999999999999999999999"}}, {"afterr": {"0"}}} {
		if _, err := c.Logical().ReadWithDataWithContext(ctxT(t), "keybroker/revocations", bad); statusOf(err) != 400 {
			t.Fatalf("revocations %v: %v, want 400", bad, err)
		}
	}
	// The key-record feed, through the same policy: answered, and every
	// hostile read a 400.
	for _, path := range []string{"keybroker/key-records", "keybroker/key-records/snapshot"} {
		if s := read(t, c, path, nil); s == nil || s.Data["epoch"] == "" {
			t.Fatalf("%s: %v", path, s)
		}
	}
	for _, bad := range []struct {
		path string
		q    map[string][]string
	}{
		{"keybroker/key-records", map[string][]string{"after": {"-5"}}},
		{"keybroker/key-records", map[string][]string{"after": {"1e99"}}},
		{"keybroker/key-records", map[string][]string{"wait": {"3600"}}},
		{"keybroker/key-records", map[string][]string{"roles": {strings.Repeat("r,", 500)}}},
		{"keybroker/key-records", map[string][]string{"epoch": {"x"}, "cursor": {"1"}}},
		{"keybroker/key-records/snapshot", map[string][]string{"after_id": {"../../keys/x"}}},
		{"keybroker/key-records/snapshot", map[string][]string{"after_id": {strings.Repeat("A", 100000)}}},
		{"keybroker/key-records/snapshot", map[string][]string{"tenants": {"\x00"}}},
	} {
		if _, err := c.Logical().ReadWithDataWithContext(ctxT(t), bad.path, bad.q); statusOf(err) != 400 {
			t.Fatalf("%s %v: %v, want 400", bad.path, bad.q, err)
		}
	}
	for _, bad := range []map[string]interface{}{{"credential": map[string]interface{}{"a": 1}}, {"credential": "x", "scopes": []interface{}{[]interface{}{1}}}, {"id": "x", "units": "lots"}} {
		path := "keybroker/verify"
		if _, ok := bad["units"]; ok {
			path = "keybroker/budget/reserve"
		}
		if _, err := c.Logical().WriteWithContext(ctxT(t), path, bad); statusOf(err) != 400 {
			t.Fatalf("%s %v: %v, want 400", path, bad, err)
		}
	}
	s := write(t, c, "keybroker/verify", map[string]interface{}{"credential": "kb_garbage"})
	if s.Data["valid"] != false || s.Data["reason"] != "malformed" {
		t.Fatalf("after the hostile reads, verify answers %v", s.Data)
	}
}

// dpop_jwk as an HTTP body's JSON object, as a string holding one, from a
// file with the CLI's @ and in a JSON document on the CLI's stdin: each
// binds the key to the JWK's thumbprint. Anything else is a 400 naming
// dpop_jwk.
func TestDPoPJWKAsObjectOrString(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/dpop-forms", map[string]interface{}{"scopes": "read"})
	k := dpoptest.NewKey(t, "ES256")
	var object map[string]interface{}
	if err := json.Unmarshal(k.JWK, &object); err != nil {
		t.Fatal(err)
	}
	for name, jwk := range map[string]interface{}{"object": object, "string": string(k.JWK)} {
		s := write(t, root, "keybroker/keys/dpop-forms", map[string]interface{}{"name": name, "dpop_jwk": jwk})
		if s.Data["dpop_jkt"] != k.JKT {
			t.Fatalf("dpop_jwk as %s: bound to %v, want %s", name, s.Data["dpop_jkt"], k.JKT)
		}
	}
	dir := t.TempDir()
	jwkFile := filepath.Join(dir, "jwk.json")
	if err := os.WriteFile(jwkFile, k.JWK, 0o600); err != nil {
		t.Fatal(err)
	}
	stdin := fmt.Sprintf(`{"name": "stdin", "dpop_jwk": %s}`, k.JWK)
	for name, args := range map[string][]string{
		"@file": {"name=file", "dpop_jwk=@" + jwkFile},
		"stdin": {"-"},
	} {
		if got := vaultCLI(t, v, stdin, append([]string{"write", "-field=dpop_jkt", "keybroker/keys/dpop-forms"}, args...)...); got != k.JKT {
			t.Fatalf("vault write with dpop_jwk from %s: %q, want %s", name, got, k.JKT)
		}
	}

	private, _ := json.Marshal(json.RawMessage(k.PrivateJWK(t)))
	var privateObject map[string]interface{}
	_ = json.Unmarshal(private, &privateObject)
	for _, tt := range []struct {
		name string
		jwk  interface{}
		want string
	}{
		{"a number", 5, "dpop_jwk must be a public JWK: a JSON object, or a string holding one; got a number"},
		{"a list", []interface{}{object}, "got a list"},
		{"true", true, "got true or false"},
		{"a private JWK", privateObject, "private"},
		{"a private JWK's text", string(private), "private"},
		{"a huge object", map[string]interface{}{"kty": "EC", "x": strings.Repeat("A", 1<<20)}, "dpop_jwk must be a public JWK"},
		{"an object that is no JWK", map[string]interface{}{"a": 1}, "dpop_jwk"},
	} {
		_, err := root.Logical().WriteWithContext(ctxT(t), "keybroker/keys/dpop-forms", map[string]interface{}{"name": "bad", "dpop_jwk": tt.jwk})
		if msg := errorText(err); statusOf(err) != 400 || !strings.Contains(msg, tt.want) || len(msg) > 500 {
			t.Errorf("dpop_jwk as %s: %d %q, want a 400 saying %q", tt.name, statusOf(err), msg, tt.want)
		}
	}
}

// Through a real Vault, a field of the wrong kind on each write path (an
// existence-checked one, roles, among them) is a 400 that names the field
// and what it takes, with nothing of Go in it.
func TestPluginFieldsOfTheWrongType(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/typed", map[string]interface{}{"scopes": "read", "audiences": "api"})
	object := map[string]interface{}{"a": 1}
	for _, tt := range []struct {
		path  string
		field string
		value interface{}
		want  string
	}{
		{"keybroker/keys/typed", "name", object, "name must be a string; got an object"},
		{"keybroker/keys/typed", "ttl", object, "ttl must be a duration"},
		{"keybroker/keys/typed", "ttl", "soon", `ttl must be a duration of zero or more: seconds, or a string such as "90s" or "1h"; got "soon"`},
		{"keybroker/keys/typed", "scopes", object, "scopes must be a list of strings, or one comma-separated string; got an object"},
		{"keybroker/keys/typed", "metadata", "no-pairs", `metadata must be key=value pairs`},
		{"keybroker/keys/typed", "budget", []interface{}{1, 2}, "budget must be a whole number; got a list"},
		{"keybroker/keys/typed", "name", true, "name must be a string; got true or false"},
		{"keybroker/token/typed", "audience", []interface{}{[]interface{}{1}}, "audience must be a string; got a list"},
		{"keybroker/roles/typed", "budget", "lots", `budget must be a whole number; got "lots"`},
		{"keybroker/roles/typed", "require_dpop", "perhaps", `require_dpop must be true or false; got "perhaps"`},
		{"keybroker/roles/typed", "ttl", -5, "ttl must be a duration of zero or more"},
		{"keybroker/roles/new-typed", "scopes", object, "scopes must be a list of strings"},
		{"keybroker/tenants/typed", "budget", object, "budget must be a whole number; got an object"},
		{"keybroker/verify", "credential", object, "credential must be a string; got an object"},
		{"keybroker/budget/reserve", "units", "lots", `units must be a whole number; got "lots"`},
		{"keybroker/config", "verification_ttl", object, "verification_ttl must be a duration"},
	} {
		_, err := root.Logical().WriteWithContext(ctxT(t), tt.path, map[string]interface{}{tt.field: tt.value})
		msg := errorText(err)
		if statusOf(err) != 400 || !strings.Contains(msg, tt.want) {
			t.Errorf("%s %s=%v: %d %q, want a 400 saying %q", tt.path, tt.field, tt.value, statusOf(err), msg, tt.want)
		}
		for _, bad := range []string{"unconvertible", "expected type", "error converting", "interface {}", "map[", "%!"} {
			if strings.Contains(msg, bad) {
				t.Errorf("%s %s: Go internals in %q", tt.path, tt.field, msg)
				break
			}
		}
	}
}

// errorText is a failed Vault request's error messages.
func errorText(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return strings.Join(re.Errors, "; ")
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

// vaultCLI runs the vault CLI against v with the root token, stdin as its
// input, and returns its trimmed output; it fails the test when it fails.
func vaultCLI(t *testing.T, v *vaultserver.Server, stdin string, args ...string) string {
	t.Helper()
	bin, err := vaultserver.FindVault()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctxT(t), bin, args...)
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+v.Addr, "VAULT_TOKEN="+v.RootToken)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vault %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}
