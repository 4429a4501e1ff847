// Package vaultserver starts a real Vault dev server with the keybroker plugin
// registered by sha256, mounted and audited. The end-to-end tests and
// `make dev` both use it, so what the tests exercise is what a developer runs.
package vaultserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
)

// PluginName is the name the plugin is registered and mounted under.
const PluginName = "vault-plugin-secrets-keybroker"

// MinVaultVersion is the oldest vault on PATH that is used instead of bin/vault.
var MinVaultVersion = [3]int{1, 15, 0}

// Options say how to start the server. Zero values pick sensible defaults.
type Options struct {
	// Addr is the listen address; empty picks a free loopback port.
	Addr string
	// Dir holds the plugin directory, logs and the audit log; it must exist.
	Dir string
	// PluginBinary is the built plugin; it is copied into the plugin directory.
	PluginBinary string
	// PluginVersion is the version the binary reports (its RunningVersion).
	PluginVersion string
	// Mount is where the plugin is enabled; default "keybroker".
	Mount string
	// Log receives Vault's own output; nil writes it to Dir/vault.log.
	Log io.Writer
}

// Server is a running Vault dev server.
type Server struct {
	Addr      string // http://127.0.0.1:port
	RootToken string
	AuditLog  string
	Mount     string
	LogFile   string
	PluginDir string      // Vault's plugin_directory
	Client    *api.Client // with the root token

	cmd  *exec.Cmd
	done chan struct{}
}

// RepoRoot finds the keybroker module root from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/keybroker/keybroker\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the keybroker repository")
		}
		dir = parent
	}
}

var vaultVersionRe = regexp.MustCompile(`Vault v(\d+)\.(\d+)\.(\d+)`)

// FindVault returns the vault binary to run: $VAULT_BIN, else vault on PATH
// when it is at least MinVaultVersion, else bin/vault in the repository
// (built by `make vault`).
func FindVault() (string, error) {
	if p := os.Getenv("VAULT_BIN"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("vault"); err == nil && vaultNewEnough(p) {
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "bin", "vault")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no vault %d.%d or newer on PATH and no %s: run `make vault` to build one", MinVaultVersion[0], MinVaultVersion[1], p)
	}
	return p, nil
}

func vaultNewEnough(path string) bool {
	out, err := exec.Command(path, "version").Output()
	if err != nil {
		return false
	}
	m := vaultVersionRe.FindStringSubmatch(string(out))
	if m == nil {
		return false
	}
	for i := 0; i < 3; i++ {
		n, _ := strconv.Atoi(m[i+1])
		if n != MinVaultVersion[i] {
			return n > MinVaultVersion[i]
		}
	}
	return true
}

// BuildPlugin builds the plugin binary into dir with the given version and
// returns its path.
func BuildPlugin(ctx context.Context, root, dir, version string) (string, error) {
	out := filepath.Join(dir, PluginName)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out,
		"-ldflags", "-X github.com/keybroker/keybroker/internal/version.Version="+version,
		"./cmd/"+PluginName)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building plugin: %w\n%s", err, b)
	}
	return out, nil
}

// Start starts vault server -dev and sets the plugin up. The caller must Stop it.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Mount == "" {
		o.Mount = "keybroker"
	}
	vaultBin, err := FindVault()
	if err != nil {
		return nil, err
	}
	pluginDir := filepath.Join(o.Dir, "plugins")
	if err := os.MkdirAll(pluginDir, 0o755); err != nil {
		return nil, err
	}
	sum, err := copyFile(o.PluginBinary, filepath.Join(pluginDir, PluginName))
	if err != nil {
		return nil, fmt.Errorf("installing plugin: %w", err)
	}
	config := filepath.Join(o.Dir, "vault.hcl")
	// Entries over 1 MiB are refused, as integrated storage (Raft) does by
	// default, so that a layout that only works on the dev server's
	// unbounded memory fails here first.
	hcl := fmt.Sprintf("plugin_directory = %q\nstorage \"inmem\" {\n  max_value_size = \"1048576\"\n}\n", pluginDir)
	if err := os.WriteFile(config, []byte(hcl), 0o644); err != nil {
		return nil, err
	}

	// A free port can be taken between our probe and Vault's bind (and Vault
	// also binds port+1 for its cluster listener), so try a few.
	var s *Server
	for attempt := 0; ; attempt++ {
		addr := o.Addr
		if addr == "" {
			if addr, err = freeAddr(); err != nil {
				return nil, err
			}
		}
		s, err = launch(ctx, vaultBin, config, addr, o)
		if err == nil || o.Addr != "" || attempt == 2 {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	s.PluginDir = pluginDir
	if err := s.setup(ctx, sum, o); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func launch(ctx context.Context, vaultBin, config, addr string, o Options) (*Server, error) {
	token := "root-" + randomHex(8)
	s := &Server{
		Addr:      "http://" + addr,
		RootToken: token,
		AuditLog:  filepath.Join(o.Dir, "audit.log"),
		Mount:     o.Mount,
		LogFile:   filepath.Join(o.Dir, "vault.log"),
		done:      make(chan struct{}),
	}
	out := o.Log
	if out == nil {
		f, err := os.Create(s.LogFile)
		if err != nil {
			return nil, err
		}
		defer f.Close() // the child keeps its own descriptor
		out = f
	}
	s.cmd = exec.Command(vaultBin, "server", "-dev",
		"-dev-root-token-id="+token,
		"-dev-listen-address="+addr,
		"-dev-no-store-token",
		"-config="+config,
	)
	// Vault reads its own settings from the environment; a developer's
	// VAULT_ADDR or VAULT_TOKEN must not leak into the server under test.
	s.cmd.Env = append(filteredEnv(), "HOME="+o.Dir, "VAULT_LOG_LEVEL=info")
	s.cmd.Stdout, s.cmd.Stderr = out, out
	// Its own process group, so Stop also ends the plugin processes it runs.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", vaultBin, err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()

	cfg := api.DefaultConfig()
	cfg.Address = s.Addr
	c, err := api.NewClient(cfg)
	if err != nil {
		s.Stop()
		return nil, err
	}
	c.SetToken(token)
	s.Client = c

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.done:
			return nil, fmt.Errorf("vault exited during start (log: %s)", s.LogFile)
		case <-ctx.Done():
			s.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if h, err := c.Sys().HealthWithContext(ctx); err == nil && h.Initialized && !h.Sealed {
			return s, nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("vault did not become healthy within 60s (log: %s)", s.LogFile)
		}
	}
}

// setup registers the plugin by sha256, mounts it and enables a file audit
// device, as an operator would on a production Vault.
func (s *Server) setup(ctx context.Context, sum string, o Options) error {
	sys := s.Client.Sys()
	if err := Retry(ctx, "registering plugin", func() error {
		return sys.RegisterPluginWithContext(ctx, &api.RegisterPluginInput{
			Name:    PluginName,
			Type:    api.PluginTypeSecrets,
			Command: PluginName,
			SHA256:  sum,
			Version: o.PluginVersion,
			// Vault does not tell plugins its api_addr; the default JWT issuer
			// (this mount's URL) is derived from this.
			Env: []string{"VAULT_API_ADDR=" + s.Addr},
		})
	}); err != nil {
		return err
	}
	if err := Retry(ctx, "mounting plugin", enableOnce(func() error {
		return sys.MountWithContext(ctx, o.Mount, &api.MountInput{
			Type:        PluginName,
			Description: "keybroker: scoped, short-lived credentials",
			Config: api.MountConfigInput{
				PluginVersion: o.PluginVersion,
				// key_id, jti, role and the budget paths' id, reservation_id
				// and holder are not secret: in clear, auditors can follow a
				// credential and its spend through the log. Credentials stay HMAC'd.
				AuditNonHMACRequestKeys:  []string{"key_id", "jti", "role", "id", "reservation_id", "holder", "approval_id", "action"},
				AuditNonHMACResponseKeys: []string{"key_id", "jti", "role", "reservation_id", "request_id", "state"},
			},
		})
	})); err != nil {
		return err
	}
	return Retry(ctx, "enabling audit device", enableOnce(func() error {
		return sys.EnableAuditWithOptionsWithContext(ctx, "file", &api.EnableAuditOptions{
			Type:    "file",
			Options: map[string]string{"file_path": s.AuditLog},
		})
	}))
}

// enableOnce is enable for Retry: a retry that finds the path taken was
// preceded by an attempt committed before its error.
func enableOnce(enable func() error) func() error {
	attempts := 0
	return func() error {
		attempts++
		err := enable()
		if err != nil && attempts > 1 && strings.Contains(err.Error(), "already in use") {
			return nil
		}
		return err
	}
}

// Stop ends Vault and its plugin processes. It is safe to call twice.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	pgid := -s.cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(pgid, syscall.SIGKILL)
	<-s.done
}

// Done is closed when the Vault process has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

func filteredEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func copyFile(src, dst string) (sha string, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		out.Close()
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
