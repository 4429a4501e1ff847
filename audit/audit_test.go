package audit

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/golden")

// testdata/vault-audit.log and decisions.log were captured from a dev Vault
// and a sidecar (trimmed of headers and mount details; Vault wrote every
// secret as an HMAC). In them:
const (
	appEntity      = "1fcaa07d-ce0d-4467-9ceb-516d20baa138" // AppRole "app"
	newcomerEntity = "e96fabe7-970d-a7da-f2f6-c79ef2bba347" // AppRole "newcomer", first seen at 21:16:59.047
	sidecarEntity  = "abbc1bcc-9711-1ed5-2139-a29c3a0c57d3" // the sidecar, holder "sc-1"
	auditedKey     = "xYVDe7I5wMjT"                         // web: verified, renewed, 3 allows, 1 denial, lease revoked
	unusedKey      = "xYVDem7YzKqy"                         // web: nothing; dies with its minter's token
	meterKey       = "xYVDf7Bzo2gh"                         // llm (newcomer): budget reserved and reported, key delete
	norenewKey     = "xYVDf0GHfTar"                         // web: lease revoked, never renewed (the revoke's lease_id is HMAC'd)
	firstJWT       = "55e26dad-bbc0-c9d8-2203-7f4db4708426" // agent: refreshed, then its refresh token reused
	refreshedJWT   = "5abfebc6-6b62-5d9b-849e-7afb9c5eb3c1"
	loneJWT        = "73325fae-846c-3040-1dbe-76099097c4c5" // agent: expires (token_ttl 2s) before its minter's token is revoked
	cascadeKey     = "xYVDfcY9ojbK"                         // web: dies with its minter's token
	// norenewKey's lease, and the HMAC its sys/leases/revoke carries.
	norenewLease     = "keybroker/keys/web/8MNJVsXZOegQhFWahr2T3U5f"
	norenewLeaseHMAC = "hmac-sha256:d8338ccc203b3be50a08a3689b11472e6a17ed6252b63a86a1d1b7dffd7df840"
)

func loadFiles(t *testing.T, names ...string) *Log {
	t.Helper()
	var paths []string
	for _, n := range names {
		paths = append(paths, filepath.Join("testdata", n))
	}
	ins, closeAll, err := Open(paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	l, err := Load(ins)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func kinds(evs []*Event) string {
	var out []string
	for _, ev := range evs {
		k := ev.Kind
		if ev.Count > 0 {
			k += "*" + strconv.Itoa(ev.Count)
		}
		out = append(out, k)
	}
	return strings.Join(out, ",")
}

func TestLoadPairsAndOrders(t *testing.T) {
	l := loadFiles(t, "lifecycle.log")
	if len(l.Records) != 15 {
		t.Fatalf("%d records, want 15 (28 lines: 13 pairs, a response alone, a request alone)", len(l.Records))
	}
	for i := 1; i < len(l.Records); i++ {
		if l.Records[i].Time.Before(l.Records[i-1].Time) {
			t.Fatalf("record %d out of order", i)
		}
	}
	first := l.Records[0]
	if first.Request.Path != "keybroker/keys/web" || first.Response == nil || first.RespTime.Sub(first.Time) != 5*time.Millisecond || first.Auth.EntityID == "" {
		t.Fatalf("first record: %+v", first)
	}
	alone := l.Records[13]
	if alone.Response == nil || !alone.Time.Equal(alone.RespTime) {
		t.Fatalf("a response without its request: %+v", alone)
	}
	if last := l.Records[14]; last.Response != nil || !last.RespTime.IsZero() {
		t.Fatalf("a request without its response: %+v", last)
	}
	if l.Records[9].Error == "" || !l.Records[9].Failed() {
		t.Fatalf("the refused delete: %+v", l.Records[9])
	}

	// Decisions and Vault lines in one file or many are told apart by type.
	l = loadFiles(t, "vault-audit.log", "decisions.log")
	if len(l.Records) != 24 || len(l.Decisions) != 9 {
		t.Fatalf("%d records %d decisions, want 24 and 9", len(l.Records), len(l.Decisions))
	}
	if d := l.Decisions[3]; d.Outcome != "deny" || d.Reason != "insufficient_scope" || d.KeyID != auditedKey || d.Status != 403 || d.Sidecar != "sc-1" {
		t.Fatalf("decision 3: %+v", d)
	}
}

// Split across files given in any order, gzip or plain, or on stdin: the
// same log.
func TestLoadMergesGzipAndStdin(t *testing.T) {
	want := loadFiles(t, "vault-audit.log", "decisions.log")
	raw, err := os.ReadFile("testdata/vault-audit.log")
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(raw, []byte("\n"))
	// Cut between a request and its response, so pairing spans files.
	half := len(lines)/2 | 1
	dir := t.TempDir()
	older := filepath.Join(dir, "audit.log.1.gz")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Join(lines[:half], nil))
	zw.Close()
	if err := os.WriteFile(older, gz.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	newer := filepath.Join(dir, "audit.log")
	if err := os.WriteFile(newer, append(bytes.Join(lines[half:], nil), []byte("not json\n\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	dec, _ := os.ReadFile("testdata/decisions.log")
	ins, closeAll, err := Open([]string{newer, "-", older}, bytes.NewReader(dec))
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll()
	got, err := Load(ins)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Records) != len(want.Records) || len(got.Decisions) != len(want.Decisions) || got.Malformed[newer] != 1 {
		t.Fatalf("merged: %d records %d decisions %v; want %d %d and 1 malformed", len(got.Records), len(got.Decisions), got.Malformed, len(want.Records), len(want.Decisions))
	}
	for i := range got.Records {
		g, w := got.Records[i], want.Records[i]
		if g.ID != w.ID || !g.Time.Equal(w.Time) || (g.Response == nil) != (w.Response == nil) {
			t.Fatalf("record %d: %s %s, want %s %s", i, g.ID, g.Time, w.ID, w.Time)
		}
	}
	if _, _, err := Open([]string{filepath.Join(dir, "missing")}, nil); err == nil {
		t.Fatal("a missing file opened")
	}
}

func TestHistoryOfAKey(t *testing.T) {
	l := loadFiles(t, "vault-audit.log", "decisions.log")
	h := BuildHistory(l, auditedKey, Options{})
	if got := kinds(h.Events); got != "minted,verified,renewed,allowed*3,denied,revoked" {
		t.Fatalf("events %s", got)
	}
	c := h.Credentials[0]
	if c.ID != auditedKey || c.Kind != "api_key" || c.Role != "web" || c.Tenant != "acme" || c.Minter.EntityID != appEntity ||
		c.Minter.AuthMethod != "approle" || c.Minter.AppRole != "app" || c.Minter.RemoteAddress != "127.0.0.1" ||
		c.Allowed != 3 || c.Denied != 1 || c.Denials["insufficient_scope"] != 1 || c.Verifies != 1 || c.Renewals != 1 {
		t.Fatalf("credential %+v minter %+v", c, c.Minter)
	}
	ev := h.Events
	if ev[2].Actor.EntityID != appEntity || ev[2].Details["lease"] != c.LeaseID {
		t.Fatalf("renewal: %+v", ev[2])
	}
	if ev[3].Count != 3 || ev[3].Actor.Sidecar != "sc-1" || ev[3].Details["route"] != "/read" || ev[4].Details["reason"] != "insufficient_scope" {
		t.Fatalf("decisions: %+v %+v", ev[3], ev[4])
	}
	// The lease revocation's lease_id is HMAC'd; the renewal's answer
	// showed the same lease in clear, which ties them.
	if ev[5].Route != "lease revoke (sys/leases/revoke)" || ev[5].Actor.EntityID != "" || ev[5].Actor.AuthMethod != "token(root)" {
		t.Fatalf("revocation: %+v", ev[5])
	}
	// The harness default mount HMACs name, scopes, tenant, expiry and reasons.
	for _, f := range []string{"name", "scopes", "tenant", "expires_at", "reason"} {
		if !hasHidden(h.Hidden, "keybroker/", "response", f) {
			t.Errorf("hidden %+v lacks response %s", h.Hidden, f)
		}
	}
	if len(h.Fixes) < 2 || !strings.HasPrefix(h.Fixes[0], "vault secrets tune ") || !strings.Contains(h.Fixes[0], "-audit-non-hmac-response-keys=scopes") ||
		!strings.Contains(h.Fixes[0], " keybroker/ ") || !strings.Contains(h.Fixes[1], "-audit-device") {
		t.Fatalf("fixes %q", h.Fixes)
	}
}

func TestHistoryOfAMeteredKey(t *testing.T) {
	l := loadFiles(t, "vault-audit.log", "decisions.log")
	h := BuildHistory(l, meterKey, Options{})
	// Decisions are stamped as the sidecar starts deciding, before the
	// reservation it makes for the first request.
	if got := kinds(h.Events); got != "minted,allowed,budget_reserved,allowed*3,budget_reported,revoked" {
		t.Fatalf("events %s", got)
	}
	res, rep, rev := h.Events[2], h.Events[4], h.Events[5]
	if res.Actor.EntityID != sidecarEntity || res.Details["holder"] != "sc-1" || res.Details["granted"] != "100" || !strings.HasPrefix(res.Details["reservation_id"], meterKey+":") {
		t.Fatalf("reservation: %+v", res)
	}
	if rep.Actor.EntityID != sidecarEntity || rep.Details["period_used"] != "40" || rep.Details["released"] != "true" {
		t.Fatalf("report: %+v", rep)
	}
	if rev.Route != "key delete (keybroker/keys/id/"+meterKey+")" {
		t.Fatalf("revocation: %+v", rev)
	}
	if c := h.Credentials[0]; c.Minter.EntityID != newcomerEntity || c.Tenant != "globex" || c.Granted != 100 || c.PeriodUsed != 40 {
		t.Fatalf("credential %+v", c)
	}
}

func TestHistoryOfARefreshFamily(t *testing.T) {
	l := loadFiles(t, "vault-audit.log", "decisions.log")
	h := BuildHistory(l, firstJWT, Options{})
	if got := kinds(h.Events); got != "minted,refreshed,refresh_reused,revoked" {
		t.Fatalf("events %s", got)
	}
	if h.Events[1].Details["successor"] != refreshedJWT || h.Events[3].Source != "inferred" || h.Credentials[0].Kind != "jwt" {
		t.Fatalf("events %+v %+v", h.Events[1], h.Events[3])
	}
	h = BuildHistory(l, refreshedJWT, Options{})
	if got := kinds(h.Events); got != "minted,revoked" || h.Credentials[0].MintedVia != "refresh" || h.Credentials[0].Parent != firstJWT {
		t.Fatalf("successor: events %s, credential %+v", got, h.Credentials[0])
	}
	// Expired (inferred from exp) before its minter's token was revoked:
	// the cascade does not claim it.
	h = BuildHistory(l, loneJWT, Options{})
	if got := kinds(h.Events); got != "minted,expired" {
		t.Fatalf("lone: events %s", got)
	}
}

// A token revocation revokes the leases of what the token minted; the
// audit log has the token revocation only.
func TestHistoryTokenCascade(t *testing.T) {
	l := loadFiles(t, "vault-audit.log", "decisions.log")
	h := BuildHistory(l, unusedKey, Options{})
	if got := kinds(h.Events); got != "minted,revoked" {
		t.Fatalf("events %s", got)
	}
	// norenewKey's lease revocation, in between, has an HMAC'd lease_id:
	// for all the log says it could have been this key's lease.
	if ev := h.Events[1]; ev.Route != "token revocation cascade (auth/token/revoke)" || !strings.Contains(ev.Details["note"], "does not itemise") ||
		!strings.Contains(ev.Details["note"], "unless the lease was revoked before") {
		t.Fatalf("cascade: %+v", ev)
	}
	h = BuildHistory(l, unusedKey, Options{Hasher: fakeHasher{norenewLease: norenewLeaseHMAC}})
	if ev := h.Events[1]; kinds(h.Events) != "minted,revoked" || strings.Contains(ev.Details["note"], "unless") {
		t.Fatalf("cascade with audit-hash: %+v", ev)
	}
}

type fakeHasher map[string]string

func (f fakeHasher) Hash(_ context.Context, in string) (string, error) {
	if h, ok := f[in]; ok {
		return h, nil
	}
	return "hmac-sha256:" + strings.Repeat("0", 64), nil
}

// A lease revocation whose lease was never renewed cannot be tied to it
// from the log; audit-hash of the lease id can.
func TestHistoryUnmatchedLeaseRevocation(t *testing.T) {
	l := loadFiles(t, "vault-audit.log", "decisions.log")
	h := BuildHistory(l, norenewKey, Options{})
	if got := kinds(h.Events); got != "minted,revoked" {
		t.Fatalf("events %s", got)
	}
	if !strings.Contains(h.Events[1].Details["note"], "unless the lease was revoked before by 1 lease revocation with an HMAC'd lease_id") {
		t.Fatalf("the cascade claims a lease that may have been revoked before: %+v", h.Events[1])
	}
	if !anyContains(h.Notes, "1 lease revocation carries") || !anyContains(h.Notes, "-audit-device") {
		t.Fatalf("notes %q", h.Notes)
	}
	h = BuildHistory(l, norenewKey, Options{Hasher: fakeHasher{norenewLease: norenewLeaseHMAC}})
	if got := kinds(h.Events); got != "minted,revoked" || h.Events[1].Route != "lease revoke (sys/leases/revoke)" || anyContains(h.Notes, "carries") {
		t.Fatalf("with audit-hash: events %s %+v, notes %q", got, h.Events[1], h.Notes)
	}
}

func TestHistoryByName(t *testing.T) {
	l := loadFiles(t, "lifecycle.log")
	h := BuildHistory(l, "rotating", Options{})
	if len(h.Credentials) != 2 || h.Credentials[0].ID != "kA1kA1kA1kA1" || h.Credentials[1].ID != "kA2kA2kA2kA2" {
		t.Fatalf("by name: %+v", h.Credentials)
	}
	// A name HMAC'd in the log: found only through audit-hash.
	l = loadFiles(t, "vault-audit.log")
	h = BuildHistory(l, "unused", Options{})
	if !h.Credentials[0].NotMinted || !anyContains(h.Notes, "name HMAC'd") || !hasHidden(h.Hidden, "keybroker/", "response", "name") {
		t.Fatalf("HMAC'd name: %+v %q %+v", h.Credentials[0], h.Notes, h.Hidden)
	}
	mint := findRecord(t, l, func(r *Record) bool { return r.respData("key_id") == unusedKey })
	h = BuildHistory(l, "unused", Options{Hasher: fakeHasher{"unused": mint.respData("name")}})
	if len(h.Credentials) != 1 || h.Credentials[0].ID != unusedKey || h.Credentials[0].Name != "unused" {
		t.Fatalf("HMAC'd name with audit-hash: %+v", h.Credentials)
	}
}

// An id the log only has HMAC'd (a mount without the non-HMAC tune).
func TestHistoryHMACdID(t *testing.T) {
	raw, err := os.ReadFile("testdata/lifecycle.log")
	if err != nil {
		t.Fatal(err)
	}
	hidden := "hmac-sha256:" + strings.Repeat("5", 64)
	raw = bytes.ReplaceAll(raw, []byte(`"key_id":"kA1kA1kA1kA1"`), []byte(`"key_id":"`+hidden+`"`))
	l, err := Load([]Input{{Name: "x", R: bytes.NewReader(raw)}})
	if err != nil {
		t.Fatal(err)
	}
	h := BuildHistory(l, "kA1kA1kA1kA1", Options{})
	// Paths are never HMAC'd: what names it there is found; not its mint.
	if !h.Credentials[0].NotMinted || !strings.HasPrefix(kinds(h.Events), "suspended,resumed,") || !hasHidden(h.Hidden, "keybroker/", "response", "key_id") {
		t.Fatalf("without audit-hash: %s %+v %+v", kinds(h.Events), h.Credentials[0], h.Hidden)
	}
	h = BuildHistory(l, "kA1kA1kA1kA1", Options{Hasher: fakeHasher{"kA1kA1kA1kA1": hidden}})
	if got := kinds(h.Events); got != "minted,suspended,resumed,role_suspended,role_resumed,rotated,revoked,revoke_refused" || h.Credentials[0].ID != "kA1kA1kA1kA1" || hasHidden(h.Hidden, "keybroker/", "response", "key_id") {
		t.Fatalf("with audit-hash: %s %+v %+v", got, h.Credentials[0], h.Hidden)
	}
}

func TestHistoryLifecyclePaths(t *testing.T) {
	l := loadFiles(t, "lifecycle.log")
	for _, tc := range []struct{ id, kinds string }{
		{"kA1kA1kA1kA1", "minted,suspended,resumed,role_suspended,role_resumed,rotated,revoked,revoke_refused"},
		{"kA2kA2kA2kA2", "minted,revoked,verified"},
		{"j1j1j1j1-0000-0000-0000-000000000001", "minted,exchanged,revoked"},
		{"j2j2j2j2-0000-0000-0000-000000000002", "minted,exchanged,revoked"},
		{"j3j3j3j3-0000-0000-0000-000000000003", "minted,revoked"},
	} {
		h := BuildHistory(l, tc.id, Options{})
		if got := kinds(h.Events); got != tc.kinds {
			t.Errorf("%s: %s, want %s", tc.id, got, tc.kinds)
		}
	}
	// The plugin revokes a rotated key when its grace ends (no audit
	// entry); the token revocation after it then has nothing to revoke.
	h := BuildHistory(l, "kA1kA1kA1kA1", Options{})
	if ev := h.Events[6]; ev.Route != "rotation grace ended" || ev.Source != "inferred" || !ev.Time.Equal(time.Date(2026, 1, 1, 10, 0, 7, 0, time.UTC)) ||
		h.Events[5].Details["grace_ends"] != "2026-01-01T10:00:07Z" {
		t.Fatalf("grace end: %+v", ev)
	}
	if ev := h.Events[7]; !strings.Contains(ev.Details["error"], "permission denied") || ev.Actor.EntityID != "11111111-1111-1111-1111-111111111111" {
		t.Fatalf("refused delete: %+v", ev)
	}
	// Without the grace end, the accessor's revocation is what ends it.
	raw, err := os.ReadFile("testdata/lifecycle.log")
	if err != nil {
		t.Fatal(err)
	}
	l2, err := Load([]Input{{Name: "x", R: bytes.NewReader(bytes.ReplaceAll(raw, []byte(`,"grace_ends":"2026-01-01T10:00:07Z"`), nil))}})
	if err != nil {
		t.Fatal(err)
	}
	h = BuildHistory(l2, "kA1kA1kA1kA1", Options{})
	if ev := h.Events[len(h.Events)-1]; ev.Route != "token revocation cascade (auth/token/revoke-accessor)" {
		t.Fatalf("revoke-accessor: %s %+v", kinds(h.Events), ev)
	}
	h = BuildHistory(l, "kA2kA2kA2kA2", Options{})
	if c := h.Credentials[0]; c.MintedVia != "rotation" || c.Parent != "kA1kA1kA1kA1" || h.Events[1].Details["prefix"] != "keybroker/keys/web/" {
		t.Fatalf("rotated key: %+v %+v", c, h.Events[1])
	}
	h = BuildHistory(l, "j3j3j3j3-0000-0000-0000-000000000003", Options{})
	if c := h.Credentials[0]; c.MintedVia != "exchange" || c.Parent != "j2j2j2j2-0000-0000-0000-000000000002" || h.Events[1].Source != "inferred" ||
		c.Minter.EntityID != "44444444-4444-4444-4444-444444444444" {
		t.Fatalf("exchanged token: %+v %+v", c, h.Events[1])
	}
}

// Captured: a key suspended, resumed, suspended with its role, rotated
// (the successor's lease is under the rotate path), the successor revoked
// by value (key=), two more by value in one request (keys=).
func TestHistoryRotateAndRevokeByValue(t *testing.T) {
	l := loadFiles(t, "rotate-revoke.log")
	h := BuildHistory(l, "xYVHaNC09kWa", Options{})
	if got := kinds(h.Events); got != "minted,suspended,resumed,role_suspended,role_resumed,rotated" {
		t.Fatalf("rotated key: %s", got)
	}
	if !hasHidden(h.Hidden, "keybroker/", "response", "grace_ends") {
		t.Fatalf("hidden %+v", h.Hidden)
	}
	for _, id := range []string{"xYVHaIQvKwcp", "xYVHaGewYiuz", "xYVHao9Kvgpt"} {
		h = BuildHistory(l, id, Options{})
		ev := h.Events[len(h.Events)-1]
		if got := kinds(h.Events); got != "minted,revoked" || ev.Route != "revoke by value (keybroker/revoke)" || !hasHidden(h.Hidden, "keybroker/", "response", "result") {
			t.Fatalf("%s: %s %+v", id, got, ev)
		}
	}
	if c := h.Credentials[0]; c.RevokedBy != "revoke by value (keybroker/revoke)" {
		t.Fatalf("credential %+v", c)
	}
	h = BuildHistory(l, "xYVHaIQvKwcp", Options{})
	if c := h.Credentials[0]; c.MintedVia != "rotation" || c.Parent != "xYVHaNC09kWa" || !strings.HasPrefix(c.LeaseID, "keybroker/keys/id/xYVHaNC09kWa/rotate/") {
		t.Fatalf("successor %+v", c)
	}
	// With result in clear (audit_non_hmac_response_keys=result), what it says.
	raw, err := os.ReadFile("testdata/rotate-revoke.log")
	if err != nil {
		t.Fatal(err)
	}
	hashed := []byte("hmac-sha256:53adfb2a6e4958b11c17b2ba184116fbbb419c29edaa4ba4ac5356464d69ff86")
	l, err = Load([]Input{{Name: "x", R: bytes.NewReader(bytes.Replace(bytes.ReplaceAll(raw, hashed, []byte("revoked")), []byte(`"revoked"`), []byte(`"already_revoked"`), 1))}})
	if err != nil {
		t.Fatal(err)
	}
	h = BuildHistory(l, "xYVHaIQvKwcp", Options{})
	if got := kinds(h.Events); got != "minted,revoke_by_value" || h.Events[1].Details["result"] != "already_revoked" {
		t.Fatalf("already revoked: %s %+v", got, h.Events[1])
	}
	h = BuildHistory(l, "xYVHao9Kvgpt", Options{})
	if got := kinds(h.Events); got != "minted,revoked" || h.Events[1].Details["result"] != "revoked" || len(h.Events[1].Hidden) != 0 {
		t.Fatalf("revoked: %s %+v", got, h.Events[1])
	}
}

func TestReport(t *testing.T) {
	l := loadFiles(t, "vault-audit.log", "decisions.log")
	since := time.Date(2026, 12, 1, 21, 16, 59, 0, time.UTC)
	r := BuildReport(l, ReportOptions{Since: since, Until: since.Add(3 * time.Second)}, Options{})
	got := map[string]Group{}
	for _, g := range r.Groups {
		got[g.Role+"/"+g.Tenant] = *g
	}
	want := map[string]Group{
		// Vault HMACs web's tenant; the decisions name it.
		"web/acme":   {Role: "web", Tenant: "acme", Mints: 2, Revocations: 4, Allowed: 3, Denied: 1, Denials: map[string]int{"insufficient_scope": 1}},
		"llm/globex": {Role: "llm", Tenant: "globex", Mints: 1, Revocations: 1, Allowed: 4},
		"agent/":     {Role: "agent", Mints: 3, Revocations: 2},
		"/":          {Denied: 1, Denials: map[string]int{"malformed": 1}}, // a key that did not verify names no one
	}
	if len(got) != len(want) {
		t.Fatalf("groups %+v", got)
	}
	for k, w := range want {
		g := got[k]
		if g.Mints != w.Mints || g.Revocations != w.Revocations || g.Allowed != w.Allowed || g.Denied != w.Denied || countString(g.Denials) != countString(w.Denials) {
			t.Errorf("group %s = %+v, want %+v", k, g, w)
		}
	}
	if len(r.TopSpenders) != 1 || r.TopSpenders[0].Credential != meterKey || r.TopSpenders[0].Used != 40 {
		t.Fatalf("top spenders %+v", r.TopSpenders)
	}
	var unused []string
	for _, u := range r.NeverUsed {
		unused = append(unused, u.Credential)
	}
	if strings.Join(unused, ",") != strings.Join([]string{firstJWT, refreshedJWT, loneJWT, norenewKey, cascadeKey}, ",") {
		t.Fatalf("never used %v", unused)
	}
	if len(r.NewSources) != 1 || r.NewSources[0].Kind != "entity" || r.NewSources[0].Value != newcomerEntity || r.NewSources[0].Mints != 1 {
		t.Fatalf("new sources %+v", r.NewSources)
	}
	if !anyContains(r.Notes, "1 lease revocation") {
		t.Fatalf("notes %q", r.Notes)
	}
	// With audit-hash the unmatched lease revocation is matched (norenew,
	// whose cascade then no longer counts: it was revoked before).
	r = BuildReport(l, ReportOptions{Since: since, Until: since.Add(3 * time.Second)}, Options{Hasher: fakeHasher{norenewLease: norenewLeaseHMAC}})
	for _, g := range r.Groups {
		if g.Role == "web" && g.Revocations != 4 {
			t.Fatalf("web with audit-hash: %+v", g)
		}
	}
	if anyContains(r.Notes, "lease revocation") {
		t.Fatalf("notes with audit-hash %q", r.Notes)
	}
	// A window with nothing before it cannot tell new sources.
	r = BuildReport(l, ReportOptions{Since: since.Add(-time.Hour), Until: since.Add(time.Hour)}, Options{})
	if len(r.NewSources) != 0 || !anyContains(r.Notes, "inside the window") {
		t.Fatalf("whole log: %+v %q", r.NewSources, r.Notes)
	}
}

// Output: table, json and csv of one history and one report, against
// golden files (go test ./audit -update rewrites them).
func TestOutputs(t *testing.T) {
	l := loadFiles(t, "lifecycle.log")
	h := BuildHistory(l, "kA1kA1kA1kA1", Options{})
	full := loadFiles(t, "vault-audit.log", "decisions.log")
	since := time.Date(2026, 12, 1, 21, 16, 59, 0, time.UTC)
	rep := BuildReport(full, ReportOptions{Since: since, Until: since.Add(3 * time.Second)}, Options{})
	for _, format := range Formats {
		var out, notes bytes.Buffer
		if err := WriteHistory(&out, &notes, h, format); err != nil {
			t.Fatal(err)
		}
		golden(t, "history."+format, out.String()+notes.String())
		out.Reset()
		notes.Reset()
		if err := WriteReport(&out, &notes, rep, format); err != nil {
			t.Fatal(err)
		}
		golden(t, "report."+format, out.String()+notes.String())
	}

	// csv is rows only, one per event, with the notes elsewhere.
	var out, notes bytes.Buffer
	if err := WriteHistory(&out, &notes, h, "csv"); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(h.Events)+1 || rows[0][3] != "event" || rows[1][3] != "minted" || rows[1][6] != "11111111-1111-1111-1111-111111111111" {
		t.Fatalf("csv rows %q", rows)
	}
	// json round-trips.
	out.Reset()
	if err := WriteHistory(&out, io.Discard, h, "json"); err != nil {
		t.Fatal(err)
	}
	var back History
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || len(back.Events) != len(h.Events) || back.Events[0].Actor.AppRole != "web-app" {
		t.Fatalf("json: %v %+v", err, back)
	}
	// table columns line up.
	out.Reset()
	if err := WriteHistory(&out, io.Discard, h, "table"); err != nil {
		t.Fatal(err)
	}
	var col int
	for _, ln := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(ln, "TIME ") {
			col = strings.Index(ln, "EVENT")
			continue
		}
		if col > 0 && strings.HasPrefix(ln, "2026-") && ln[col-1] != ' ' && ln[col] == ' ' {
			t.Fatalf("misaligned: %q", ln)
		}
	}
	if err := WriteHistory(&out, io.Discard, h, "yaml"); err == nil {
		t.Fatal("an unknown format was accepted")
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./audit -update writes it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (go test ./audit -update rewrites it):\n%s", name, got)
	}
}

func TestVaultHasher(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		var body map[string]string
		_ = json.NewDecoder(r.Body).Decode(&body)
		if r.Method != http.MethodPost || r.URL.Path != "/v1/sys/audit-hash/file" || r.Header.Get("X-Vault-Token") != "tok" ||
			r.Header.Get("X-Vault-Namespace") != "ns1" || body["input"] == "" {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"errors":["permission denied"]}`))
			return
		}
		w.Write([]byte(`{"data":{"hash":"hmac-sha256:` + strings.Repeat("ab", 32) + `"}}`))
	}))
	defer srv.Close()
	h := &VaultHasher{Addr: srv.URL + "/", Token: "tok", Device: "file/", Namespace: "ns1"}
	for i := 0; i < 2; i++ {
		got, err := h.Hash(context.Background(), "xYVDe7I5wMjT")
		if err != nil || got != "hmac-sha256:"+strings.Repeat("ab", 32) {
			t.Fatalf("hash: %q %v", got, err)
		}
	}
	if calls != 1 || h.Calls() != 1 {
		t.Fatalf("%d calls, want 1 (cached)", calls)
	}
	bad := &VaultHasher{Addr: srv.URL, Token: "wrong", Device: "file"}
	if _, err := bad.Hash(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("refused hash: %v", err)
	}
	// A failing hasher is a note, not a wrong answer.
	l := loadFiles(t, "vault-audit.log")
	hist := BuildHistory(l, auditedKey, Options{Hasher: bad})
	if kinds(hist.Events) != "minted,verified,renewed,revoked" || !anyContains(hist.Notes, "audit-hash failed") {
		t.Fatalf("with a failing hasher: %s %q", kinds(hist.Events), hist.Notes)
	}
}

func TestMain_CLI(t *testing.T) {
	run := func(stdin io.Reader, env Env, args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := Main(args, stdin, &out, &errOut, env)
		return code, out.String(), errOut.String()
	}
	for _, args := range [][]string{nil, {"frobnicate"}, {"history"}, {"history", auditedKey}, {"history", "-format", "xml", auditedKey, "x"},
		{"report", "-since", "yesterday", "x"}, {"history", "-audit-device", "file", auditedKey, "x"}} {
		if code, _, _ := run(nil, nil, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, _, errOut := run(nil, nil, "history", auditedKey, "testdata/missing.log"); code != 1 || !strings.Contains(errOut, "missing.log") {
		t.Errorf("missing file: %d %s", code, errOut)
	}
	// Flags after the arguments; stdin as "-".
	dec, _ := os.ReadFile("testdata/decisions.log")
	code, out, errOut := run(bytes.NewReader(dec), nil, "history", auditedKey, "testdata/vault-audit.log", "-", "-format", "json")
	var h History
	if code != 0 || json.Unmarshal([]byte(out), &h) != nil || kinds(h.Events) != "minted,verified,renewed,allowed*3,denied,revoked" {
		t.Fatalf("history: %d %s %s", code, out, errOut)
	}
	code, out, errOut = run(nil, nil, "report", "-since", "2026-12-01T21:16:59Z", "-until", "2026-12-01T21:17:02Z", "-format", "csv", "testdata/vault-audit.log", "testdata/decisions.log")
	if code != 0 || !strings.Contains(out, "top_spender,llm,globex,"+meterKey+",used,40,") || !strings.Contains(errOut, "Notes:") {
		t.Fatalf("report: %d %s %s", code, out, errOut)
	}
	// -audit-device asks the Vault named by VAULT_ADDR, with VAULT_TOKEN.
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]string
		_ = json.NewDecoder(r.Body).Decode(&body)
		asked = append(asked, r.URL.Path+" "+body["input"])
		h := "hmac-sha256:" + strings.Repeat("0", 64)
		if body["input"] == norenewLease {
			h = norenewLeaseHMAC
		}
		json.NewEncoder(w).Encode(map[string]interface{}{"data": map[string]string{"hash": h}})
	}))
	defer srv.Close()
	env := func(k string) string { return map[string]string{"VAULT_ADDR": srv.URL, "VAULT_TOKEN": "t"}[k] }
	code, out, errOut = run(nil, env, "history", "-audit-device", "file", norenewKey, "testdata/vault-audit.log")
	if code != 0 || !strings.Contains(out, "lease revoke (sys/leases/revoke)") || len(asked) != 2 || asked[1] != "/v1/sys/audit-hash/file "+norenewLease {
		t.Fatalf("with -audit-device: %d %q\n%s%s", code, asked, out, errOut)
	}
}

func hasHidden(hs []Hidden, mount, side, field string) bool {
	for _, h := range hs {
		if h.Mount == mount && h.Side == side && h.Field == field {
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

func findRecord(t *testing.T, l *Log, f func(*Record) bool) *Record {
	t.Helper()
	for _, r := range l.Records {
		if f(r) {
			return r
		}
	}
	t.Fatal("no such record")
	return nil
}

// Key paths in both layouts: keys/<role>/id/<key_id>/... (since issue 23)
// and keys/id/<key_id>/... (audit logs of older plugins).
func TestKeyPathSegments(t *testing.T) {
	for _, c := range []struct {
		path, id, op string
	}{
		{"keys/web/id/kA1kA1kA1kA1/rotate", "kA1kA1kA1kA1", "rotate"},
		{"keys/web/id/kA1kA1kA1kA1", "kA1kA1kA1kA1", ""},
		{"keys/id/kA1kA1kA1kA1/suspend", "kA1kA1kA1kA1", "suspend"},
		{"keys/id/kA1kA1kA1kA1", "kA1kA1kA1kA1", ""},
		{"keys/web", "", ""},
		{"keys/web/id", "", ""},
		{"keys/id", "", ""},
		{"roles/web/suspend", "", ""},
	} {
		segs := strings.Split(c.path, "/")
		if id, op := keyPathID(segs), keyOp(segs); id != c.id || op != c.op {
			t.Errorf("%s: id %q op %q, want %q %q", c.path, id, op, c.id, c.op)
		}
	}
}

// The same life on the per-role paths (keys/<role>/id/<key_id>/..., since
// issue 23) reads as on the old ones; a budget change under
// budget/<role>/<id> is the credential's.
func TestHistoryPerRolePaths(t *testing.T) {
	raw, err := os.ReadFile("testdata/lifecycle.log")
	if err != nil {
		t.Fatal(err)
	}
	raw = bytes.ReplaceAll(raw, []byte(`keybroker/keys/id/kA1kA1kA1kA1`), []byte(`keybroker/keys/web/id/kA1kA1kA1kA1`))
	raw = bytes.ReplaceAll(raw, []byte(`keybroker/keys/web/id/kA1kA1kA1kA1/resume`), []byte(`keybroker/budget/web/kA1kA1kA1kA1`))
	l, err := Load([]Input{{Name: "x", R: bytes.NewReader(raw)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ id, kinds string }{
		{"kA1kA1kA1kA1", "minted,suspended,budget_changed,role_suspended,role_resumed,rotated,revoked,revoke_refused"},
		{"kA2kA2kA2kA2", "minted,revoked,verified"},
	} {
		if got := kinds(BuildHistory(l, tc.id, Options{}).Events); got != tc.kinds {
			t.Errorf("%s: %s, want %s", tc.id, got, tc.kinds)
		}
	}
	if c := BuildHistory(l, "kA2kA2kA2kA2", Options{}).Credentials[0]; c.MintedVia != "rotation" || c.Parent != "kA1kA1kA1kA1" {
		t.Fatalf("rotated key on the per-role path: %+v", c)
	}
}
