package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// A Go service verifying in process (sidecar.Middleware, as
// examples/embedded does) against the real Vault: API keys from the
// replica, JWTs offline, revocation followed, and a metered route charged
// the usage its own handler reports, with the spend in Vault after Stop.
func TestEmbeddedMiddleware(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	write(t, v.Client, "keybroker/roles/metered", map[string]interface{}{
		"scopes": "read", "budget": 1000, "max_cost_per_request": 10, "budget_period": "24h",
	})

	cfg := sidecarConfig(t, v, "")
	cfg.Upstream = ""
	cost := int64(1)
	cfg.Routes = append(cfg.Routes, sidecar.RouteConfig{PathPrefix: "/llm", Scopes: []string{"read"}, UsageHeader: "X-Usage-Tokens", Cost: &cost})
	verifier, err := sidecar.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := verifier.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			verifier.Stop()
			cancel()
		}
	}
	t.Cleanup(stop)

	mux := http.NewServeMux()
	mux.HandleFunc("/read/", func(w http.ResponseWriter, r *http.Request) {
		id, _ := sidecar.IdentityFrom(r.Context())
		fmt.Fprintf(w, "%s %s %s", id.Role, id.KeyID, id.JTI)
	})
	mux.HandleFunc("/llm/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Usage-Tokens", "7")
		fmt.Fprint(w, "answer")
	})
	srv := httptest.NewServer(verifier.Middleware(mux))
	t.Cleanup(srv.Close)
	eventually(t, 15*time.Second, "the embedded verifier never became ready", verifier.Ready)

	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "embedded", "scopes": "read"})
	keyID := key.Data["key_id"].(string)
	apiKey := map[string]string{"X-API-Key": key.Data["key"].(string)}
	tok := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data

	if r := call(t, srv.URL, "GET", "/read/x", apiKey, ""); r.status != 200 || r.body != "svc "+keyID+" " {
		t.Fatalf("API key: %d %q", r.status, r.body)
	}
	if r := call(t, srv.URL, "GET", "/read/x", bearer(tok["token"].(string)), ""); r.status != 200 || r.body != "svc  "+tok["jti"].(string) {
		t.Fatalf("JWT: %d %q", r.status, r.body)
	}
	if r := call(t, srv.URL, "GET", "/read/admin/x", apiKey, ""); r.status != 403 || r.header.Get("X-Keybroker-Reason") != "insufficient_scope" {
		t.Fatalf("admin with a read key: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
	}
	if r := call(t, srv.URL, "GET", "/read/../read/admin/x", apiKey, ""); r.status != 400 {
		t.Fatalf("dot segments: %d", r.status)
	}

	// Revocation reaches the embedded verifier through the feed.
	if _, err := v.Client.Logical().DeleteWithContext(ctxT(t), "keybroker/keys/svc/id/"+keyID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "a revoked key kept working in the embedded verifier", func() bool {
		return call(t, srv.URL, "GET", "/read/x", apiKey, "").status == 401
	})

	// Metered: each call is charged the 7 its handler reports.
	metered := write(t, v.Client, "keybroker/keys/metered", map[string]interface{}{"name": "m"})
	mid := metered.Data["key_id"].(string)
	mkey := map[string]string{"X-API-Key": metered.Data["key"].(string)}
	for i := 0; i < 3; i++ {
		r := call(t, srv.URL, "GET", "/llm/chat", mkey, "")
		if r.status != 200 || r.header.Get("X-Budget-Remaining") == "" {
			t.Fatalf("metered call %d: %d remaining %q", i, r.status, r.header.Get("X-Budget-Remaining"))
		}
	}
	srv.Close()
	stop()
	if used, reserved, _ := spend(t, v.Client, mid); used != 21 || reserved != 0 {
		t.Fatalf("after Stop: used %d reserved %d, want 21 used (3 x 7) and nothing held", used, reserved)
	}
}
