package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// interopDir holds the npm clients the tests drive (package.json and its
// lock); node_modules is installed there on first use.
var interopDir = filepath.Join("testdata", "interop")

var (
	npmOnce sync.Once
	npmErr  error
)

// interop runs testdata/interop/interop.mjs with args and decodes its JSON
// answer into out.
func interop(t *testing.T, out any, args ...string) {
	t.Helper()
	nodeRun(t, out, "interop.mjs", args...)
}

// nodeCmd is node running script in testdata/interop, once the npm
// packages are installed there. It skips the test, saying why, when node
// or the packages cannot be had.
func nodeCmd(t *testing.T, script string, args ...string) *exec.Cmd {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the npm interop tests (dpop, jose, the MCP SDK) need it; apt-get install nodejs npm")
	}
	npmOnce.Do(func() {
		// Installed once per package-lock.json: its hash is kept beside
		// what it installed.
		lock, err := os.ReadFile(filepath.Join(interopDir, "package-lock.json"))
		if err != nil {
			npmErr = err
			return
		}
		sum := fmt.Sprintf("%x", sha256.Sum256(lock))
		stamp := filepath.Join(interopDir, "node_modules", ".keybroker-lock-sha256")
		if b, _ := os.ReadFile(stamp); string(b) == sum {
			return
		}
		npm, err := exec.LookPath("npm")
		if err != nil {
			npmErr = err
			return
		}
		cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = interopDir
		if b, err := cmd.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci: %v: %s", err, strings.TrimSpace(string(b)))
			return
		}
		npmErr = os.WriteFile(stamp, []byte(sum), 0o644)
	})
	if npmErr != nil {
		t.Skipf("cannot install the npm interop clients (dpop, jose, the MCP SDK): %v", npmErr)
	}
	// No script may hang the suite: a client that blocks fails its test.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, node, append([]string{script}, args...)...)
	cmd.Dir = interopDir
	return cmd
}

// nodeRun runs script to its end and decodes its JSON answer into out.
func nodeRun(t *testing.T, out any, script string, args ...string) {
	t.Helper()
	b, err := nodeCmd(t, script, args...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("node %s %s: %v\n%s", script, args[0], err, stderr)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("node %s %s: %v in %q", script, args[0], err, b)
	}
}

// nodeStart starts script, decodes the first line it prints into out, and
// stops it when the test ends.
func nodeStart(t *testing.T, out any, script string, args ...string) {
	t.Helper()
	cmd := nodeCmd(t, script, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		t.Fatalf("node %s: %v", script, err)
	}
	if err := json.Unmarshal(line, out); err != nil {
		t.Fatalf("node %s: %v in %q", script, err, line)
	}
}

// npmKey is a DPoP key made by the dpop package.
type npmKey struct {
	alg        string
	PublicJWK  json.RawMessage `json:"publicJwk"`
	PrivateJWK json.RawMessage `json:"privateJwk"`
	JKT        string          `json:"jkt"`
}

func newNPMKey(t *testing.T, alg string) *npmKey {
	k := &npmKey{alg: alg}
	interop(t, k, "keygen", alg)
	return k
}

// proof is a DPoP proof made by the dpop package.
func (k *npmKey) proof(t *testing.T, htm, htu, token string) string {
	var p struct{ Proof string }
	interop(t, &p, "proof", string(k.PrivateJWK), string(k.PublicJWK), k.alg, htm, htu, token)
	return p.Proof
}

const dpopAgentPolicy = `
path "keybroker/token/svc"     { capabilities = ["update"] }
path "keybroker/token/refresh" { capabilities = ["update"] }
`

// Interop with code nobody here wrote: keys and proofs from the dpop npm
// package, the token checked by jose through the discovery document. An
// agent mints a DPoP-bound token from a role that requires it; the sidecar
// serves a request with a fresh proof, refuses the same proof again, the
// token as a bearer and a proof by another key; a refresh through Vault
// needs a proof by the key and keeps the binding; the upstream never sees
// token or proof.
func TestDPoPWithNPMClients(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	write(t, v.Client, "keybroker/roles/svc", map[string]interface{}{"require_dpop": true, "refresh_ttl": "1h"})
	agent, err := v.LoginAs(ctxT(t), "dpop-agent", dpopAgentPolicy)
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range []string{"ES256", "Ed25519"} {
		t.Run(alg, func(t *testing.T) {
			k := newNPMKey(t, alg)
			minted := write(t, agent, "keybroker/token/svc", map[string]interface{}{"dpop_jwk": string(k.PublicJWK), "audience": "svc"})
			token := minted.Data["token"].(string)
			if minted.Data["token_type"] != "DPoP" {
				t.Fatalf("token_type %v", minted.Data["token_type"])
			}
			var checked struct {
				Payload struct {
					Cnf struct{ JKT string } `json:"cnf"`
				}
				Header struct{ Typ string }
			}
			interop(t, &checked, "verify", v.Addr+"/v1/keybroker/.well-known/openid-configuration", token, "svc")
			if checked.Payload.Cnf.JKT != k.JKT || checked.Header.Typ != "at+jwt" {
				t.Fatalf("jose read cnf.jkt %q typ %q; the dpop package's thumbprint is %q", checked.Payload.Cnf.JKT, checked.Header.Typ, k.JKT)
			}

			// The origin clients address the service by, not the
			// sidecar's listener (a load balancer sits between).
			const origin = "https://api.example.test"
			e := startSidecar(t, v, func(c *sidecar.Config) { c.PublicOrigin = origin })
			dpop := func(proof string) map[string]string {
				return map[string]string{"Authorization": "DPoP " + token, "DPoP": proof}
			}
			good := k.proof(t, "GET", origin+"/read/x", token)
			if r := call(t, e.proxy, "GET", "/read/x?q=1", dpop(good), ""); r.status != http.StatusOK {
				t.Fatalf("a proof from the dpop package: %d %s", r.status, r.body)
			}
			if seen := e.seen(); seen.Get("DPoP") != "" || seen.Get("Authorization") != "" {
				t.Fatalf("the upstream got the proof or the token: %v", seen)
			}
			r := call(t, e.proxy, "GET", "/read/x", dpop(good), "")
			if r.status != http.StatusUnauthorized || r.header.Get("X-Keybroker-Reason") != "dpop_proof_replayed" ||
				!strings.Contains(r.header.Get("WWW-Authenticate"), `error="invalid_dpop_proof"`) {
				t.Fatalf("the same proof again: %d %s %q", r.status, r.header.Get("X-Keybroker-Reason"), r.header.Get("WWW-Authenticate"))
			}
			if r := call(t, e.proxy, "GET", "/read/x", bearer(token), ""); r.status != http.StatusUnauthorized || r.header.Get("X-Keybroker-Reason") != "dpop_required" {
				t.Fatalf("the bound token as a bearer: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
			}
			thief := newNPMKey(t, alg)
			if r := call(t, e.proxy, "GET", "/read/x", dpop(thief.proof(t, "GET", origin+"/read/x", token)), ""); r.status != http.StatusUnauthorized || r.header.Get("X-Keybroker-Reason") != "invalid_dpop_proof" {
				t.Fatalf("a proof by another key: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
			}
			if r := call(t, e.proxy, "POST", "/read/x", dpop(k.proof(t, "GET", origin+"/read/x", token)), ""); r.status != http.StatusUnauthorized {
				t.Fatalf("a GET proof on a POST: %d", r.status)
			}

			// Refresh: a thief's proof is refused and spends nothing; the
			// holder's goes through and the binding stays.
			refreshURL := v.Addr + "/v1/keybroker/token/refresh"
			rt := minted.Data["refresh_token"].(string)
			_, err := agent.Logical().WriteWithContext(ctxT(t), "keybroker/token/refresh", map[string]interface{}{"refresh_token": rt, "dpop_proof": thief.proof(t, "POST", refreshURL, "")})
			if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "another key") {
				t.Fatalf("a refresh with a thief's proof: %v", err)
			}
			again := write(t, agent, "keybroker/token/refresh", map[string]interface{}{"refresh_token": rt, "dpop_proof": k.proof(t, "POST", refreshURL, "")})
			refreshed := again.Data["token"].(string)
			interop(t, &checked, "verify", v.Addr+"/v1/keybroker/.well-known/openid-configuration", refreshed, "svc")
			if checked.Payload.Cnf.JKT != k.JKT {
				t.Fatalf("refreshed token bound to %q, want %q", checked.Payload.Cnf.JKT, k.JKT)
			}
			token = refreshed
			if r := call(t, e.proxy, "GET", "/read/y", dpop(k.proof(t, "GET", origin+"/read/y", refreshed)), ""); r.status != http.StatusOK {
				t.Fatalf("the refreshed token with a proof: %d %s", r.status, r.body)
			}

			// An API key bound to the same key pair, verified from the
			// sidecar's replica: useless alone, served with a proof.
			key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "bound", "dpop_jkt": k.JKT}).Data["key"].(string)
			eventually(t, 10*time.Second, "the bound key's record never reached the sidecar", func() bool {
				return call(t, e.proxy, "GET", "/read/z", bearer(key), "").header.Get("X-Keybroker-Reason") == "dpop_required"
			})
			withKey := map[string]string{"Authorization": "DPoP " + key, "DPoP": k.proof(t, "GET", origin+"/read/z", key)}
			if r := call(t, e.proxy, "GET", "/read/z", withKey, ""); r.status != http.StatusOK {
				t.Fatalf("a bound API key with a proof from the dpop package: %d %s", r.status, r.body)
			}
		})
	}
}
