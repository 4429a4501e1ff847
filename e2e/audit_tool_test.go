package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// step is one thing the scenario did to the credential, as the audit
// tool should tell it.
type step struct {
	kind    string
	entity  string // Vault entity of the actor; "" for the root token and for sidecar decisions
	details map[string]string
}

// The life of one API key, reconstructed from the real audit log and the
// sidecar's decision log: an AppRole app mints it, renews it, uses it
// through a metered sidecar route (allowed) and a route it lacks the scope
// for (denied); the sidecar reserves and reports budget under its own
// identity; root revokes the lease. The test records what it did and
// compares it with keybroker-audit history (and report).
func TestAuditHistoryReconstructsKeyLife(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	// The mount shows key_id, jti, role, ... in clear (vaultserver); an
	// auditor also wants the name, scopes, tenant, expiry and reasons.
	write(t, root, "sys/mounts/keybroker/tune", map[string]interface{}{
		"audit_non_hmac_request_keys":  []string{"key_id", "jti", "role", "id", "reservation_id", "holder", "approval_id", "action", "name", "scopes"},
		"audit_non_hmac_response_keys": []string{"key_id", "jti", "role", "reservation_id", "request_id", "state", "name", "scopes", "tenant", "expires_at", "reason"},
	})
	write(t, root, "keybroker/roles/metered", map[string]interface{}{
		"scopes": "read,write", "tenant": "acme", "ttl": "1h", "max_ttl": "2h",
		"budget": 1000, "max_cost_per_request": 10, "budget_period": "24h",
	})
	app, err := v.LoginAs(ctxT(t), "auditee", `path "keybroker/keys/metered" { capabilities = ["update"] }`)
	if err != nil {
		t.Fatal(err)
	}
	appEntity := entityOf(t, app)
	var did []step

	minted := write(t, app, "keybroker/keys/metered", map[string]interface{}{"name": "audited", "scopes": "read"})
	key, keyID, lease := minted.Data["key"].(string), minted.Data["key_id"].(string), minted.LeaseID
	did = append(did, step{"minted", appEntity, map[string]string{"scopes": "read", "role": "metered", "tenant": "acme", "name": "audited", "lease": lease, "ttl": "1h0m0s"}})

	if _, err := app.Sys().RenewWithContext(ctxT(t), lease, 3600); err != nil { // the default policy allows it
		t.Fatalf("renew as the app: %v", err)
	}
	did = append(did, step{"renewed", appEntity, map[string]string{"lease": lease}})

	// Through a sidecar: a metered route (the sidecar reserves budget
	// under its own identity) and a route needing a scope the key lacks.
	up := newLLMUpstream(t, 10)
	decisions := filepath.Join(t.TempDir(), "decisions.log")
	sc := startSidecar(t, v, func(c *sidecar.Config) {
		c.Upstream, c.Name, c.DecisionLogPath = up.URL, "audit-sidecar", decisions
		fallback := int64(10)
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/llm", Scopes: []string{"read"}, UsageHeader: "X-Usage-Tokens", Cost: &fallback})
	})
	sidecarEntity := approleEntity(t, v, "sidecar")
	if r := call(t, sc.proxy, "GET", "/llm/complete?cost=max", bearer(key), ""); r.status != 200 {
		t.Fatalf("metered request: %d %s", r.status, r.body)
	}
	// A decision is stamped when the sidecar starts deciding, before the
	// reservation it makes on the way.
	did = append(did,
		step{"allowed", "", map[string]string{"route": "/llm", "status": "200"}},
		step{"budget_reserved", sidecarEntity, map[string]string{"holder": "audit-sidecar"}})
	if r := call(t, sc.proxy, "POST", "/write/x", bearer(key), ""); r.status != 403 {
		t.Fatalf("request without the scope: %d %s", r.status, r.body)
	}
	did = append(did, step{"denied", "", map[string]string{"reason": "insufficient_scope", "status": "403", "route": "/write"}})
	sc.stop() // a clean stop reports the use and releases the rest
	did = append(did, step{"budget_reported", sidecarEntity, map[string]string{"period_used": "10", "released": "true"}})

	// sys/leases/revoke HMACs lease_id (sys/ cannot be tuned); the
	// renewal's answer, which shows the lease in clear, ties it.
	if err := root.Sys().RevokeWithContext(ctxT(t), lease); err != nil {
		t.Fatalf("vault lease revoke: %v", err)
	}
	did = append(did, step{"revoked", "", map[string]string{"lease": lease}})

	inputs := []string{v.AuditLog, decisions}
	h := historyJSON(t, nil, append([]string{"history", "-format", "json", keyID}, inputs...)...)
	compareHistory(t, h, did, sidecarEntity)
	if len(h.Credentials) != 1 || h.Credentials[0].ID != keyID || h.Credentials[0].Minter.EntityID != appEntity ||
		h.Credentials[0].Minter.AuthMethod != "approle" || h.Credentials[0].Minter.AppRole != "auditee" ||
		!strings.Contains(h.Credentials[0].RevokedBy, "sys/leases/revoke") {
		t.Fatalf("credential: %+v", h.Credentials)
	}
	// Everything the history needed was in clear.
	for _, hd := range h.Hidden {
		if hd.Mount == "keybroker/" {
			t.Errorf("hidden on the tuned mount: %+v", hd)
		}
	}
	// The name finds the same key.
	if byName := historyJSON(t, nil, append([]string{"history", "-format", "json", "audited"}, inputs...)...); len(byName.Events) != len(h.Events) {
		t.Fatalf("history by name: %d events, by key_id %d", len(byName.Events), len(h.Events))
	}
	// The table says the same, for a human.
	var out, errOut bytes.Buffer
	if code := audit.Main(append([]string{"history", keyID}, inputs...), nil, &out, &errOut, nil); code != 0 {
		t.Fatalf("table: exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{keyID, "approle:auditee entity " + appEntity, "lease revoke (sys/leases/revoke)", "holder=audit-sidecar"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("history table:\n%s", out.String())
	}

	// The report over the same inputs counts the same life.
	out.Reset()
	if code := audit.Main(append([]string{"report", "-since", "1h", "-until", time.Now().Add(time.Minute).UTC().Format(time.RFC3339), "-format", "json"}, inputs...), nil, &out, &errOut, nil); code != 0 {
		t.Fatalf("report: exit %d: %s", code, errOut.String())
	}
	var rep audit.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	var g *audit.Group
	for _, x := range rep.Groups {
		if x.Role == "metered" {
			g = x
		}
	}
	if g == nil || g.Tenant != "acme" || g.Mints != 1 || g.Revocations != 1 || g.Allowed != 1 || g.Denied != 1 || g.Denials["insufficient_scope"] != 1 ||
		len(rep.TopSpenders) != 1 || rep.TopSpenders[0].Credential != keyID || rep.TopSpenders[0].Used != 10 {
		t.Fatalf("report: %s", out.String())
	}

	t.Run("hmac", func(t *testing.T) { auditHMACdMount(t, v, app, appEntity) })
}

// A mount without the non-HMAC tune hides every id: history says which
// fields it cannot show and how to fix it, and audit-hash finds the key.
func auditHMACdMount(t *testing.T, v *vaultserver.Server, app *api.Client, appEntity string) {
	root := v.Client
	write(t, root, "sys/mounts/kb-plain", map[string]interface{}{
		"type": vaultserver.PluginName, "config": map[string]interface{}{"plugin_version": vaultserver.TestPluginVersion},
	})
	write(t, root, "kb-plain/roles/plain", map[string]interface{}{"scopes": "read", "ttl": "1h"})
	if err := root.Sys().PutPolicyWithContext(ctxT(t), "auditee-policy",
		`path "keybroker/keys/metered" { capabilities = ["update"] }
path "kb-plain/keys/plain" { capabilities = ["update"] }`); err != nil {
		t.Fatal(err)
	}
	minted := write(t, app, "kb-plain/keys/plain", map[string]interface{}{"name": "hidden-name"})
	keyID, lease := minted.Data["key_id"].(string), minted.LeaseID
	if err := root.Sys().RevokeWithContext(ctxT(t), lease); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(v.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(`"key_id":"`+keyID+`"`)) {
		t.Fatal("the untuned mount's key_id is in clear")
	}

	// Without Vault: the mint cannot be found, and the history says why.
	h := historyJSON(t, nil, "history", "-format", "json", keyID, v.AuditLog)
	if len(h.Credentials) != 1 || !h.Credentials[0].NotMinted {
		t.Fatalf("without audit-hash: %+v", h.Credentials)
	}
	if !hasHidden(h, "kb-plain/", "response", "key_id") || !hasHidden(h, "kb-plain/", "response", "name") {
		t.Fatalf("hidden = %+v, want kb-plain/ response key_id and name", h.Hidden)
	}
	if !anyContains(h.Fixes, "vault secrets tune") || !anyContains(h.Fixes, "-audit-non-hmac-response-keys=key_id") ||
		!anyContains(h.Fixes, "kb-plain/") || !anyContains(h.Fixes, "-audit-device") {
		t.Fatalf("fixes = %q", h.Fixes)
	}

	// With Vault's audit-hash: the mint, by key_id and by name, and the
	// lease revocation (sys/leases/revoke always HMACs lease_id).
	env := func(k string) string {
		return map[string]string{"VAULT_TOKEN": v.RootToken}[k]
	}
	for _, q := range []string{keyID, "hidden-name"} {
		h = historyJSON(t, env, "history", "-format", "json", "-vault-addr", v.Addr, "-audit-device", "file", q, v.AuditLog)
		if len(h.Credentials) != 1 || h.Credentials[0].NotMinted || h.Credentials[0].Minter.EntityID != appEntity {
			t.Fatalf("history %s with audit-hash: %+v", q, h.Credentials)
		}
		// Found by name, the key_id stays hidden: nothing told it in clear.
		if byID := q == keyID; byID && h.Credentials[0].ID != keyID || !byID && !strings.HasPrefix(h.Credentials[0].ID, "hmac-sha256:") ||
			byID == hasHidden(h, "kb-plain/", "response", "key_id") {
			t.Fatalf("history %s with audit-hash: id %s, hidden %+v", q, h.Credentials[0].ID, h.Hidden)
		}
		if q == "hidden-name" && h.Credentials[0].Name != q {
			t.Fatalf("history by name: name %q", h.Credentials[0].Name)
		}
		var kinds []string
		for _, ev := range h.Events {
			kinds = append(kinds, ev.Kind)
		}
		if strings.Join(kinds, ",") != "minted,revoked" {
			t.Fatalf("history %s with audit-hash: events %v", q, kinds)
		}
		if h.Events[0].Details["role"] != "plain" || h.Events[1].Details["lease"] != lease || h.Events[1].Actor.EntityID != "" {
			t.Fatalf("history %s with audit-hash: %+v %+v", q, h.Events[0], h.Events[1])
		}
		// Still hidden: what no known value can hash to.
		if !hasHidden(h, "kb-plain/", "response", "scopes") || !hasHidden(h, "kb-plain/", "response", "tenant") {
			t.Fatalf("hidden with audit-hash = %+v", h.Hidden)
		}
	}
}

func historyJSON(t *testing.T, env audit.Env, args ...string) *audit.History {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := audit.Main(args, nil, &out, &errOut, env); code != 0 {
		t.Fatalf("keybroker-audit %v: exit %d: %s", args, code, errOut.String())
	}
	var h audit.History
	if err := json.Unmarshal(out.Bytes(), &h); err != nil {
		t.Fatalf("history JSON: %v\n%s", err, out.String())
	}
	return &h
}

// compareHistory matches the scenario's steps, in order, with the
// history's events. The sidecar may make more budget calls (and verify
// calls) than the scenario knows of; nothing else may be extra.
func compareHistory(t *testing.T, h *audit.History, did []step, sidecarEntity string) {
	t.Helper()
	var got []string
	for _, ev := range h.Events {
		got = append(got, fmt.Sprintf("%s(%s)", ev.Kind, entity(ev)))
	}
	i := 0
	for _, ev := range h.Events {
		if i < len(did) && ev.Kind == did[i].kind {
			s := did[i]
			if entity(ev) != s.entity {
				t.Errorf("%s: actor entity %q, want %q", s.kind, entity(ev), s.entity)
			}
			for k, want := range s.details {
				if ev.Details[k] != want {
					t.Errorf("%s: %s = %q, want %q (details %v)", s.kind, k, ev.Details[k], want, ev.Details)
				}
			}
			i++
			continue
		}
		extra := (ev.Kind == "budget_reserved" || ev.Kind == "budget_reported" || ev.Kind == "verified") && entity(ev) == sidecarEntity
		if !extra {
			t.Errorf("unexpected event %s at %s: %+v", ev.Kind, ev.Time, ev)
		}
	}
	if i < len(did) {
		t.Errorf("history %v lacks %s and after (of %d steps)", got, did[i].kind, len(did))
	}
	if t.Failed() {
		t.Logf("history events: %v", got)
	}
}

func entity(ev *audit.Event) string {
	if ev.Actor == nil {
		return ""
	}
	return ev.Actor.EntityID
}

func hasHidden(h *audit.History, mount, side, field string) bool {
	for _, hd := range h.Hidden {
		if hd.Mount == mount && hd.Side == side && hd.Field == field {
			return true
		}
	}
	return false
}

func anyContains(list []string, s string) bool {
	for _, x := range list {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

// approleEntity is the entity Vault made for AppRole role's logins.
func approleEntity(t *testing.T, v *vaultserver.Server, role string) string {
	t.Helper()
	auths, err := v.Client.Sys().ListAuthWithContext(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	roleID := read(t, v.Client, "auth/approle/role/"+role+"/role-id", nil).Data["role_id"].(string)
	s := write(t, v.Client, "identity/lookup/entity", map[string]interface{}{
		"alias_name": roleID, "alias_mount_accessor": auths["approle/"].Accessor,
	})
	if s == nil || s.Data["id"] == nil {
		t.Fatalf("no entity for approle role %s", role)
	}
	return s.Data["id"].(string)
}
