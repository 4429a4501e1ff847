package e2e

import (
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

// agentRun is one real `vault agent` (the same binary as the server) with
// one of examples/vault-agent's configs, in a directory of its own.
type agentRun struct {
	dir, vaultBin string
	env           []string
	stop          func() // kills the running Agent, as a crash would
}

// log is what Agent printed so far (every run of it).
func (a *agentRun) log(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(a.dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// logins and renewals count Agent's own Vault logins and token renewals.
func (a *agentRun) logins(t *testing.T) int {
	return strings.Count(a.log(t), "authentication successful")
}

func (a *agentRun) renewals(t *testing.T) int {
	return strings.Count(a.log(t), "renewed auth token")
}

// vaultAgent sets up the AppRole with the shipped examples/vault-agent/
// approle.sh (named approle, tokens of the given period), applies tune to
// that AppRole when not nil (to stand for another set-up), and starts Agent
// with example's config.
func vaultAgent(t *testing.T, v *vaultserver.Server, example, name, approle, period string, tune map[string]interface{}) *agentRun {
	t.Helper()
	vaultBin, err := vaultserver.FindVault()
	if err != nil {
		t.Fatal(err)
	}
	root, err := vaultserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	a := &agentRun{dir: t.TempDir(), vaultBin: vaultBin}
	a.env = append(os.Environ(), "VAULT_ADDR="+v.Addr, "VAULT_TOKEN="+v.Client.Token(),
		"PATH="+filepath.Dir(vaultBin)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"TOKEN_PERIOD="+period, "APPROLE="+approle)
	setup := exec.Command("sh", filepath.Join(root, "examples/vault-agent/approle.sh"), name)
	setup.Dir, setup.Env = a.dir, a.env
	if out, err := setup.CombinedOutput(); err != nil {
		t.Fatalf("approle.sh %s: %v\n%s", name, err, out)
	}
	if tune != nil {
		write(t, v.Client, "auth/approle/role/"+approle, tune)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "agent.hcl"), []byte(readExample(t, "vault-agent/"+example)), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start(t)
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("vault agent (%s) output:\n%s", example, a.log(t))
		}
	})
	return a
}

// start runs Agent in a.dir, its output appended to agent.log.
func (a *agentRun) start(t *testing.T) {
	t.Helper()
	logFile, err := os.OpenFile(filepath.Join(a.dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, a.vaultBin, "agent", "-config=agent.hcl")
	cmd.Dir = a.dir
	cmd.Env = append(a.env, "VAULT_TOKEN=")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	a.stop = func() {
		cancel()
		_ = cmd.Wait()
		_ = logFile.Close()
	}
}

// Timings of TestVaultAgentKeepsCredentialsAlive, short so that Agent's
// token crosses several renewal (or max TTL) boundaries within the test.
const (
	agentCredTTL   = 16 * time.Second // the key's ttl and the JWT's token_ttl
	agentThreshold = 0.5              // examples/vault-agent's lease_renewal_threshold
	agentPeriod    = "6s"             // the AppRole's token_period
)

// promisedOverlap is what the docs promise: a credential stays valid for
// (1 - lease_renewal_threshold) of its TTL after its successor is in the
// file, less Agent's ±5% stagger; and 2 s for the whole seconds of
// expires_at, the watch's polling and a busy machine.
var promisedOverlap = time.Duration((1-agentThreshold-0.05)*float64(agentCredTTL)) - 2*time.Second

// Vault Agent's templates of examples/vault-agent, with the AppRole set up
// by its approle.sh (periodic tokens), keep every rendered credential alive:
// each stays valid after its successor is in the file until its own expiry,
// the promised overlap, and is never revoked early, while Agent's token is
// renewed past several periods (no re-login); and the file never holds an
// expired credential. With the AppRole the README used to leave as is
// (tokens with a max TTL), Agent logs in again and Vault revokes what the
// old token minted: the last subtest shows that, so the watch can fail.
func TestVaultAgentKeepsCredentialsAlive(t *testing.T) {
	v := vaultserver.StartT(t)
	ttl := agentCredTTL.String()
	write(t, v.Client, "keybroker/roles/app", map[string]interface{}{
		"scopes": "read", "ttl": ttl, "max_ttl": "1h", "renewable": false,
	})
	write(t, v.Client, "keybroker/roles/agent", map[string]interface{}{
		"scopes": "read", "audiences": "svc", "token_ttl": ttl,
	})
	sc := startSidecar(t, v, nil)

	cases := []struct {
		example, name, file string
		headers             func(cred string) map[string]string
	}{
		{"app.hcl", "app", "api-key", func(k string) map[string]string { return map[string]string{"X-API-Key": k} }},
		{"agent.hcl", "agent", "agent-token", bearer},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := vaultAgent(t, v, tc.example, tc.name, tc.name+"-vault-agent", agentPeriod, nil)
			w := &renderWatch{vault: v.Client, file: filepath.Join(a.dir, tc.file)}
			w.run(t, 60*time.Second, func(w *renderWatch) bool { return len(w.creds) > 0 })
			if status := call(t, sc.proxy, http.MethodGet, "/read", tc.headers(w.creds[0].cred), "").status; status != http.StatusOK {
				t.Fatalf("the rendered credential gets %d from the sidecar, want 200", status)
			}
			w.run(t, 60*time.Second, replacedAndOver(2))
			t.Logf("renders:%s", w)
			checkAlive(t, w)
			// One login over several periods: the token was renewed across
			// them (Agent also renews once right after logging in).
			period, _ := time.ParseDuration(agentPeriod)
			if watched := time.Since(w.creds[0].seen); watched < 3*period {
				t.Errorf("watched %s, less than 3 token periods of %s", watched.Round(time.Second), period)
			}
			if logins, renewals := a.logins(t), a.renewals(t); logins != 1 || renewals < 3 {
				t.Errorf("Agent logged in %d times and renewed its token %d times; want 1 login and renewals across periods", logins, renewals)
			}
		})
	}
	t.Run("restart", func(t *testing.T) { agentRestart(t, v) })
	t.Run("max_ttl", func(t *testing.T) { agentMaxTTL(t, v) })
}

// checkAlive fails t unless every replaced credential the watch saw stayed
// valid for the promised overlap, none was refused before its expiry, and
// none stayed in the file after it.
func checkAlive(t *testing.T, w *renderWatch) {
	t.Helper()
	var shortest time.Duration
	for i, c := range w.creds {
		if !c.died.IsZero() {
			t.Errorf("credential #%d was refused (%s) %s before its expiry", i+1, c.reason, c.expires.Sub(c.died).Round(100*time.Millisecond))
		}
		if c.replaced.IsZero() {
			continue
		}
		o := c.overlap()
		if o < promisedOverlap {
			t.Errorf("credential #%d stayed valid %s after its successor, want at least %s", i+1, o.Round(100*time.Millisecond), promisedOverlap)
		}
		if shortest == 0 || o < shortest {
			shortest = o
		}
	}
	// A second for expires_at's whole seconds.
	if w.stale > time.Second {
		t.Errorf("an expired credential stayed in the file for %s", w.stale.Round(100*time.Millisecond))
	}
	t.Logf("shortest overlap %s of a %s TTL (promised at least %s)", shortest.Round(100*time.Millisecond), agentCredTTL, promisedOverlap)
}

// agentRestart: a stopped Agent (here killed, as in a crash; Agent revokes
// nothing on the way out either) renews its token no more, and the token's
// leases end with it: within one period of its last renewal, at least about
// a third of the period after the stop. With token_period the credentials'
// TTL, the restarted Agent's first render leaves its predecessor that long,
// or to its own expiry when sooner.
func agentRestart(t *testing.T, v *vaultserver.Server) {
	t.Parallel()
	a := vaultAgent(t, v, "app.hcl", "app", "app-restart", agentCredTTL.String(), nil)
	w := &renderWatch{vault: v.Client, file: filepath.Join(a.dir, "api-key")}
	w.run(t, 60*time.Second, func(w *renderWatch) bool { return len(w.creds) > 0 })
	time.Sleep(2 * time.Second)
	a.stop()
	a.start(t)
	w.run(t, 60*time.Second, replacedAndOver(1))
	t.Logf("renders:%s", w)
	c := w.creds[0]
	if want := min(c.expires.Sub(c.replaced), agentCredTTL/3) - time.Second; c.overlap() < want {
		t.Errorf("after the restart the old key stayed valid %s, want at least %s: %s", c.overlap().Round(100*time.Millisecond), want.Round(100*time.Millisecond), w)
	}
	if logins := a.logins(t); logins != 2 {
		t.Errorf("Agent logged in %d times over two runs, want 2", logins)
	}
}

// agentMaxTTL is the failure mode, cheaply: tokens with a max TTL (here
// 9 s) make Agent log in again, and a credential dies before its expiry.
func agentMaxTTL(t *testing.T, v *vaultserver.Server) {
	t.Parallel()
	a := vaultAgent(t, v, "app.hcl", "app", "app-max-ttl", agentPeriod, map[string]interface{}{
		"token_period": 0, "token_ttl": "6s", "token_max_ttl": "9s",
	})
	w := &renderWatch{vault: v.Client, file: filepath.Join(a.dir, "api-key")}
	w.run(t, 60*time.Second, func(w *renderWatch) bool { return w.diedEarly() != nil })
	t.Logf("renders:%s", w)
	if a.logins(t) < 2 {
		t.Errorf("a credential died early without a re-login: %s", w)
	}
}
