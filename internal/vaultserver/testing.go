package vaultserver

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// TestPluginVersion is the version the plugin is built with for tests.
const TestPluginVersion = "v0.1.0-e2e"

var (
	buildOnce  sync.Once
	pluginPath string
	buildErr   error
	buildDir   string
)

// RunTests is TestMain for packages that start Vault: it removes the plugin
// built for the run when the tests are done.
func RunTests(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// StartT starts Vault with the plugin for one test and stops it when the test
// ends, failed or not. On failure the end of Vault's log is printed.
func StartT(t testing.TB) *Server {
	t.Helper()
	testPlugin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Dir: t.TempDir(), PluginBinary: pluginPath, PluginVersion: TestPluginVersion})
	if err != nil {
		t.Fatalf("starting vault: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			printLogTail(s.LogFile)
		}
	})
	return s
}

// StartClusterT starts a 3-node Raft cluster with the plugin for one test
// and stops it when the test ends, failed or not.
func StartClusterT(t testing.TB) *Cluster {
	t.Helper()
	testPlugin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, ClusterOptions{Nodes: 3, Dir: t.TempDir(), PluginBinary: pluginPath, PluginVersion: TestPluginVersion})
	if err != nil {
		t.Fatalf("starting a vault cluster: %v", err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			for _, n := range c.Nodes {
				printLogTail(n.LogFile)
			}
		}
	})
	return c
}

func printLogTail(path string) {
	if b, err := os.ReadFile(path); err == nil {
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		fmt.Fprintf(os.Stderr, "--- end of vault log (%s):\n%s\n", path, b)
	}
}

// testPlugin builds the plugin once per test binary.
func testPlugin(t testing.TB) {
	t.Helper()
	buildOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		if buildDir, err = os.MkdirTemp("", "keybroker-plugin-"); err != nil {
			buildErr = err
			return
		}
		pluginPath, buildErr = BuildPlugin(context.Background(), root, buildDir, TestPluginVersion)
	})
	if buildErr != nil {
		t.Fatalf("building the plugin: %v", buildErr)
	}
}
