package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// probe is one request a persona makes, and whether its policy grants it.
type probe struct {
	op, path string
	data     map[string]interface{}
	granted  bool
}

// do sends a probe's request and answers its HTTP status (200 for a
// success, 404 included).
func (p probe) do(t *testing.T, c *api.Client) (*api.Secret, int) {
	t.Helper()
	var s *api.Secret
	var err error
	switch p.op {
	case "write":
		s, err = c.Logical().WriteWithContext(ctxT(t), p.path, p.data)
	case "read":
		s, err = c.Logical().ReadWithContext(ctxT(t), p.path)
	case "list":
		s, err = c.Logical().ListWithContext(ctxT(t), p.path)
	case "delete":
		s, err = c.Logical().DeleteWithContext(ctxT(t), p.path)
	default:
		t.Fatalf("probe op %q", p.op)
	}
	return s, statusOf(err)
}

// Each persona policy of examples/policies/, written to a real Vault: what
// it grants gets past Vault's ACL, what it does not is refused by it (403),
// a key or approval of another role named under the granted role is
// refused by the plugin (400), and nothing of another role changes.
func TestPersonaPolicies(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/billing", map[string]interface{}{"scopes": "read", "audiences": "svc", "ttl": "1h", "budget": 1000})
	write(t, root, "keybroker/roles/admin", map[string]interface{}{"scopes": "admin", "ttl": "1h"})
	for _, r := range []string{"agent", "other"} {
		write(t, root, "keybroker/roles/"+r, map[string]interface{}{
			"scopes": "read,exec:sandbox", "default_scopes": "read", "audiences": "svc", "approval_scopes": "exec:sandbox",
		})
	}
	billID := write(t, root, "keybroker/keys/billing", map[string]interface{}{"name": "b"}).Data["key_id"].(string)
	adm := write(t, root, "keybroker/keys/admin", map[string]interface{}{"name": "a"})
	admID, admKey := adm.Data["key_id"].(string), adm.Data["key"].(string)
	requester, err := v.LoginAs(ctxT(t), "requester", `path "keybroker/token/+" { capabilities = ["update"] }`)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(role string) string {
		return write(t, requester, "keybroker/token/"+role, map[string]interface{}{"scopes": "read,exec:sandbox"}).Data["request_id"].(string)
	}
	agentReq, otherReq := ask("agent"), ask("other")

	login := func(persona string) *api.Client {
		t.Helper()
		c, err := v.LoginAs(ctxT(t), persona, readExample(t, "policies/"+persona+".hcl"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	check := func(persona string, c *api.Client, probes []probe) {
		t.Helper()
		for _, p := range probes {
			_, status := p.do(t, c)
			// Granted: it works (2xx); refused: Vault's ACL says so (403).
			if ok := status >= 200 && status < 300; (p.granted && !ok) || (!p.granted && status != http.StatusForbidden) {
				t.Errorf("%s: %s %s: %d, want granted=%v", persona, p.op, p.path, status, p.granted)
			}
		}
	}
	admin := "keybroker/keys/admin/id/" + admID
	bill := "keybroker/keys/billing/id/" + billID

	check("app", login("app"), []probe{
		{"write", "keybroker/keys/billing", map[string]interface{}{"name": "from-app"}, true},
		{"write", "keybroker/token/billing", nil, true},
		{"write", "keybroker/keys/admin", map[string]interface{}{"name": "x"}, false},
		{"read", "keybroker/token/billing", nil, false},
		{"write", bill + "/rotate", nil, false},
		{"delete", bill, nil, false},
		{"list", "keybroker/keys/id", nil, false},
		{"read", "keybroker/roles/billing", nil, false},
	})

	op := login("key-operator")
	check("key-operator", op, []probe{
		{"list", "keybroker/keys/billing/id", nil, true},
		{"read", bill, nil, true},
		{"write", bill + "/suspend", nil, true},
		{"write", bill + "/resume", nil, true},
		{"write", "keybroker/roles/billing/suspend", nil, true},
		{"write", "keybroker/roles/billing/resume", nil, true},
		{"write", admin + "/rotate", map[string]interface{}{"grace": "0s"}, false},
		{"write", admin + "/suspend", nil, false},
		{"delete", admin, nil, false},
		{"read", "keybroker/keys/id/" + admID, nil, false},
		{"list", "keybroker/keys/id", nil, false},
		{"write", "keybroker/keys/billing", map[string]interface{}{"name": "x"}, false},
		{"write", "keybroker/roles/billing", map[string]interface{}{"scopes": "admin"}, false},
		{"write", "keybroker/budget/billing/" + billID, map[string]interface{}{"budget": 500}, true},
		{"write", "keybroker/budget/admin/" + admID, map[string]interface{}{"budget": 1}, false},
	})
	// The operator's grant names billing: another role's key named under
	// billing gets past the ACL and is refused by the plugin, unchanged.
	for _, p := range []probe{
		{"write", "keybroker/keys/billing/id/" + admID + "/rotate", map[string]interface{}{"grace": "0s"}, true},
		{"write", "keybroker/keys/billing/id/" + admID + "/suspend", nil, true},
		{"delete", "keybroker/keys/billing/id/" + admID, nil, true},
	} {
		if _, status := p.do(t, op); status != http.StatusBadRequest {
			t.Errorf("key-operator: %s %s: %d, want 400 (not a billing key)", p.op, p.path, status)
		}
	}
	if valid, reason, _ := verify(t, root, admKey, "127.0.0.1"); !valid {
		t.Fatalf("the admin key after billing's operator tried it: %s", reason)
	}
	if d := read(t, root, "keybroker/keys/id/"+admID, nil).Data; d["suspended_at"] != nil || d["replaced_by"] != nil || d["revoked"] != false {
		t.Fatalf("the admin key changed: %#v", d)
	}
	// What the grant covers works: a rotation answers the successor.
	rot, status := probe{"write", bill + "/rotate", map[string]interface{}{"grace": "1m"}, true}.do(t, op)
	if status != http.StatusOK || rot.Data["replaces"] != billID || !strings.HasPrefix(rot.LeaseID, "keybroker/keys/billing/id/"+billID+"/rotate/") {
		t.Fatalf("operator's rotation: %d %#v lease %q", status, rot, rot.LeaseID)
	}

	appr := login("approver")
	check("approver", appr, []probe{
		{"list", "keybroker/approvals/agent", nil, true},
		{"read", "keybroker/approvals/agent/" + agentReq, nil, true},
		{"list", "keybroker/approvals", nil, false},
		{"list", "keybroker/approvals/other", nil, false},
		{"read", "keybroker/approvals/other/" + otherReq, nil, false},
		{"write", "keybroker/approvals/other/" + otherReq, map[string]interface{}{"action": "approve"}, false},
		{"write", "keybroker/token/agent", nil, false},
	})
	if d := write(t, appr, "keybroker/approvals/agent/"+agentReq, map[string]interface{}{"action": "approve"}).Data; d["state"] != "approved" {
		t.Fatalf("approver's approval: %#v", d)
	}
	// agent's approver names another role's request under agent: no such
	// request there.
	if _, status := (probe{"write", "keybroker/approvals/agent/" + otherReq, map[string]interface{}{"action": "approve"}, true}).do(t, appr); status != http.StatusBadRequest {
		t.Errorf("approver: other's request under agent: %d, want 400", status)
	}
	if d := read(t, root, "keybroker/approvals/other/"+otherReq, nil).Data; d["state"] != "pending" || len(d["approvals"].([]interface{})) != 0 {
		t.Fatalf("other's request after agent's approver tried it: %#v", d)
	}

	check("sidecar", login("sidecar"), []probe{
		{"read", "keybroker/revocations", nil, true},
		{"read", "keybroker/key-records/snapshot", nil, true},
		{"read", "keybroker/key-records", map[string]interface{}{}, true},
		{"write", "keybroker/verify", map[string]interface{}{"key": admKey, "remote_addr": "127.0.0.1"}, true},
		{"write", "keybroker/budget/reserve", map[string]interface{}{"id": billID, "units": 1}, true},
		{"write", "keybroker/keys/billing", map[string]interface{}{"name": "x"}, false},
		{"read", "keybroker/token/billing", nil, false},
		{"write", bill + "/rotate", nil, false},
		{"read", "keybroker/keys/id/" + billID, nil, false},
		{"read", "keybroker/roles/billing", nil, false},
		{"write", "keybroker/revoke", map[string]interface{}{"key": admKey}, false},
	})

	check("auditor", login("auditor"), []probe{
		{"list", "keybroker/roles", nil, true},
		{"read", "keybroker/roles/billing", nil, true},
		{"list", "keybroker/keys/id", nil, true},
		{"read", "keybroker/keys/id/" + admID, nil, true},
		{"list", "keybroker/approvals", nil, true},
		{"list", "keybroker/approvals/other", nil, true},
		{"read", "keybroker/approvals/other/" + otherReq, nil, true},
		{"read", "keybroker/budget/" + billID, nil, true},
		{"read", "keybroker/revocations", nil, true},
		{"read", "keybroker/token/billing", nil, false},
		{"write", "keybroker/keys/billing", map[string]interface{}{"name": "x"}, false},
		{"delete", bill, nil, false},
		{"write", admin + "/rotate", nil, false},
		{"write", "keybroker/approvals/other/" + otherReq, map[string]interface{}{"action": "deny"}, false},
		{"write", "keybroker/roles/billing", map[string]interface{}{"scopes": "read"}, false},
		{"write", "keybroker/revoke", map[string]interface{}{"key": admKey}, false},
		{"write", "keybroker/budget/billing/" + billID, map[string]interface{}{"budget": 1}, false},
	})
}
