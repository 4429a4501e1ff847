package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// syncBuffer is a log the sidecar writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startSidecarWithPolicy starts a sidecar logged in with an AppRole of its
// own bound to policyHCL, logging at the default level (info) into the
// returned buffer, and does not wait for it to be ready.
func startSidecarWithPolicy(t *testing.T, v *vaultserver.Server, name, policyHCL string, mutate func(c *sidecar.Config)) (e *sidecarEnv, logs *syncBuffer) {
	t.Helper()
	logs = &syncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Name: "keybroker-sidecar", Output: logs, Level: hclog.Info, JSONFormat: true})
	e = launchSidecar(t, v, func(cfg *sidecar.Config, _ string) {
		roleID, secretID, err := v.AppRole(ctxT(t), name, name, policyHCL)
		if err != nil {
			t.Fatal(err)
		}
		secretFile := filepath.Join(t.TempDir(), "secret-id")
		if err := os.WriteFile(secretFile, []byte(secretID+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Vault.RoleID, cfg.Vault.SecretIDFile = roleID, secretFile
		if mutate != nil {
			mutate(cfg)
		}
	}, log)
	return e, logs
}

// healthz reads /healthz: its status code and body.
func healthz(t *testing.T, auth string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(auth + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// feedState is feeds.<feed>.state of a /healthz body.
func feedState(body map[string]any, feed string) string {
	feeds, _ := body["feeds"].(map[string]any)
	f, _ := feeds[feed].(map[string]any)
	s, _ := f["state"].(string)
	return s
}

// A sidecar whose policy lacks read on keybroker/revocations cannot know
// what was revoked: it lets no credential through (a revoked JWT was
// accepted before), serves public routes, says so at error level with the
// path and capability, in /healthz and in a metric; granted the capability,
// it reads the feed and the revoked JWT is refused as revoked. The same for
// the key-record feed and API keys, with key_replica on.
func TestSidecarWithoutFeedCapability(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	full := readExample(t, "policies/sidecar.hcl")
	noRevocations := regexp.MustCompile(`path\s+"keybroker/revocations"\s*\{[^}]*\}`).ReplaceAllString(full, "")
	noKeyRecords := regexp.MustCompile(`path\s+"keybroker/key-records[^"]*"\s*\{[^}]*\}`).ReplaceAllString(full, "")
	if noRevocations == full || noKeyRecords == full {
		t.Fatal("examples/policies/sidecar.hcl no longer has the blocks this test removes")
	}

	revoked := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"})
	if err := root.Sys().RevokeWithContext(ctxT(t), revoked.LeaseID); err != nil {
		t.Fatal(err)
	}
	good := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	key := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "k"}).Data["key"].(string)

	t.Run("revocations", func(t *testing.T) {
		e, logs := startSidecarWithPolicy(t, v, "sidecar-norevocations", noRevocations, nil)
		// Once Vault has refused a read of the feed (after the JWKS is
		// loaded), the revoked JWT is refused (it was let through).
		eventually(t, 10*time.Second, "the sidecar never read the feed", func() bool {
			return metric(t, e.auth, "keybroker_sidecar_vault_requests_total", `op="revocations",result="error"`) >= 1
		})
		if r := call(t, e.proxy, "GET", "/read", bearer(revoked.Data["token"].(string)), ""); r.status != http.StatusServiceUnavailable || r.body == "upstream ok" {
			t.Fatalf("a revoked JWT, the revocation feed unread: %d %s %q", r.status, r.header.Get("X-Keybroker-Reason"), r.body)
		}
		eventually(t, 10*time.Second, "healthz never said the revocation feed is forbidden", func() bool {
			code, body := healthz(t, e.auth)
			return code == http.StatusServiceUnavailable && body["status"] == "forbidden" && feedState(body, "revocations") == "forbidden"
		})
		_, body := healthz(t, e.auth)
		if needs := body["feeds"].(map[string]any)["revocations"].(map[string]any)["needs"]; needs != "read on keybroker/revocations" {
			t.Errorf("healthz needs = %v", needs)
		}
		for name, cred := range map[string]string{"revoked JWT": revoked.Data["token"].(string), "good JWT": good, "API key": key} {
			r := call(t, e.proxy, "GET", "/read", bearer(cred), "")
			if r.status != http.StatusServiceUnavailable || r.header.Get("X-Keybroker-Reason") != "revocations_unknown" || r.header.Get("Retry-After") == "" || r.body == "upstream ok" {
				t.Errorf("%s: %d %s %q", name, r.status, r.header.Get("X-Keybroker-Reason"), r.body)
			}
		}
		if r := call(t, e.proxy, "GET", "/public/x", nil, ""); r.status != 200 || r.body != "upstream ok" {
			t.Errorf("public route: %d %q", r.status, r.body)
		}
		if m := metric(t, e.auth, "keybroker_sidecar_feed_state", `feed="revocations",state="forbidden"`); m != 1 {
			t.Errorf("feed_state{revocations,forbidden} = %v", m)
		}
		var errorLines int
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `"@level":"error"`) && strings.Contains(l, `"path":"keybroker/revocations"`) && strings.Contains(l, `"capability":"read"`) {
				errorLines++
			}
			if strings.Contains(strings.ToLower(l), "unreachable") {
				t.Errorf("a 403 logged as unreachable: %s", l)
			}
		}
		if errorLines != 1 {
			t.Errorf("%d error lines naming keybroker/revocations and read; want 1:\n%s", errorLines, logs)
		}

		// Granted, the feed is read: the revoked JWT is refused as such.
		if err := root.Sys().PutPolicyWithContext(ctxT(t), "sidecar-norevocations", full); err != nil {
			t.Fatal(err)
		}
		eventually(t, 25*time.Second, "sidecar never became ready once granted the feed", func() bool {
			code, _ := healthz(t, e.auth)
			return code == http.StatusOK
		})
		if r := call(t, e.proxy, "GET", "/read", bearer(revoked.Data["token"].(string)), ""); r.status != 401 || r.header.Get("X-Keybroker-Reason") != "revoked" {
			t.Errorf("revoked JWT once the feed is read: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
		}
		if r := call(t, e.proxy, "GET", "/read", bearer(good), ""); r.status != 200 {
			t.Errorf("good JWT once the feed is read: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
		}
	})

	t.Run("key records", func(t *testing.T) {
		e, logs := startSidecarWithPolicy(t, v, "sidecar-nokeyrecords", noKeyRecords, nil)
		eventually(t, 10*time.Second, "healthz never said the key-record feed is forbidden", func() bool {
			code, body := healthz(t, e.auth)
			return code == http.StatusServiceUnavailable && feedState(body, "key_records") == "forbidden" && feedState(body, "revocations") == "ok"
		})
		if r := call(t, e.proxy, "GET", "/read", bearer(key), ""); r.status != http.StatusServiceUnavailable || r.header.Get("X-Keybroker-Reason") != "key_records_unknown" {
			t.Errorf("API key: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
		}
		// JWTs do not depend on the key records.
		if r := call(t, e.proxy, "GET", "/read", bearer(good), ""); r.status != 200 {
			t.Errorf("JWT: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
		}
		if m := metric(t, e.auth, "keybroker_sidecar_feed_state", `feed="key_records",state="forbidden"`); m != 1 {
			t.Errorf("feed_state{key_records,forbidden} = %v", m)
		}
		if !strings.Contains(logs.String(), `"path":"keybroker/key-records and keybroker/key-records/snapshot"`) {
			t.Errorf("no error naming the key-record paths:\n%s", logs)
		}
	})
}
