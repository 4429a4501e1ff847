// Command dev is `make dev`: a dev Vault on loopback with the keybroker
// plugin registered by sha256 and enabled at keybroker/, a file audit device,
// an example role and an AppRole app allowed to mint only from it. It prints
// what to try next and stops everything on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/template"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

const exampleRole = "example"

// examplePolicy lets the example app mint from the example role and nothing else.
const examplePolicy = `# Mint API keys and agent JWTs from keybroker role "example" only.
path "keybroker/keys/example" {
  capabilities = ["update"]
}
path "keybroker/token/example" {
  capabilities = ["update"]
}
path "keybroker/token/refresh" {
  capabilities = ["update"]
}
`

func main() {
	addr := flag.String("addr", "127.0.0.1:8200", "address the dev Vault listens on")
	plugin := flag.String("plugin", "bin/vault-plugin-secrets-keybroker", "plugin binary")
	version := flag.String("version", "v0.1.0-dev", "version the plugin binary reports")
	dir := flag.String("dir", ".dev", "directory for logs and the audit log; emptied at start")
	flag.Parse()
	if err := run(*addr, *plugin, *version, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "make dev:", err)
		os.Exit(1)
	}
}

func run(addr, plugin, version, dir string) error {
	if l, err := net.Listen("tcp", addr); err != nil {
		return fmt.Errorf("%s is in use (is another `make dev` still running?): stop it, or run `make dev DEV_ADDR=127.0.0.1:8300`", addr)
	} else {
		l.Close()
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Println("starting Vault...")
	v, err := vaultserver.Start(ctx, vaultserver.Options{Addr: addr, Dir: dir, PluginBinary: plugin, PluginVersion: version})
	if err != nil {
		return err
	}
	defer v.Stop()

	if _, err := v.Client.Logical().WriteWithContext(ctx, "keybroker/roles/"+exampleRole, map[string]interface{}{
		"scopes":         "read,write",
		"default_scopes": "read",
		"ttl":            "1h",
		"max_ttl":        "24h",
		"bound_cidrs":    "127.0.0.0/8,::1/128",
		"tenant":         "demo",
		"audiences":      "demo-api",
		"token_ttl":      "15m",
		"refresh_ttl":    "1h",
	}); err != nil {
		return fmt.Errorf("creating the example role: %w", err)
	}
	roleID, secretID, err := v.AppRole(ctx, "example-app", "keybroker-example", examplePolicy)
	if err != nil {
		return err
	}
	envFile := filepath.Join(dir, "env")
	if err := os.WriteFile(envFile, []byte(fmt.Sprintf("export VAULT_ADDR=%s\nexport VAULT_TOKEN=%s\n", v.Addr, v.RootToken)), 0o600); err != nil {
		return err
	}

	if err := next.Execute(os.Stdout, map[string]string{
		"Addr": v.Addr, "Token": v.RootToken, "EnvFile": envFile, "Version": version,
		"RoleID": roleID, "SecretID": secretID, "Audit": v.AuditLog, "Log": v.LogFile,
	}); err != nil {
		return err
	}

	select {
	case <-ctx.Done():
		fmt.Println("\nstopping Vault...")
	case <-v.Done():
		return errors.New("vault exited; see " + v.LogFile)
	}
	v.Stop()
	time.Sleep(100 * time.Millisecond)
	return nil
}

var next = template.Must(template.New("next").Parse(`
keybroker is running: Vault {{.Addr}} with vault-plugin-secrets-keybroker {{.Version}}
enabled at keybroker/, a file audit device, role "example" and AppRole "example-app".

In another terminal:

  export VAULT_ADDR={{.Addr}}
  export VAULT_TOKEN={{.Token}}        # or: source {{.EnvFile}}

  # mint a key (the plaintext is shown once), then verify it
  vault write keybroker/keys/example name=my-first-key
  vault write keybroker/verify key=<key> remote_addr=127.0.0.1 scopes=read

  # look it up, revoke it, and watch the revocation feed
  vault read keybroker/keys/id/<key_id>
  vault lease revoke <lease_id>
  vault read keybroker/revocations after=0

  # as the example app: log in with AppRole, mint from the one role it may use
  export APP_TOKEN=$(vault write -field=token auth/approle/login \
      role_id={{.RoleID}} secret_id={{.SecretID}})
  VAULT_TOKEN=$APP_TOKEN vault write keybroker/keys/example name=from-the-app
  VAULT_TOKEN=$APP_TOKEN vault write keybroker/keys/other name=denied    # 403

  # an agent JWT (sub is the app's Vault entity), verified against the public keys
  VAULT_TOKEN=$APP_TOKEN vault write -f keybroker/token/example
  vault write keybroker/verify credential=<token> remote_addr=127.0.0.1
  curl -s {{.Addr}}/v1/keybroker/jwks                       # no Vault token needed
  curl -s {{.Addr}}/v1/keybroker/.well-known/openid-configuration

  vault path-help keybroker/keys/example

Audit log: {{.Audit}}
Vault log: {{.Log}}
Ctrl-C stops Vault.
`))
