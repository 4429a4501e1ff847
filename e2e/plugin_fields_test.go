package e2e

import (
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// The sidecar's narrow policy reads keybroker/revocations without "after",
// in a loop (this once panicked the plugin process, failing every mount's
// requests), and sends fields of the wrong type: each is answered, and the
// plugin keeps answering.
func TestPluginSurvivesHostileReads(t *testing.T) {
	v := vaultserver.StartT(t)
	policy := readExample(t, "keybroker-sidecar-policy.hcl")
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
