package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// vaultAgent runs the real `vault agent` (the same binary as the server)
// with one of examples/vault-agent's configs, in a directory of its own
// holding the AppRole credentials, and returns that directory.
func vaultAgent(t *testing.T, v *vaultserver.Server, example, approle string) string {
	t.Helper()
	vaultBin, err := vaultserver.FindVault()
	if err != nil {
		t.Fatal(err)
	}
	roleID, secretID, err := v.AppRole(ctxT(t), approle, approle+"-policy", readExample(t, "vault-agent/"+approle+"-policy.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, content := range map[string]string{
		"role-id": roleID, "secret-id": secretID, "agent.hcl": readExample(t, "vault-agent/"+example),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, vaultBin, "agent", "-config=agent.hcl")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+v.Addr, "VAULT_TOKEN=")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("vault agent (%s) output:\n%s", example, log.String())
		}
	})
	return dir
}

// rendered waits for file to hold something other than prev and returns it.
func rendered(t *testing.T, file, prev string, within time.Duration) string {
	t.Helper()
	var got string
	eventually(t, within, "vault agent did not (re-)render "+filepath.Base(file), func() bool {
		b, err := os.ReadFile(file)
		got = strings.TrimSpace(string(b))
		return err == nil && got != "" && got != prev
	})
	return got
}

// The natural templates work with the real Vault Agent: an app's API key
// (role renewable=false) and an agent's JWT (a read of token/<role>) are
// rendered, re-rendered before they expire, and pass a running sidecar;
// when a credential is replaced, the old one keeps working for a real
// overlap, not the last seconds of its life.
func TestVaultAgentTemplates(t *testing.T) {
	v := vaultserver.StartT(t)
	const ttl = 20 * time.Second
	write(t, v.Client, "keybroker/roles/app", map[string]interface{}{
		"scopes": "read", "ttl": "20s", "max_ttl": "1h", "renewable": false,
	})
	write(t, v.Client, "keybroker/roles/agent", map[string]interface{}{
		"scopes": "read", "audiences": "svc", "token_ttl": "20s",
	})
	sc := startSidecar(t, v, nil)

	cases := []struct {
		example, approle, file string
		headers                func(cred string) map[string]string
	}{
		{"app.hcl", "app", "api-key", func(k string) map[string]string { return map[string]string{"X-API-Key": k} }},
		{"agent.hcl", "agent", "agent-token", bearer},
	}
	dirs := make([]string, len(cases))
	for i, tc := range cases {
		dirs[i] = vaultAgent(t, v, tc.example, tc.approle)
	}
	for i, tc := range cases {
		t.Run(tc.approle, func(t *testing.T) {
			t.Parallel() // both agents run from the start: time each from its first render
			file := filepath.Join(dirs[i], tc.file)
			first := rendered(t, file, "", 30*time.Second)
			firstAt := time.Now()
			passes := func(cred string) bool {
				return call(t, sc.proxy, http.MethodGet, "/read", tc.headers(cred), "").status == http.StatusOK
			}
			if !passes(first) {
				t.Fatalf("the rendered credential does not pass the sidecar")
			}
			second := rendered(t, file, first, ttl)
			if since := time.Since(firstAt); since > ttl*3/4 {
				t.Fatalf("re-rendered after %s of a %s lifetime: too late for an overlap", since.Round(time.Second), ttl)
			}
			secondAt := time.Now()
			if !passes(second) || !passes(first) {
				t.Fatalf("after the re-render: new passes %v, old passes %v; want both", passes(second), passes(first))
			}
			// The old credential ends with its own lifetime, not at the re-render.
			eventually(t, ttl+10*time.Second, "the replaced credential never stopped working", func() bool { return !passes(first) })
			if overlap := time.Since(secondAt); overlap < ttl/5 {
				t.Fatalf("old and new both worked for only %s", overlap.Round(time.Second))
			}
			if !passes(second) {
				t.Fatal("the successor stopped working with its predecessor")
			}
		})
	}
}
