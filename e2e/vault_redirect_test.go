package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// A sidecar whose Vault address is a standby reserves and reports a budget
// through it: the standby answers every request with a 307 to the active
// node's same path, the api client sends the request there again, and the
// reserve and the report reach the real Vault with their bodies. The api
// client re-sends a redirected write from the map it was given, never from
// bytes, which it would send as "null": the plugin then refuses the
// reserve for want of an id, and the report for reservation_id "".
func TestBudgetThroughAStandbysRedirect(t *testing.T) {
	const budget, maxCost = 1000, 10
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	key, keyID := meteredKey(t, root, budget, maxCost)

	var (
		mu         sync.Mutex
		redirected = map[string]int{}
	)
	// A standby, as Vault's: it serves nothing, it sends the client on to
	// the active node.
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		redirected[r.URL.Path]++
		mu.Unlock()
		http.Redirect(w, r, v.Addr+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(standby.Close)

	up := newLLMUpstream(t, maxCost)
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.Vault.Address = standby.URL
		c.Upstream = up.URL
		fallback := int64(10)
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/llm", Scopes: []string{"read"}, UsageHeader: "X-Usage-Tokens", Cost: &fallback})
	})
	for i := 0; i < 5; i++ {
		if r := call(t, e.proxy, "GET", "/llm/complete", bearer(key), ""); r.status != http.StatusOK {
			t.Fatalf("request %d: %d %s %s", i, r.status, r.header.Get("X-Keybroker-Reason"), r.body)
		}
	}
	e.stop() // a clean stop reports every use and gives the rest back

	mu.Lock()
	for _, p := range []string{"/v1/keybroker/budget/reserve", "/v1/keybroker/budget/report"} {
		if redirected[p] == 0 {
			t.Errorf("%s never went through the standby (it saw %v)", p, redirected)
		}
	}
	mu.Unlock()
	reserves, reports := budgetRequestsAudited(t, v.AuditLog)
	if len(reserves) == 0 || len(reports) == 0 {
		t.Fatalf("Vault audited %d reserves and %d reports; want some of each", len(reserves), len(reports))
	}
	for _, d := range reserves {
		if d["id"] != keyID {
			t.Errorf("a reserve reached Vault with id %v, want %s (data %v)", d["id"], keyID, d)
		}
	}
	for _, d := range reports {
		if id, _ := d["reservation_id"].(string); id == "" {
			t.Errorf("a report reached Vault with no reservation_id (data %v)", d)
		}
	}
	// The plugin charged what the upstream served and holds nothing back:
	// the report named its reservation and what it used.
	used, reserved, _ := spend(t, root, keyID)
	if used == 0 || used != up.served.Load() || reserved != 0 {
		t.Fatalf("Vault has used %d reserved %d; the upstream served %d", used, reserved, up.served.Load())
	}
}

// budgetRequestsAudited is the request data of every budget reserve and
// report Vault's audit log recorded: what reached Vault, as it was sent.
func budgetRequestsAudited(t *testing.T, auditLog string) (reserves, reports []map[string]interface{}) {
	t.Helper()
	f, err := os.Open(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var entry struct {
			Type    string `json:"type"`
			Request struct {
				Path string                 `json:"path"`
				Data map[string]interface{} `json:"data"`
			} `json:"request"`
		}
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Fatalf("audit log: %v", err)
		}
		if entry.Type != "request" {
			continue
		}
		switch entry.Request.Path {
		case "keybroker/budget/reserve":
			reserves = append(reserves, entry.Request.Data)
		case "keybroker/budget/report":
			reports = append(reports, entry.Request.Data)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return reserves, reports
}
