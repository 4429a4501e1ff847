package vaultserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
)

// Cluster is a Vault HA cluster on integrated storage (Raft) on loopback:
// real config files, `operator init`, unseal, raft join, the plugin
// registered by sha256 and enabled once, an audit device on. Nothing of dev
// mode: this is how operators run Vault.
type Cluster struct {
	Nodes     []*Node
	RootToken string
	Mount     string
	AuditLog  string
	// KeysFile holds the unseal key and root token (mode 0600), for a
	// person bringing a node back by hand.
	KeysFile string

	unsealKey string
	vaultBin  string
	// pluginPath is the cluster's copy of the plugin binary, which every
	// node runs: how Stop finds a killed node's plugin processes.
	pluginPath string
}

// Node is one Vault server of a Cluster.
type Node struct {
	Name    string
	Addr    string // http://127.0.0.1:port
	LogFile string
	Client  *api.Client // with the root token, talking to this node only

	config string
	cmd    *exec.Cmd
	done   chan struct{}
}

// ClusterOptions say how to start a cluster; zero values pick defaults.
type ClusterOptions struct {
	Nodes         int // default 3
	Dir           string
	PluginBinary  string
	PluginVersion string
	Mount         string // default "keybroker"
}

// StartCluster starts the nodes, initialises and unseals the first, joins
// the others to it and sets the plugin up. The caller must Stop it.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	o.Nodes = max(o.Nodes, 1)
	if o.Mount == "" {
		o.Mount = "keybroker"
	}
	vaultBin, err := FindVault()
	if err != nil {
		return nil, err
	}
	pluginPath, sum, err := installPlugin(o.Dir, o.PluginBinary)
	if err != nil {
		return nil, err
	}
	pluginDir := filepath.Dir(pluginPath)
	c := &Cluster{Mount: o.Mount, AuditLog: filepath.Join(o.Dir, "audit.log"), vaultBin: vaultBin, pluginPath: pluginPath}
	var leaderAPI string
	for i := 0; i < o.Nodes; i++ {
		n, err := c.newNode(fmt.Sprintf("node%d", i+1), o.Dir, pluginDir, leaderAPI)
		if err != nil {
			c.Stop()
			return nil, err
		}
		if i == 0 {
			leaderAPI = n.Addr
		}
	}
	for i, n := range c.Nodes {
		if err := n.start(ctx, vaultBin); err != nil {
			c.Stop()
			return nil, err
		}
		if i == 0 {
			init, err := n.Client.Sys().InitWithContext(ctx, &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
			if err != nil {
				c.Stop()
				return nil, fmt.Errorf("vault operator init: %w", err)
			}
			c.RootToken, c.unsealKey = init.RootToken, init.Keys[0]
			c.KeysFile = filepath.Join(o.Dir, "init.txt")
			if err := os.WriteFile(c.KeysFile, []byte(fmt.Sprintf("Unseal Key 1: %s\nInitial Root Token: %s\n", c.unsealKey, c.RootToken)), 0o600); err != nil {
				c.Stop()
				return nil, err
			}
			for _, m := range c.Nodes {
				m.Client.SetToken(c.RootToken)
			}
		}
		if err := c.Unseal(ctx, n); err != nil {
			c.Stop()
			return nil, err
		}
		if i == 0 {
			if _, err := c.WaitActive(ctx); err != nil {
				c.Stop()
				return nil, err
			}
		}
	}
	if err := c.waitPeers(ctx, o.Nodes); err != nil {
		c.Stop()
		return nil, err
	}
	active, err := c.WaitActive(ctx)
	if err != nil {
		c.Stop()
		return nil, err
	}
	s := &Server{Addr: active.Addr, RootToken: c.RootToken, AuditLog: c.AuditLog, Mount: c.Mount, Client: active.Client}
	if err := s.setup(ctx, sum, Options{Mount: o.Mount, PluginVersion: o.PluginVersion}); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// installPlugin copies the plugin binary into dir/plugins, the nodes'
// plugin directory, and returns its absolute path and its sha256.
func installPlugin(dir, binary string) (path, sum string, err error) {
	pluginDir, err := filepath.Abs(filepath.Join(dir, "plugins"))
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(pluginDir, 0o755); err != nil {
		return "", "", err
	}
	path = filepath.Join(pluginDir, PluginName)
	if sum, err = copyFile(binary, path); err != nil {
		return "", "", fmt.Errorf("installing plugin: %w", err)
	}
	return path, sum, nil
}

func (c *Cluster) newNode(name, dir, pluginDir, leaderAPI string) (*Node, error) {
	ndir := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Join(ndir, "raft"), 0o755); err != nil {
		return nil, err
	}
	apiAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	clusterAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name, Addr: "http://" + apiAddr, LogFile: filepath.Join(ndir, "vault.log"), config: filepath.Join(ndir, "vault.hcl")}
	join := ""
	if leaderAPI != "" {
		// Every node but the first joins the first; a restarted node finds
		// the cluster again through its own raft data.
		join = fmt.Sprintf("  retry_join {\n    leader_api_addr = %q\n  }\n", leaderAPI)
	}
	// performance_multiplier = 1: Raft's tightest timings, which HashiCorp
	// recommends for production; leadership moves within seconds.
	hcl := fmt.Sprintf(`storage "raft" {
  path                   = %q
  node_id                = %q
  performance_multiplier = 1
%s}
listener "tcp" {
  address         = %q
  cluster_address = %q
  tls_disable     = true
}
api_addr         = %q
cluster_addr     = "https://%s"
plugin_directory = %q
disable_mlock    = true
`, filepath.Join(ndir, "raft"), name, join, apiAddr, clusterAddr, n.Addr, clusterAddr, pluginDir)
	if err := os.WriteFile(n.config, []byte(hcl), 0o644); err != nil {
		return nil, err
	}
	cfg := api.DefaultConfig()
	cfg.Address = n.Addr
	// A standby answers with a redirect to the active node; tests want to
	// see each node as it is.
	cfg.MaxRetries = 0
	cl, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	n.Client = cl
	c.Nodes = append(c.Nodes, n)
	return n, nil
}

func (n *Node) start(ctx context.Context, vaultBin string) error {
	f, err := os.OpenFile(n.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	n.cmd = exec.Command(vaultBin, "server", "-config="+n.config)
	n.cmd.Env = append(filteredEnv(), "HOME="+filepath.Dir(n.config), "VAULT_LOG_LEVEL=info")
	n.cmd.Stdout, n.cmd.Stderr = f, f
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	n.done = done
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(done) }(n.cmd)
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("%s exited during start (log: %s)", n.Name, n.LogFile)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if _, err := n.Client.Sys().SealStatusWithContext(ctx); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within 60s (log: %s)", n.Name, n.LogFile)
		}
	}
}

// Unseal unseals node n and waits until it is unsealed (for a joining
// node, once it has joined).
func (c *Cluster) Unseal(ctx context.Context, n *Node) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, err := n.Client.Sys().UnsealWithContext(ctx, c.unsealKey)
		if err == nil && !st.Sealed {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not unseal within 90s: %v (log: %s)", n.Name, err, n.LogFile)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Seal seals node n (as `vault operator seal` on it): an active node steps
// down and another takes over.
func (c *Cluster) Seal(ctx context.Context, n *Node) error {
	if err := n.Client.Sys().SealWithContext(ctx); err != nil {
		return fmt.Errorf("sealing %s: %w", n.Name, err)
	}
	return nil
}

// Active returns the node that is active now, or nil.
func (c *Cluster) Active(ctx context.Context) *Node {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		if h, err := n.Client.Sys().HealthWithContext(ctx); err == nil && h.Initialized && !h.Sealed && !h.Standby {
			return n
		}
	}
	return nil
}

// WaitActive waits until one node is active and returns it.
func (c *Cluster) WaitActive(ctx context.Context) (*Node, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if n := c.Active(ctx); n != nil {
			return n, nil
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no active node within 60s")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitPeers waits until the raft configuration has n voters.
func (c *Cluster) waitPeers(ctx context.Context, want int) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		if a := c.Active(ctx); a != nil {
			if cfg, err := a.Client.Sys().RaftAutopilotStateWithContext(ctx); err == nil && cfg != nil {
				voters := 0
				for _, s := range cfg.Servers {
					if s.Status == "voter" || s.Status == "leader" {
						voters++
					}
				}
				if voters >= want && cfg.Healthy {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the cluster did not reach %d healthy voters within 90s", want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Addrs are the nodes' API addresses.
func (c *Cluster) Addrs() []string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr)
	}
	return a
}

// Server is the cluster seen through node n, for helpers that take a Server.
func (c *Cluster) Server(n *Node) *Server {
	return &Server{Addr: n.Addr, RootToken: c.RootToken, AuditLog: c.AuditLog, Mount: c.Mount, LogFile: n.LogFile, Client: n.Client}
}

// PID is the node's process id, 0 when it is not running.
func (n *Node) PID() int {
	if !n.Running() {
		return 0
	}
	return n.cmd.Process.Pid
}

// Config is the path of the node's configuration file.
func (n *Node) Config() string { return n.config }

// Running says whether the node's process is up.
func (n *Node) Running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Kill ends node n at once (SIGKILL), with its plugin processes, as a
// crash would.
func (c *Cluster) Kill(n *Node) {
	if !n.Running() {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.done
}

// Restart starts a stopped node again and unseals it.
func (c *Cluster) Restart(ctx context.Context, n *Node) error {
	if err := n.start(ctx, c.vaultBin); err != nil {
		return err
	}
	return c.Unseal(ctx, n)
}

// PluginPIDs are the process ids of node n's keybroker plugin processes.
func (n *Node) PluginPIDs() []int {
	out, err := exec.Command("pgrep", "-g", fmt.Sprint(n.cmd.Process.Pid), "-f", PluginName).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		var p int
		if _, err := fmt.Sscan(f, &p); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Stop ends every process the cluster started: each node (SIGTERM to its
// process group, which its plugin processes join; SIGKILL after 10s), then
// any plugin process left of a node killed by hand: `kill -9` of a node
// ends only the node, and its plugin, reparented, runs on. Those are found
// by their binary, which is this cluster's own copy (plugins/ in its
// directory), never by a process group: a dead node's group id is a pid
// Linux may since have given to someone else's process. Safe to call twice.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGTERM)
	}
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-n.done
		}
	}
	left := c.PluginProcesses()
	for _, pid := range left {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// A kill is delivered, not done: wait until they are gone, so that
	// the caller, once Stop returns, finds nothing of the cluster running.
	for deadline := time.Now().Add(5 * time.Second); len(left) > 0 && time.Now().Before(deadline); left = c.PluginProcesses() {
		time.Sleep(20 * time.Millisecond)
	}
}

// PluginProcesses are the pids of every running process of this cluster's
// plugin binary, whichever node started it, a dead one included.
func (c *Cluster) PluginProcesses() []int {
	return processesOf(c.pluginPath)
}

// processesOf lists the processes whose program is bin, from /proc (none
// where there is no /proc): as started (argv[0]) or as the kernel resolved
// it (exe), should Vault have resolved a symlink in the plugin directory.
func processesOf(bin string) []int {
	if bin == "" {
		return nil // "" is every process without a command line
	}
	resolved, err := filepath.EvalSymlinks(bin)
	if err != nil {
		resolved = bin
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); argv0 == bin || exe == resolved {
			pids = append(pids, pid)
		}
	}
	return pids
}
