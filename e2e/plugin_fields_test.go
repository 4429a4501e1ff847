package e2e

import (
	"strings"
	"testing"

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
