package backend

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func approvalEnv(t *testing.T, role map[string]interface{}) *testEnv {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	base := map[string]interface{}{
		"scopes": "read,exec:sandbox", "default_scopes": "read", "audiences": "svc", "token_ttl": "30m", "token_max_ttl": "1h",
		"refresh_ttl": "1h", "ttl": "1h", "max_ttl": "4h", "approval_scopes": "exec:sandbox", "approvals_required": 2, "approved_max_ttl": "10m",
	}
	for k, v := range role {
		base[k] = v
	}
	e.createRole("agent", base)
	return e
}

func TestApprovalFlowForAToken(t *testing.T) {
	e := approvalEnv(t, nil)
	const requester, alice, bob = "agent-entity", "alice-entity", "bob-entity"

	// An ordinary mint is not held.
	if resp := e.as(requester, logical.UpdateOperation, "token/agent", nil); resp.Data["token"] == nil || resp.Data["approval_required"] != nil {
		t.Fatalf("mint without approval scopes: %#v", resp.Data)
	}
	pending := e.as(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox", "ttl": "1h"})
	id, _ := pending.Data["request_id"].(string)
	if pending.Data["approval_required"] != true || id == "" || pending.Data["token"] != nil || pending.Secret != nil ||
		!strings.Contains(pending.Data["reason"].(string), "exec:sandbox need 2 approval(s)") {
		t.Fatalf("mint with an approval scope: %#v", pending.Data)
	}
	list := e.ok(logical.ListOperation, "approvals/", nil).Data
	if info := list["key_info"].(map[string]interface{})[id].(map[string]interface{}); info["state"] != approvalPending || info["requester_entity_id"] != requester {
		t.Fatalf("approvals list: %#v", info)
	}

	redeem := map[string]interface{}{"approval_id": id}
	approve := map[string]interface{}{"action": "approve", "comment": "sandbox run for ticket 7"}
	e.asError(requester, logical.UpdateOperation, "approvals/"+id, approve, "the requester cannot decide on its own")
	e.asError("", logical.UpdateOperation, "approvals/"+id, approve, "needs a Vault entity")
	e.as(alice, logical.UpdateOperation, "approvals/"+id, approve)
	e.asError(alice, logical.UpdateOperation, "approvals/"+id, approve, "already approved")
	e.asError(requester, logical.UpdateOperation, "token/agent", redeem, "is pending, not approved")
	decided := e.as(bob, logical.UpdateOperation, "approvals/"+id, map[string]interface{}{"action": "approve"}).Data
	if decided["state"] != approvalApproved || len(decided["approvals"].([]map[string]interface{})) != 2 || decided["redeem_by"] == nil {
		t.Fatalf("after two approvals: %#v", decided)
	}

	e.asError(alice, logical.UpdateOperation, "token/agent", redeem, "only by its requester")
	e.asError(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"approval_id": id, "scopes": "read"}, "give no other field")
	e.asError(requester, logical.UpdateOperation, "keys/agent", redeem, "not an approval request for this path")
	minted := e.as(requester, logical.UpdateOperation, "token/agent", redeem)
	c, err := e.offline(minted.Data["token"].(string), "svc")
	if err != nil || c.Scope != "read exec:sandbox" || c.ExpiresAt.Sub(c.IssuedAt.Time) != 10*time.Minute || c.Subject != requester {
		t.Fatalf("redeemed token: %v %+v", err, c)
	}
	if _, ok := minted.Data["refresh_token"]; ok {
		t.Fatal("a redeemed token came with a refresh token, which would outlive the approval")
	}
	e.asError(requester, logical.UpdateOperation, "token/agent", redeem, "is redeemed")
	e.asError("carol-entity", logical.UpdateOperation, "approvals/"+id, approve, "takes no more decisions")
	if got := e.ok(logical.ReadOperation, "approvals/"+id, nil).Data; got["credential_id"] != minted.Data["jti"] || got["state"] != approvalRedeemed {
		t.Fatalf("redeemed request: %#v", got)
	}
}

func TestApprovalDenialExpiryAndKeys(t *testing.T) {
	e := approvalEnv(t, map[string]interface{}{"approvals_required": 1, "approval_ttl": "1s", "approval_redeem_ttl": "1m"})
	const requester, alice = "agent-entity", "alice-entity"

	denied := e.as(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}).Data["request_id"].(string)
	if d := e.as(alice, logical.UpdateOperation, "approvals/"+denied, map[string]interface{}{"action": "deny", "comment": "no"}).Data; d["state"] != approvalDenied {
		t.Fatalf("after a denial: %#v", d)
	}
	e.asError(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"approval_id": denied}, "is denied")
	if d := e.ok(logical.ReadOperation, "approvals/"+denied, nil).Data["denied_by"].(map[string]interface{}); d["entity_id"] != alice || d["comment"] != "no" {
		t.Fatalf("denied_by %#v", d)
	}
	// A read (Vault Agent's template) asking for an approval scope waits
	// like a write.
	if d := e.as(requester, logical.ReadOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}).Data; d["approval_required"] != true || d["token"] != nil {
		t.Fatalf("read-mint with an approval scope: %#v", d)
	}
	e.asError("bob-entity", logical.UpdateOperation, "approvals/"+denied, map[string]interface{}{"action": "approve"}, "takes no more decisions")

	late := e.as(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}).Data["request_id"].(string)
	time.Sleep(1100 * time.Millisecond)
	e.asError(alice, logical.UpdateOperation, "approvals/"+late, map[string]interface{}{"action": "approve"}, "is expired")

	// An API key: redeemed once approved, on a non-renewable lease that
	// ends with the approved lifetime.
	e.createRole("agent", map[string]interface{}{"approval_ttl": "1h"})
	id := e.as(requester, logical.UpdateOperation, "keys/agent", map[string]interface{}{"name": "sandbox", "scopes": "read,exec:sandbox"}).Data["request_id"].(string)
	e.as(alice, logical.UpdateOperation, "approvals/"+id, map[string]interface{}{"action": "approve"})
	key := e.as(requester, logical.UpdateOperation, "keys/agent", map[string]interface{}{"approval_id": id})
	if key.Data["name"] != "sandbox" || !slices.Equal(key.Data["scopes"].([]string), []string{"read", "exec:sandbox"}) || key.Secret == nil || key.Secret.Renewable || key.Secret.TTL != 10*time.Minute {
		t.Fatalf("redeemed key: %#v lease %#v", key.Data, key.Secret)
	}
	if r, err := e.lease(logical.RenewOperation, key.Secret); err != nil || r == nil || !r.IsError() || !strings.Contains(r.Error().Error(), "approval request") {
		t.Fatalf("renewing an approved key: %v %#v", err, r)
	}

	// Without a Vault entity there is nobody to redeem.
	e.asError("", logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}, "needs a Vault entity")
	e.asError(requester, logical.UpdateOperation, "approvals/nope", map[string]interface{}{"action": "approve"}, "does not exist")
	e.asError(alice, logical.UpdateOperation, "approvals/"+id, map[string]interface{}{"action": "maybe"}, "approve or deny")
}

// A family minted before the role needed approval for its scopes stops
// refreshing them.
func TestApprovalReachesRefresh(t *testing.T) {
	e := approvalEnv(t, map[string]interface{}{"approval_scopes": ""})
	first := e.as("agent-entity", logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox"})
	e.createRole("agent", map[string]interface{}{"approval_scopes": "exec:sandbox"})
	e.asError("agent-entity", logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]}, "needs approval for scopes")
}

func TestApprovalRoleFields(t *testing.T) {
	e := newTestEnv(t)
	e.userError(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read", "approval_scopes": "exec"}, "not in the role's scopes")
	e.userError(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read,exec", "approval_scopes": "exec"}, "are in default_scopes")
	e.userError(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read,exec", "default_scopes": "read", "approval_scopes": "exec", "approvals_required": 11}, "approvals_required must be between 1 and 10")
	e.ok(logical.UpdateOperation, "roles/r", map[string]interface{}{"scopes": "read,exec", "default_scopes": "read", "approval_scopes": "exec", "approvals_required": 3, "approval_ttl": "2h"})
	d := e.ok(logical.ReadOperation, "roles/r", nil).Data
	if !slices.Equal(d["approval_scopes"].([]string), []string{"exec"}) || d["approvals_required"] != 3 || d["approval_ttl"] != int64(7200) {
		t.Fatalf("role %#v", d)
	}
}
