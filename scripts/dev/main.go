// Command dev is `make dev`: a dev Vault on loopback with the keybroker
// plugin registered by sha256 and enabled at keybroker/, a file audit device,
// an example role and an AppRole app allowed to mint only from it, and
// keybroker-sidecar (logged in with its own AppRole) in front of a demo
// service. It prints what to try next and stops everything on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/hashicorp/vault/api"

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

type options struct {
	addr, plugin, version, dir    string
	sidecar, proxy, auth, service string
	cluster                       bool
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8200", "address the dev Vault listens on")
	flag.StringVar(&o.plugin, "plugin", "bin/vault-plugin-secrets-keybroker", "plugin binary")
	flag.StringVar(&o.version, "version", "v0.1.0-dev", "version the plugin binary reports")
	flag.StringVar(&o.dir, "dir", ".dev", "directory for logs, configs and the audit log; emptied at start")
	flag.StringVar(&o.sidecar, "sidecar", "bin/keybroker-sidecar", "sidecar binary")
	flag.StringVar(&o.proxy, "proxy", "127.0.0.1:8080", "address of the sidecar's reverse proxy")
	flag.StringVar(&o.auth, "auth", "127.0.0.1:8081", "address of the sidecar's /verify, /healthz and /metrics")
	flag.StringVar(&o.service, "service", "127.0.0.1:9000", "address of the demo service behind the sidecar")
	flag.BoolVar(&o.cluster, "cluster", false, "run a 3-node Raft HA cluster (make cluster) instead of one dev server")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "make dev:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if err := checkFree(o); err != nil {
		return err
	}
	addr, plugin, version := o.addr, o.plugin, o.version
	dir, err := filepath.Abs(o.dir)
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

	var v *vaultserver.Server
	var cluster *vaultserver.Cluster
	if o.cluster {
		fmt.Println("starting a 3-node Vault cluster (integrated storage)...")
		if cluster, err = vaultserver.StartCluster(ctx, vaultserver.ClusterOptions{Nodes: 3, Dir: dir, PluginBinary: plugin, PluginVersion: version}); err != nil {
			return err
		}
		defer cluster.Stop()
		// Everything, the sidecar included, talks to a standby, which
		// forwards to the active node: kill the active node and watch.
		active, err := cluster.WaitActive(ctx)
		if err != nil {
			return err
		}
		for _, n := range cluster.Nodes {
			if n != active {
				v = cluster.Server(n)
				break
			}
		}
	} else {
		fmt.Println("starting Vault...")
		if v, err = vaultserver.Start(ctx, vaultserver.Options{Addr: addr, Dir: dir, PluginBinary: plugin, PluginVersion: version}); err != nil {
			return err
		}
		defer v.Stop()
	}

	roleID, secretID, err := setUpExample(ctx, v)
	if err != nil {
		return err
	}
	sidecarCmd, demoKey, err := startSidecar(ctx, v, o, dir)
	if err != nil {
		return err
	}
	defer stopProcess(sidecarCmd)
	service := startService(o.service)
	defer service.Close()

	env, err := shellEnv(v, filepath.Dir(o.sidecar))
	if err != nil {
		return err
	}
	envFile := filepath.Join(dir, "env")
	if err := os.WriteFile(envFile, []byte(env), 0o600); err != nil {
		return err
	}

	if err := next.Execute(os.Stdout, map[string]string{
		"Env": env, "EnvFile": envFile, "Version": version, "Addr": v.Addr,
		"RoleID": roleID, "SecretID": secretID, "Audit": v.AuditLog, "Log": v.LogFile,
		"Proxy": o.proxy, "Auth": o.auth, "Service": o.service, "Key": demoKey, "Dir": dir,
	}); err != nil {
		return err
	}
	if cluster != nil {
		printCluster(ctx, cluster, v, o.proxy, demoKey)
	}

	sidecarDone := make(chan error, 1)
	go func() { sidecarDone <- sidecarCmd.Wait() }()
	select {
	case <-ctx.Done():
		fmt.Println("\nstopping the sidecar and Vault...")
	case <-v.Done():
		return errors.New("vault exited; see " + v.LogFile)
	case err := <-sidecarDone:
		return fmt.Errorf("the sidecar exited (%v); see %s", err, filepath.Join(dir, "sidecar.log"))
	}
	// The sidecar sends its last usage report as it stops: Vault must still
	// be up to take it, or the report fails with a 500 from a Vault
	// shutting down.
	stopProcess(sidecarCmd)
	select {
	case <-sidecarDone:
	case <-time.After(10 * time.Second):
	}
	v.Stop()
	time.Sleep(100 * time.Millisecond)
	return nil
}

// next is what make dev prints once everything runs.
var next = template.Must(template.New("next").Parse(`
keybroker is running: Vault {{.Addr}} with vault-plugin-secrets-keybroker {{.Version}}
enabled at keybroker/, a file audit device, role "example" and AppRole "example-app".

In another terminal, paste these lines (or: source {{.EnvFile}}):

{{.Env}}
` + tryVault + "\n" + trySidecar))

// tryVault are the printed commands that need only Vault: pasted as they
// are, they run (main_test.go runs them), so each value a later line needs
// is kept in a shell variable with -field=, never left as a <placeholder>.
const tryVault = `  # mint a key (its plaintext is shown once: keep it), then verify it
  KEY=$(vault write -field=key keybroker/keys/example name=my-first-key)
  vault write keybroker/verify key="$KEY" remote_addr=127.0.0.1 scopes=read

  # look it up by its id (the key's middle part), revoke it, watch the feed
  KEY_ID=$(echo "$KEY" | cut -d_ -f2)
  vault read keybroker/keys/id/$KEY_ID
  vault delete keybroker/keys/example/id/$KEY_ID
  vault read keybroker/revocations after=0

  # as the example app: log in with AppRole, mint from the one role it may use
  export APP_TOKEN=$(vault write -field=token auth/approle/login \
      role_id={{.RoleID}} secret_id={{.SecretID}})
  VAULT_TOKEN=$APP_TOKEN vault write keybroker/keys/example name=from-the-app
  VAULT_TOKEN=$APP_TOKEN vault write keybroker/keys/other name=denied    # fails: 403

  # an agent JWT (sub is the app's Vault entity), verified against the public keys
  TOKEN=$(VAULT_TOKEN=$APP_TOKEN vault write -f -field=token keybroker/token/example)
  vault write keybroker/verify credential="$TOKEN" remote_addr=127.0.0.1
  curl -s {{.Addr}}/v1/keybroker/jwks                       # no Vault token needed
  curl -s {{.Addr}}/v1/keybroker/.well-known/openid-configuration

  vault path-help keybroker/keys/example
`

// trySidecar is the sidecar's part, with the demo key it was minted.
const trySidecar = `keybroker-sidecar runs in front of a demo service ({{.Service}}): reverse proxy on
{{.Proxy}}, gateway endpoint {{.Auth}}/verify, metrics on {{.Auth}}/metrics.
With a key minted for you (scope read, a budget of 1000 requests a day):

  curl -i -H 'X-API-Key: {{.Key}}' http://{{.Proxy}}/v1/read/hello          # 200, identity passed on, X-Budget-Remaining
  curl -i -H 'X-API-Key: {{.Key}}' -X POST http://{{.Proxy}}/v1/write/hello  # 403 insufficient_scope
  curl -i -H 'X-API-Key: {{.Key}}' --path-as-is http://{{.Proxy}}/v1/read/../write/x  # 400 non_canonical_path
  curl -i -H 'X-API-Key: {{.Key}}' http://{{.Auth}}/verify/v1/read/hello     # a gateway's view: 200 and identity headers
  curl -s http://{{.Auth}}/metrics | grep key_records   # the sidecar verifies keys from its replica, no Vault call

  # what the sidecar holds of each key (its hash, never the key), and the changes it follows
  vault read keybroker/key-records/snapshot
  vault read keybroker/key-records after=0

Audit log: {{.Audit}}
Vault log: {{.Log}}   sidecar: {{.Dir}}/sidecar.hcl, {{.Dir}}/sidecar.log
Ctrl-C stops everything.
`

// setUpExample writes the example role and the example app's AppRole. On
// a cluster a leader change during a write is retried (vaultserver.Retry):
// a loaded machine makes one likely while the cluster settles.
func setUpExample(ctx context.Context, v *vaultserver.Server) (roleID, secretID string, err error) {
	if err := vaultserver.Retry(ctx, "creating the example role", func() error {
		_, err := v.Client.Logical().WriteWithContext(ctx, "keybroker/roles/"+exampleRole, map[string]interface{}{
			"scopes":         "read,write",
			"default_scopes": "read",
			"ttl":            "1h",
			"max_ttl":        "24h",
			"bound_cidrs":    "127.0.0.0/8,::1/128",
			"tenant":         "demo",
			"audiences":      "demo-api",
			"token_ttl":      "15m",
			"refresh_ttl":    "1h",
		})
		return err
	}); err != nil {
		return "", "", err
	}
	return v.AppRole(ctx, "example-app", "keybroker-example", examplePolicy)
}

// checkFree fails on the first address taken, naming the Makefile variable
// that moves it, so make dev and make cluster can run side by side. A dev
// Vault also listens on its port + 1 (its cluster listener), which must be
// free and not one of the others.
func checkFree(o options) error {
	type use struct{ addr, makeVar, what string }
	uses := []use{
		{o.addr, "DEV_ADDR", "Vault"},
		{o.proxy, "DEV_SIDECAR_LISTEN", "the sidecar's proxy"},
		{o.auth, "DEV_SIDECAR_AUTH_LISTEN", "the sidecar's /verify"},
		{o.service, "DEV_UPSTREAM_ADDR", "the demo service"},
	}
	if o.cluster {
		uses = uses[1:] // the nodes pick free ports
	} else if host, port, err := net.SplitHostPort(o.addr); err == nil {
		if p, err := strconv.Atoi(port); err == nil {
			uses = append(uses, use{net.JoinHostPort(host, strconv.Itoa(p+1)), "DEV_ADDR", "Vault's cluster listener (its port + 1)"})
		}
	}
	// Two of make dev's own addresses on one port is a mistake in what was
	// asked, whatever else runs here: said before any port is tried.
	seen := map[string]use{}
	for _, u := range uses {
		if other, ok := seen[u.addr]; ok {
			return fmt.Errorf("%s would be both %s (%s) and %s (%s): move one", u.addr, other.what, other.makeVar, u.what, u.makeVar)
		}
		seen[u.addr] = u
	}
	for _, u := range uses {
		l, err := net.Listen("tcp", u.addr)
		if err != nil {
			return fmt.Errorf("%s (%s) is in use (is another `make dev` still running?): stop it, or move it (make dev %s=127.0.0.1:<another port>)", u.addr, u.what, u.makeVar)
		}
		l.Close()
	}
	return nil
}

// shellEnv is what another shell needs to talk to this Vault and run the
// binaries make dev started: VAULT_ADDR, VAULT_TOKEN and a PATH that finds
// keybroker-sidecar and keybroker-audit (binDir, where make build put them)
// and the vault binary make dev runs, when that is not the one the shell
// would find (bin/vault, built by make vault), so the Quickstart's first
// command is not "vault: command not found".
func shellEnv(v *vaultserver.Server, binDir string) (string, error) {
	var b strings.Builder
	bin, err := vaultserver.FindVault()
	if err != nil {
		return "", err
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return "", err
	}
	if binDir, err = filepath.Abs(binDir); err != nil {
		return "", err
	}
	dirs := []string{binDir}
	if onPath, err := exec.LookPath("vault"); (err != nil || !sameFile(onPath, bin)) && filepath.Dir(bin) != binDir {
		dirs = append(dirs, filepath.Dir(bin))
	}
	fmt.Fprintf(&b, "  export PATH=\"%s:$PATH\"\n", strings.Join(dirs, ":"))
	fmt.Fprintf(&b, "  export VAULT_ADDR=%s\n  export VAULT_TOKEN=%s\n", v.Addr, v.RootToken)
	return b.String(), nil
}

func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// sidecarPolicyFile is the shipped policy, so make dev runs what the README shows.
const sidecarPolicyFile = "examples/policies/sidecar.hcl"

// startSidecar logs the sidecar in with AppRole (role_id and secret_id in
// files, as in production) and starts it in front of the demo service. It
// also mints the key the printed curl commands use.
func startSidecar(ctx context.Context, v *vaultserver.Server, o options, dir string) (*exec.Cmd, string, error) {
	policy, err := os.ReadFile(sidecarPolicyFile)
	if err != nil {
		return nil, "", err
	}
	roleID, secretID, err := v.AppRole(ctx, "keybroker-sidecar", "keybroker-sidecar", string(policy))
	if err != nil {
		return nil, "", err
	}
	for name, value := range map[string]string{"role-id": roleID, "secret-id": secretID} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(value+"\n"), 0o600); err != nil {
			return nil, "", err
		}
	}
	conf := fmt.Sprintf(`listen      = %q
upstream    = "http://%s"
auth_listen = %q
audiences   = ["demo-api"]
# /verify in Envoy's style (/verify + the original path), for curl.
gateway         = "envoy"
trusted_proxies = ["127.0.0.1"]

vault {
  address        = %q
  role_id_file   = %q
  secret_id_file = %q
}

route "/healthz" {
  public = true
}
route "/v1/read" {
  methods = ["GET", "HEAD"]
  scopes  = ["read"]
}
route "/v1/write" {
  methods = ["POST", "PUT", "DELETE"]
  scopes  = ["write"]
}
`, o.proxy, o.service, o.auth, v.Addr, filepath.Join(dir, "role-id"), filepath.Join(dir, "secret-id"))
	confPath := filepath.Join(dir, "sidecar.hcl")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, "", err
	}
	logFile, err := os.Create(filepath.Join(dir, "sidecar.log"))
	if err != nil {
		return nil, "", err
	}
	defer logFile.Close()
	cmd := exec.Command(o.sidecar, "-config", confPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "VAULT_TOKEN=") // the sidecar logs in by itself
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("starting %s: %w", o.sidecar, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + o.auth + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			stopProcess(cmd)
			return nil, "", fmt.Errorf("the sidecar did not become ready; see %s", logFile.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
	var sec *api.Secret
	attempt := 0
	if err := vaultserver.Retry(ctx, "minting the demo key", func() error {
		if attempt++; attempt > 1 {
			// A mint is not a write to send twice: the first may have been
			// committed before its error. The demo key is the role's only
			// key at this point, so revoking the role's leases leaves one.
			if err := v.Client.Sys().RevokePrefixWithContext(ctx, "keybroker/keys/"+exampleRole); err != nil {
				return err
			}
		}
		sec, err = v.Client.Logical().WriteWithContext(ctx, "keybroker/keys/"+exampleRole, map[string]interface{}{"name": "make-dev-demo", "budget": 1000})
		return err
	}); err != nil {
		stopProcess(cmd)
		return nil, "", err
	}
	return cmd, sec.Data["key"].(string), nil
}

// startService is the demo service: it answers with the identity the sidecar
// passed on.
func startService(addr string) *http.Server {
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s (role %s, tenant %s, scopes %q) from the demo service\n",
			r.Header.Get("X-Keybroker-Subject"), r.Header.Get("X-Keybroker-Role"),
			r.Header.Get("X-Keybroker-Tenant"), r.Header.Get("X-Keybroker-Scopes"))
	})}
	go func() { _ = srv.ListenAndServe() }()
	return srv
}

func stopProcess(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
}

// printCluster shows the nodes and how to see a failover.
func printCluster(ctx context.Context, c *vaultserver.Cluster, via *vaultserver.Server, proxy, key string) {
	active := c.Active(ctx)
	fmt.Println("The cluster (the commands above and the sidecar use " + via.Addr + ", a standby):")
	for _, n := range c.Nodes {
		state := "standby"
		if n == active {
			state = "active"
		}
		fmt.Printf("  %s  %s  %-7s pid %d  log %s\n", n.Name, n.Addr, state, n.PID(), n.LogFile)
	}
	if active != nil {
		fmt.Printf(`
Kill the active node and watch the sidecar ride through it:
  kill -9 %d
  vault operator raft list-peers      # a new leader within seconds
  vault write keybroker/keys/example name=after-failover
  curl -i -H 'X-API-Key: %s' http://%s/v1/read/hello   # served throughout
To bring the node back, start it again and unseal it (the unseal key is in
%s):
  bin/vault server -config=%s
`, active.PID(), key, proxy, c.KeysFile, active.Config())
	}
}
