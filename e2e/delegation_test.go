package e2e

import (
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// entityOf is the Vault entity a client's token belongs to.
func entityOf(t *testing.T, c *api.Client) string {
	t.Helper()
	self, err := c.Auth().Token().LookupSelfWithContext(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := self.Data["entity_id"].(string)
	if id == "" {
		t.Fatal("an AppRole login without an entity")
	}
	return id
}

// writeErr is a write that must fail with status and a message containing want.
func writeErr(t *testing.T, c *api.Client, path string, data map[string]interface{}, status int, want string) {
	t.Helper()
	_, err := c.Logical().WriteWithContext(ctxT(t), path, data)
	if statusOf(err) != status || !strings.Contains(err.Error(), want) {
		t.Fatalf("write %s: %v, want %d with %q", path, err, status, want)
	}
}

// A user agent's token goes to a tool agent, which exchanges it to act for
// the user, and on to a sub-tool: each hop narrows, the chain is nested in
// act and reaches the service, widening is refused, and revoking the first
// token kills every token derived from it at a running sidecar.
func TestDelegationChain(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/user", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "token_ttl": "10m"})
	write(t, root, "keybroker/roles/tool", map[string]interface{}{"scopes": "read,write", "audiences": "svc", "allowed_subject_roles": "user"})
	write(t, root, "keybroker/roles/subtool", map[string]interface{}{"scopes": "read", "audiences": "svc", "allowed_subject_roles": "tool", "max_delegation_depth": 2})
	// The role is a field of token/exchange: each agent's policy pins it.
	exchangePolicy := func(role string) string {
		return `path "keybroker/token/exchange" {
  capabilities = ["update"]
  allowed_parameters = { "role" = ["` + role + `"], "*" = [] }
}`
	}
	user, err := v.LoginAs(ctxT(t), "user-agent", `path "keybroker/token/user" { capabilities = ["update"] }`)
	if err != nil {
		t.Fatal(err)
	}
	tool, err := v.LoginAs(ctxT(t), "tool-agent", exchangePolicy("tool"))
	if err != nil {
		t.Fatal(err)
	}
	subtool, err := v.LoginAs(ctxT(t), "subtool-agent", exchangePolicy("subtool"))
	if err != nil {
		t.Fatal(err)
	}
	userID, toolID, subtoolID := entityOf(t, user), entityOf(t, tool), entityOf(t, subtool)
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.Routes = append(c.Routes,
			sidecar.RouteConfig{PathPrefix: "/read/delegated", Scopes: []string{"read"}, Delegation: "require"},
			sidecar.RouteConfig{PathPrefix: "/read/direct", Scopes: []string{"read"}, Delegation: "forbid"})
	})

	t0 := write(t, user, "keybroker/token/user", map[string]interface{}{"scopes": "read,write"})
	// Hop one: the tool agent acts for the user, with read only.
	t1 := write(t, tool, "keybroker/token/exchange", map[string]interface{}{
		"role": "tool", "subject_token": t0.Data["token"], "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "scopes": "read,write",
	})
	// Hop two: the sub-tool acts for the user through the tool agent.
	writeErr(t, subtool, "keybroker/token/exchange", map[string]interface{}{"role": "subtool", "subject_token": t1.Data["token"], "scopes": "read,write"},
		http.StatusBadRequest, "scopes write are not allowed by the role")
	writeErr(t, tool, "keybroker/token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"], "scopes": "admin"},
		http.StatusBadRequest, "scopes admin are not in the subject token")
	// The role field is a role name, never a storage path (it was a 500).
	writeErr(t, root, "keybroker/token/exchange", map[string]interface{}{"role": "../tool", "subject_token": t0.Data["token"]},
		http.StatusBadRequest, `role: "../tool" is not a role name`)
	// An agent cannot pick another delegating role than its policy's.
	writeErr(t, subtool, "keybroker/token/exchange", map[string]interface{}{"role": "tool", "subject_token": t0.Data["token"]},
		http.StatusForbidden, "permission denied")
	t2 := write(t, subtool, "keybroker/token/exchange", map[string]interface{}{"role": "subtool", "subject_token": t1.Data["token"]})
	if t2.Data["sub"] != userID || !slices.Equal(toStrings(t2.Data["actors"]), []string{subtoolID, toolID}) || !slices.Equal(toStrings(t2.Data["scopes"]), []string{"read"}) {
		t.Fatalf("second hop answer %#v (user %s tool %s subtool %s)", t2.Data, userID, toolID, subtoolID)
	}
	token := t2.Data["token"].(string)

	// jose reads the nested act claim as RFC 8693 section 4.1 writes it:
	// the current actor outermost.
	var checked struct {
		Payload struct {
			Sub      string                 `json:"sub"`
			ClientID string                 `json:"client_id"`
			Scope    string                 `json:"scope"`
			Act      map[string]interface{} `json:"act"`
		}
	}
	interop(t, &checked, "verify", v.Addr+"/v1/keybroker/.well-known/openid-configuration", token, "svc")
	inner, _ := checked.Payload.Act["act"].(map[string]interface{})
	if checked.Payload.Sub != userID || checked.Payload.ClientID != subtoolID || checked.Payload.Scope != "read" ||
		checked.Payload.Act["sub"] != subtoolID || inner == nil || inner["sub"] != toolID || inner["act"] != nil {
		t.Fatalf("jose read %+v", checked.Payload)
	}

	// The service sees the chain; routes require or forbid delegation.
	if r := call(t, e.proxy, "GET", "/read/delegated/x", bearer(token), ""); r.status != 200 || e.seen().Get("X-Keybroker-Actor") != subtoolID+", "+toolID || e.seen().Get("X-Keybroker-Subject") != userID {
		t.Fatalf("delegated token on a delegated route: %d, upstream saw %v", r.status, e.seen())
	}
	if r := call(t, e.proxy, "GET", "/read/direct/x", bearer(token), ""); r.status != 403 || r.header.Get("X-Keybroker-Reason") != "delegation_forbidden" {
		t.Fatalf("delegated token on a direct-only route: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}

	// Revoking the user's token ends both hops at the running sidecar.
	if r := call(t, e.proxy, "GET", "/read", bearer(t1.Data["token"].(string)), ""); r.status != 200 {
		t.Fatalf("first hop before revocation: %d", r.status)
	}
	if err := root.Sys().RevokeWithContext(ctxT(t), t0.LeaseID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, tok := range []string{t1.Data["token"].(string), token} {
		eventually(t, 2*time.Second, "a token derived from a revoked one still allowed after 2s", func() bool {
			return call(t, e.proxy, "GET", "/read", bearer(tok), "").header.Get("X-Keybroker-Reason") == "revoked"
		})
	}
	t.Logf("both derived tokens denied %s after the first was revoked", time.Since(start).Round(time.Millisecond))
	writeErr(t, subtool, "keybroker/token/exchange", map[string]interface{}{"role": "subtool", "subject_token": t1.Data["token"]},
		http.StatusBadRequest, "revoked")
}

// A risky scope waits for two distinct human approvers; the requester
// cannot approve itself, only it can redeem, once; a request expires, and a
// denial ends one. Every step is in Vault's audit log with the request id.
func TestApprovalForRiskyScopes(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/agent", map[string]interface{}{
		"scopes": "read,exec:sandbox", "default_scopes": "read", "audiences": "svc", "token_ttl": "30m",
		"approval_scopes": "exec:sandbox", "approvals_required": 2, "approved_max_ttl": "5m",
	})
	write(t, root, "keybroker/roles/quick", map[string]interface{}{
		"scopes": "read,exec:sandbox", "default_scopes": "read", "audiences": "svc", "approval_scopes": "exec:sandbox", "approval_ttl": "2s",
	})
	agentPolicy := `
path "keybroker/token/agent" { capabilities = ["update"] }
path "keybroker/token/quick" { capabilities = ["update"] }
# Only so that the plugin, not the ACL, is what refuses self-approval here.
path "keybroker/approvals/*" { capabilities = ["update"] }
`
	// Approvers of the two roles this test asks under, and no other.
	approverPolicy := `
path "keybroker/approvals/agent"   { capabilities = ["list"] }
path "keybroker/approvals/agent/*" { capabilities = ["read", "update"] }
path "keybroker/approvals/quick/*" { capabilities = ["update"] }
# So that the plugin, not the ACL, is what refuses an approver's redemption.
path "keybroker/token/agent" { capabilities = ["update"] }
`
	agent, err := v.LoginAs(ctxT(t), "agent", agentPolicy)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := v.LoginAs(ctxT(t), "approver-alice", approverPolicy)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := v.LoginAs(ctxT(t), "approver-bob", approverPolicy)
	if err != nil {
		t.Fatal(err)
	}
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/sandbox", Methods: []string{"POST"}, Scopes: []string{"exec:sandbox"}})
	})

	pending := write(t, agent, "keybroker/token/agent", map[string]interface{}{"scopes": "read,exec:sandbox"})
	id, _ := pending.Data["request_id"].(string)
	if pending.Data["approval_required"] != true || id == "" || pending.Data["token"] != nil || pending.LeaseID != "" ||
		!strings.Contains(pending.Data["reason"].(string), "exec:sandbox need 2 approval(s)") {
		t.Fatalf("mint with exec:sandbox: %#v", pending.Data)
	}
	list, err := alice.Logical().ListWithContext(ctxT(t), "keybroker/approvals/agent")
	if err != nil || !containsString(toStrings(list.Data["keys"]), id) {
		t.Fatalf("approver's list: %v %v", err, list)
	}
	redeem := map[string]interface{}{"approval_id": id}
	writeErr(t, agent, "keybroker/approvals/agent/"+id, map[string]interface{}{"action": "approve"}, http.StatusBadRequest, "the requester cannot decide on its own")
	write(t, alice, "keybroker/approvals/agent/"+id, map[string]interface{}{"action": "approve", "comment": "ticket SEC-7"})
	writeErr(t, alice, "keybroker/approvals/agent/"+id, map[string]interface{}{"action": "approve"}, http.StatusBadRequest, "already approved")
	writeErr(t, agent, "keybroker/token/agent", redeem, http.StatusBadRequest, "is pending, not approved")
	if d := write(t, bob, "keybroker/approvals/agent/"+id, map[string]interface{}{"action": "approve"}).Data; d["state"] != "approved" {
		t.Fatalf("after two approvals: %#v", d)
	}
	// Only the requester redeems: an approver who may mint from the role
	// too cannot take the credential.
	writeErr(t, bob, "keybroker/token/agent", redeem, http.StatusBadRequest, "only by its requester")
	minted := write(t, agent, "keybroker/token/agent", redeem)
	if minted.LeaseDuration > 300 || !slices.Equal(toStrings(minted.Data["scopes"]), []string{"read", "exec:sandbox"}) {
		t.Fatalf("redeemed: %ds %#v", minted.LeaseDuration, minted.Data)
	}
	if r := call(t, e.proxy, "POST", "/sandbox/run", bearer(minted.Data["token"].(string)), ""); r.status != 200 {
		t.Fatalf("the approved token on the sandbox route: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	writeErr(t, agent, "keybroker/token/agent", redeem, http.StatusBadRequest, "is redeemed")
	// Without approval the sandbox stays shut.
	plain := write(t, agent, "keybroker/token/agent", nil)
	if r := call(t, e.proxy, "POST", "/sandbox/run", bearer(plain.Data["token"].(string)), ""); r.status != 403 {
		t.Fatalf("a token without exec:sandbox on the sandbox route: %d", r.status)
	}

	// A request nobody approves in time expires; a denial ends one.
	late := write(t, agent, "keybroker/token/quick", map[string]interface{}{"scopes": "exec:sandbox"}).Data["request_id"].(string)
	denied := write(t, agent, "keybroker/token/quick", map[string]interface{}{"scopes": "exec:sandbox"}).Data["request_id"].(string)
	write(t, bob, "keybroker/approvals/quick/"+denied, map[string]interface{}{"action": "deny", "comment": "not today"})
	writeErr(t, agent, "keybroker/token/quick", map[string]interface{}{"approval_id": denied}, http.StatusBadRequest, "is denied")
	time.Sleep(2100 * time.Millisecond)
	writeErr(t, alice, "keybroker/approvals/quick/"+late, map[string]interface{}{"action": "approve"}, http.StatusBadRequest, "is expired")

	// The audit log shows each decision: the request id in the path, in
	// clear, and who made it.
	audit, err := os.ReadFile(v.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	// With request_id, approval_id, action and state in clear (as the
	// README mounts keybroker), the ask and the redemption name it too.
	for _, want := range []string{`"request_id":"` + id + `"`, `"approval_id":"` + id + `"`, `"action":"approve"`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("audit log has no %s", want)
		}
	}
	for who, entity := range map[string]string{"alice": entityOf(t, alice), "bob": entityOf(t, bob)} {
		found := false
		for _, line := range strings.Split(string(audit), "\n") {
			if strings.Contains(line, `"path":"keybroker/approvals/agent/`+id+`"`) && strings.Contains(line, `"entity_id":"`+entity+`"`) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no audit entry of %s's decision on %s", who, id)
		}
	}
}

// toStrings reads a list from a Vault answer.
func toStrings(v interface{}) []string {
	var out []string
	if l, ok := v.([]interface{}); ok {
		for _, x := range l {
			s, _ := x.(string)
			out = append(out, s)
		}
	}
	return out
}
