package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

func TestMain(m *testing.M) { vaultserver.RunTests(m) }

// placeholder is what a reader would have to replace by hand: <key>,
// <lease_id>, <the key above>.
var placeholder = regexp.MustCompile(`<[a-z][a-z_ ]*>`)

// The commands make dev prints, pasted into bash as printed, run against a
// Vault that make dev's set-up prepared: every line succeeds but the one
// marked "# fails", which must fail. Nothing in the printout is a
// placeholder.
func TestPrintedCommandsRunVerbatim(t *testing.T) {
	v := vaultserver.StartT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	roleID, secretID, err := setUpExample(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	env, err := shellEnv(v, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]string{
		"Env": env, "EnvFile": "/tmp/env", "Version": "v0", "Addr": v.Addr,
		"RoleID": roleID, "SecretID": secretID, "Audit": "/tmp/audit.log", "Log": "/tmp/vault.log",
		"Proxy": "127.0.0.1:8080", "Auth": "127.0.0.1:8081", "Service": "127.0.0.1:9000", "Key": "kb_demo", "Dir": "/tmp",
	}
	var all, try bytes.Buffer
	if err := next.Execute(&all, values); err != nil {
		t.Fatal(err)
	}
	if p := placeholder.FindAllString(all.String(), -1); len(p) > 0 {
		t.Fatalf("make dev prints placeholders %v:\n%s", p, all.String())
	}
	if err := template.Must(template.New("try").Parse(tryVault)).Execute(&try, values); err != nil {
		t.Fatal(err)
	}

	// As a shell runs them, each line stopping the run when it fails; a
	// line marked "# fails" stops it when it succeeds.
	script := []string{"set -eo pipefail", env}
	failing := 0
	for _, line := range strings.Split(try.String(), "\n") {
		if cmd, _, ok := strings.Cut(line, "# fails"); ok {
			line = "if " + cmd + "; then echo 'succeeded, but is shown failing:' " + shellQuote(cmd) + " >&2; exit 1; fi"
			failing++
		}
		script = append(script, line)
	}
	if failing == 0 {
		t.Fatal("no command is shown failing: the test lost what it checks")
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", strings.Join(script, "\n"))
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+cmd.Dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the printed commands, pasted, fail: %v\n%s", err, out)
	}
	// Both verifications (the key, then the agent JWT) said valid.
	if n := len(regexp.MustCompile(`(?m)^valid\s+true$`).FindAll(out, -1)); n != 2 {
		t.Errorf("%d verifications said valid, want 2:\n%s", n, out)
	}
	for _, want := range []string{"revoked_at", "from-the-app", `"keys":[`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the printed commands' output lacks %q:\n%s", want, out)
		}
	}
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(strings.TrimSpace(s), "'", `'\''`) + "'"
}

// Two of make dev's addresses on one port, Vault's cluster listener
// included, are said before anything starts.
func TestCheckFreeSaysWhichAddressesClash(t *testing.T) {
	o := options{addr: "127.0.0.1:48079", proxy: "127.0.0.1:48080", auth: "127.0.0.1:48081", service: "127.0.0.1:48090"}
	err := checkFree(o)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:48080 would be both") || !strings.Contains(err.Error(), "DEV_SIDECAR_LISTEN") {
		t.Fatalf("DEV_ADDR's cluster port on the sidecar's: %v", err)
	}
	// Ports in the ephemeral range may be taken by any connection on the
	// machine at any moment: the free case takes ports the kernel just gave.
	free := freeAddrs(t, 4)
	o = options{addr: free[0], proxy: free[1], auth: free[2], service: free[3]}
	if err := checkFree(o); err != nil && !strings.Contains(err.Error(), "cluster listener") {
		t.Fatalf("distinct free ports: %v", err)
	}
}

// freeAddrs returns n loopback addresses free a moment ago.
func freeAddrs(t *testing.T, n int) []string {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	return addrs
}
