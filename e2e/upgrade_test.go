package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// readmeBlock returns the one fenced code block of docs/operations.md that contains
// marker.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	root, err := vaultserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	parts := strings.Split(string(b), "```")
	for i := 1; i < len(parts); i += 2 { // the odd parts are inside fences
		if block := parts[i]; strings.Contains(block, marker) {
			_, body, _ := strings.Cut(block, "\n") // the info string ("sh")
			found = append(found, body)
		}
	}
	if len(found) != 1 {
		t.Fatalf("docs/operations.md has %d code blocks with %q, want 1", len(found), marker)
	}
	return found[0]
}

// The upgrade recipe of docs/operations.md ("Upgrade the plugin"),
// run as written on a running mount with a sidecar in front: the only
// changes are the plugin directory (a temporary one, not /etc/vault/plugins)
// and the build, which the test does itself with the version the recipe
// names. Its -env VAULT_API_ADDR is left as the page spells it, an address
// that is not this Vault's: the issuer must not follow it. Keys and JWTs
// minted before pass at the sidecar and at keybroker/verify, minting goes
// on with the same issuer, the sidecar stays ready throughout, and a
// sidecar started afterwards becomes ready.
func TestUpgradeAsTheDocsSay(t *testing.T) {
	const newVersion = "v0.2.0"
	script := readmeBlock(t, "vault secrets tune -plugin-version="+newVersion+" keybroker/")
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	e := startSidecar(t, v, nil)

	key := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "before the upgrade"}).Data["key"].(string)
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"})
	token := jwt.Data["token"].(string)
	issBefore := discoveryIssuer(t, v)
	passes := func(where string, e *sidecarEnv, cred string) {
		t.Helper()
		h := map[string]string{"X-API-Key": cred}
		if strings.Count(cred, ".") == 2 {
			h = bearer(cred)
		}
		if r := call(t, e.proxy, "GET", "/read", h, ""); r.status != 200 {
			t.Fatalf("%s: %d %s", where, r.status, r.header.Get("X-Keybroker-Reason"))
		}
		if ans := write(t, root, "keybroker/verify", map[string]interface{}{"credential": cred, "remote_addr": "127.0.0.1"}); ans.Data["valid"] != true {
			t.Fatalf("%s: keybroker/verify %v", where, ans.Data)
		}
	}
	passes("key before the upgrade", e, key)
	passes("JWT before the upgrade", e, token)

	// The new build, where the recipe's `make build` leaves it.
	rootDir, err := vaultserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	if err := os.MkdirAll(filepath.Join(work, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := vaultserver.BuildPlugin(ctx, rootDir, filepath.Join(work, "bin"), newVersion); err != nil {
		t.Fatal(err)
	}
	vaultBin, err := vaultserver.FindVault()
	if err != nil {
		t.Fatal(err)
	}
	pathDir := t.TempDir()
	if err := os.Symlink(vaultBin, filepath.Join(pathDir, "vault")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"make build VERSION=" + newVersion + "\n", "/etc/vault/plugins/", "https://vault.example.com:8200"} {
		if !strings.Contains(script, s) {
			t.Fatalf("the upgrade recipe of docs/operations.md no longer has %q, which this test relies on:\n%s", s, script)
		}
	}
	script = strings.NewReplacer(
		"make build VERSION="+newVersion+"\n", "", // built above
		"/etc/vault/plugins/", v.PluginDir+"/",
	).Replace(script)

	// The sidecar's readiness, watched all through the upgrade.
	var polls, notReady atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			resp, err := http.Get(e.auth + "/healthz")
			polls.Add(1)
			if err != nil || resp.StatusCode != http.StatusOK {
				notReady.Add(1)
			}
			if err == nil {
				resp.Body.Close()
			}
		}
	})

	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail\n"+script)
	cmd.Dir = work
	cmd.Env = []string{"PATH=" + pathDir + ":" + os.Getenv("PATH"), "HOME=" + work, "VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.RootToken}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the upgrade recipe of docs/operations.md failed: %v\n%s\n--- recipe as run:\n%s", err, out, script)
	}
	t.Logf("recipe output:\n%s", out)
	mounts, err := root.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts["keybroker/"]; m == nil || m.RunningVersion != newVersion || !strings.Contains(string(out), newVersion) {
		t.Fatalf("after the upgrade keybroker/ runs %+v; recipe output:\n%s", m, out)
	}

	// Minted before: still pass. Minting goes on, under the same issuer.
	passes("key minted before, after the upgrade", e, key)
	passes("JWT minted before, after the upgrade", e, token)
	if iss := discoveryIssuer(t, v); iss != issBefore {
		t.Fatalf("issuer after the upgrade %q, before %q", iss, issBefore)
	}
	newKey := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "after the upgrade"}).Data["key"].(string)
	newToken := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	eventually(t, 3*time.Second, "a key minted after the upgrade never passed", func() bool {
		return call(t, e.proxy, "GET", "/read", map[string]string{"X-API-Key": newKey}, "").status == 200
	})
	passes("JWT minted after the upgrade", e, newToken)
	close(stop)
	wg.Wait()
	if n := notReady.Load(); n > 0 || polls.Load() == 0 {
		t.Fatalf("the sidecar was not ready at %d of %d polls during the upgrade", n, polls.Load())
	}

	// A sidecar started now finds the issuer and becomes ready
	// (startSidecar waits for it), and takes both generations.
	e2 := startSidecar(t, v, nil)
	for _, c := range []string{key, token, newKey, newToken} {
		passes("a sidecar started after the upgrade", e2, c)
	}
}

// discoveryIssuer reads the mount's discovery document's issuer.
func discoveryIssuer(t *testing.T, v *vaultserver.Server) string {
	t.Helper()
	resp, err := http.Get(v.Addr + "/v1/keybroker/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if resp.StatusCode != 200 {
		t.Fatalf("discovery: %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || doc.Issuer == "" {
		t.Fatalf("discovery: %v %+v", err, doc)
	}
	return doc.Issuer
}
