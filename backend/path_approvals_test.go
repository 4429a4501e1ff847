package backend

import (
	"context"
	"fmt"
	"slices"
	"strconv"
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
	if pending.Data["approval_required"] != true || id == "" || pending.Data["approval_id"] != id || pending.Data["token"] != nil || pending.Secret != nil ||
		!strings.Contains(pending.Data["reason"].(string), "exec:sandbox need 2 approval(s)") {
		t.Fatalf("mint with an approval scope: %#v", pending.Data)
	}
	list := e.ok(logical.ListOperation, "approvals/agent/", nil).Data
	if info := list["key_info"].(map[string]interface{})[id].(map[string]interface{}); info["state"] != approvalPending || info["requester_entity_id"] != requester {
		t.Fatalf("approvals list: %#v", info)
	}

	redeem := map[string]interface{}{"approval_id": id}
	approve := map[string]interface{}{"action": "approve", "comment": "sandbox run for ticket 7"}
	e.asError(requester, logical.UpdateOperation, "approvals/agent/"+id, approve, "the requester cannot decide on its own")
	e.asError("", logical.UpdateOperation, "approvals/agent/"+id, approve, "needs a Vault entity")
	e.as(alice, logical.UpdateOperation, "approvals/agent/"+id, approve)
	e.asError(alice, logical.UpdateOperation, "approvals/agent/"+id, approve, "already approved")
	e.asError(requester, logical.UpdateOperation, "token/agent", redeem, "is pending, not approved")
	decided := e.as(bob, logical.UpdateOperation, "approvals/agent/"+id, map[string]interface{}{"action": "approve"}).Data
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
	e.asError("carol-entity", logical.UpdateOperation, "approvals/agent/"+id, approve, "takes no more decisions")
	if got := e.ok(logical.ReadOperation, "approvals/agent/"+id, nil).Data; got["credential_id"] != minted.Data["jti"] || got["state"] != approvalRedeemed {
		t.Fatalf("redeemed request: %#v", got)
	}
}

func TestApprovalDenialExpiryAndKeys(t *testing.T) {
	e := approvalEnv(t, map[string]interface{}{"approvals_required": 1, "approval_ttl": "1s", "approval_redeem_ttl": "1m"})
	const requester, alice = "agent-entity", "alice-entity"

	denied := e.as(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}).Data["request_id"].(string)
	if d := e.as(alice, logical.UpdateOperation, "approvals/agent/"+denied, map[string]interface{}{"action": "deny", "comment": "no"}).Data; d["state"] != approvalDenied {
		t.Fatalf("after a denial: %#v", d)
	}
	e.asError(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"approval_id": denied}, "is denied")
	if d := e.ok(logical.ReadOperation, "approvals/agent/"+denied, nil).Data["denied_by"].(map[string]interface{}); d["entity_id"] != alice || d["comment"] != "no" {
		t.Fatalf("denied_by %#v", d)
	}
	// A read (Vault Agent's template) asking for an approval scope waits
	// like a write.
	if d := e.as(requester, logical.ReadOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}).Data; d["approval_required"] != true || d["token"] != nil {
		t.Fatalf("read-mint with an approval scope: %#v", d)
	}
	e.asError("bob-entity", logical.UpdateOperation, "approvals/agent/"+denied, map[string]interface{}{"action": "approve"}, "takes no more decisions")

	late := e.as(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}).Data["request_id"].(string)
	time.Sleep(1100 * time.Millisecond)
	e.asError(alice, logical.UpdateOperation, "approvals/agent/"+late, map[string]interface{}{"action": "approve"}, "is expired")

	// An API key: redeemed once approved, on a non-renewable lease that
	// ends with the approved lifetime.
	e.createRole("agent", map[string]interface{}{"approval_ttl": "1h"})
	id := e.as(requester, logical.UpdateOperation, "keys/agent", map[string]interface{}{"name": "sandbox", "scopes": "read,exec:sandbox"}).Data["request_id"].(string)
	e.as(alice, logical.UpdateOperation, "approvals/agent/"+id, map[string]interface{}{"action": "approve"})
	key := e.as(requester, logical.UpdateOperation, "keys/agent", map[string]interface{}{"approval_id": id})
	if key.Data["name"] != "sandbox" || !slices.Equal(key.Data["scopes"].([]string), []string{"read", "exec:sandbox"}) || key.Secret == nil || key.Secret.Renewable || key.Secret.TTL != 10*time.Minute {
		t.Fatalf("redeemed key: %#v lease %#v", key.Data, key.Secret)
	}
	e.renewRefused(key.Secret, "minted through approval request "+id)

	// Without a Vault entity there is nobody to redeem.
	e.asError("", logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "exec:sandbox"}, "needs a Vault entity")
	e.asError(requester, logical.UpdateOperation, "approvals/agent/nope", map[string]interface{}{"action": "approve"}, "does not exist")
	e.asError(alice, logical.UpdateOperation, "approvals/agent/"+id, map[string]interface{}{"action": "maybe"}, "approve or deny")
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

// Approvals are scoped by role, judged by the role as it is when each
// decision is made, and bounded: live requests per requester and per
// role, and the size of what a request stores (issue 23).
func TestApprovalsScopedAndBounded(t *testing.T) {
	e := approvalEnv(t, nil)
	e.createRole("other", map[string]interface{}{"scopes": "read,exec:sandbox", "default_scopes": "read", "audiences": "svc", "approval_scopes": "exec:sandbox"})
	const requester, alice, bob, carol = "agent-entity", "alice-entity", "bob-entity", "carol-entity"
	ask := func(who string) string {
		t.Helper()
		return e.as(who, logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox"}).Data["request_id"].(string)
	}
	approve := map[string]interface{}{"action": "approve"}

	// Another role's path reaches nothing of agent's.
	id := ask(requester)
	if r := e.ok(logical.ReadOperation, "approvals/other/"+id, nil); r != nil {
		t.Fatalf("read under another role: %#v", r)
	}
	e.asError(alice, logical.UpdateOperation, "approvals/other/"+id, approve, "does not exist under role")
	if keys := e.ok(logical.ListOperation, "approvals/", nil).Data["keys"].([]string); !slices.Equal(keys, []string{"agent/"}) {
		t.Fatalf("approvals/ = %v, want the role folder", keys)
	}

	// approvals_required raised while pending applies to the pending one.
	e.as(alice, logical.UpdateOperation, "approvals/agent/"+id, approve)
	e.createRole("agent", map[string]interface{}{"approvals_required": 3})
	if d := e.as(bob, logical.UpdateOperation, "approvals/agent/"+id, approve).Data; d["state"] != approvalPending || d["approvals_required"] != 3 {
		t.Fatalf("two approvals of three: %#v", d)
	}
	if d := e.as(carol, logical.UpdateOperation, "approvals/agent/"+id, approve).Data; d["state"] != approvalApproved {
		t.Fatalf("three approvals of three: %#v", d)
	}
	// Raised again after the approval: the redemption sends it back.
	e.createRole("agent", map[string]interface{}{"approvals_required": 4})
	e.asError(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"approval_id": id}, "now requires 4 approvals")
	if d := e.ok(logical.ReadOperation, "approvals/agent/"+id, nil).Data; d["state"] != approvalPending {
		t.Fatalf("after the role raised its approvals: %#v", d)
	}
	e.createRole("agent", map[string]interface{}{"approvals_required": 1})

	// A deleted role's requests can be denied, not approved.
	gone := e.as(requester, logical.UpdateOperation, "token/other", map[string]interface{}{"scopes": "read,exec:sandbox"}).Data["request_id"].(string)
	e.ok(logical.DeleteOperation, "roles/other", nil)
	e.asError(alice, logical.UpdateOperation, "approvals/other/"+gone, approve, "can only be denied")
	e.as(alice, logical.UpdateOperation, "approvals/other/"+gone, map[string]interface{}{"action": "deny"})

	// Live requests per requester: the one above still waits (approved,
	// not redeemed), so four more fit and the sixth does not; another
	// requester is not held back, and a denial frees a place.
	var mine []string
	for range maxLivePerRequester - 1 {
		mine = append(mine, ask(requester))
	}
	e.asError(requester, logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox"}, "the most one may")
	ask("someone-else")
	e.as(alice, logical.UpdateOperation, "approvals/agent/"+mine[0], map[string]interface{}{"action": "deny"})
	ask(requester)

	// Live requests per role, whoever asks.
	for i := 0; ; i++ {
		e.entityID = "entity-" + strconv.Itoa(i)
		resp := e.do(logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox"})
		if resp.IsError() {
			if !strings.Contains(resp.Error().Error(), "the most it may") || i > maxLivePerRole {
				t.Fatalf("request %d: %v", i, resp.Error())
			}
			break
		}
	}

	// The list pages.
	all := e.ok(logical.ListOperation, "approvals/agent/", map[string]interface{}{"limit": maxApprovalPage}).Data["keys"].([]string)
	first := e.ok(logical.ListOperation, "approvals/agent/", map[string]interface{}{"limit": 10}).Data["keys"].([]string)
	next := e.ok(logical.ListOperation, "approvals/agent/", map[string]interface{}{"limit": 10, "after": first[9]}).Data["keys"].([]string)
	if len(all) != maxLivePerRole+1 || // and the denied one
		!slices.Equal(first, all[:10]) || !slices.Equal(next, all[10:20]) {
		t.Fatalf("pages: %d in all, %v then %v", len(all), first, next)
	}
	e.userError(logical.ListOperation, "approvals/agent/", map[string]interface{}{"limit": maxApprovalPage + 1}, "limit must be between")
}

// What a request stores is bounded: a field that parses but is huge (a
// ttl of 40,000 leading zeros) is refused, not stored.
func TestApprovalRequestSizeIsBounded(t *testing.T) {
	e := approvalEnv(t, nil)
	e.entityID = "agent-entity"
	resp := e.do(logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox", "ttl": strings.Repeat("0", 40_000) + "60"})
	if !resp.IsError() || !strings.Contains(resp.Error().Error(), "bytes") {
		t.Fatalf("a 40 kB request: %#v", resp)
	}
	if keys := e.storageKeys(approvalPrefix); len(keys) != 0 {
		t.Fatalf("stored: %v", keys)
	}
}

// A request stored by an older plugin at approvals/<id> moves under its
// role when the mount starts, and takes decisions there.
func TestApprovalsOfAnOlderPluginMove(t *testing.T) {
	e := approvalEnv(t, nil)
	id := e.as("agent-entity", logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox"}).Data["request_id"].(string)
	ctx := context.Background()
	ent, err := e.storage.Get(ctx, approvalPath("agent", id))
	if err != nil || ent == nil {
		t.Fatal(err)
	}
	ent.Key = approvalPrefix + id
	if err := e.storage.Put(ctx, ent); err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Delete(ctx, approvalPath("agent", id)); err != nil {
		t.Fatal(err)
	}
	if err := e.b.initialize(ctx, &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if keys := e.storageKeys(approvalPrefix); !slices.Equal(keys, []string{approvalPath("agent", id)}) {
		t.Fatalf("after the move: %v", keys)
	}
	e.as("alice-entity", logical.UpdateOperation, "approvals/agent/"+id, map[string]interface{}{"action": "approve"})
	e.as("bob-entity", logical.UpdateOperation, "approvals/agent/"+id, map[string]interface{}{"action": "approve"})
	e.as("agent-entity", logical.UpdateOperation, "token/agent", map[string]interface{}{"approval_id": id})

	// The old copy met again (its delete had failed): it is deleted, and
	// never written over the newer one, which would make the request
	// redeemable again.
	if err := e.storage.Put(ctx, ent); err != nil {
		t.Fatal(err)
	}
	if err := e.b.initialize(ctx, &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if keys := e.storageKeys(approvalPrefix); !slices.Equal(keys, []string{approvalPath("agent", id)}) {
		t.Fatalf("after meeting the old copy again: %v", keys)
	}
	e.asError("agent-entity", logical.UpdateOperation, "token/agent", map[string]interface{}{"approval_id": id}, "is redeemed")
}

// A role keeps at most maxStoredPerRole requests, finished ones included;
// one that expired undecided is forgotten an hour after, a decided one a
// day after.
func TestApprovalsStoredPerRoleBounded(t *testing.T) {
	e := approvalEnv(t, nil)
	ctx := context.Background()
	for i := range maxStoredPerRole {
		if err := putJSON(ctx, e.storage, approvalPath("agent", fmt.Sprintf("old-%04d", i)), &approvalRequest{ID: "x", Role: "agent"}); err != nil {
			t.Fatal(err)
		}
	}
	e.asError("agent-entity", logical.UpdateOperation, "token/agent", map[string]interface{}{"scopes": "read,exec:sandbox"}, "the most it may keep")

	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	expired := approvalRequest{ExpiresAt: t0}
	decided := approvalRequest{ExpiresAt: t0, Approvals: []approvalVote{{Entity: "a", At: t0}}, ApprovedAt: t0, RedeemBy: t0.Add(time.Minute)}
	if got := expired.done(); !got.Equal(t0.Add(time.Hour)) {
		t.Fatalf("expired undecided kept until %s", got)
	}
	if got := decided.done(); !got.Equal(t0.Add(time.Minute + 24*time.Hour)) {
		t.Fatalf("decided kept until %s", got)
	}
}
