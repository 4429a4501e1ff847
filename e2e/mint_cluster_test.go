package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// The plugin keeps roles and the config in memory (issue 26). A node that
// held a role in memory, lost leadership, and became active again after
// the role changed on another node mints under the role as changed: the
// leader change re-created its backend, so nothing it held survived.
func TestClusterRoleCacheAcrossLeaderChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes ~30s")
	}
	c := vaultserver.StartClusterT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	first, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	retryWrite := func(n *vaultserver.Node, path string, data map[string]interface{}) {
		t.Helper()
		if err := vaultserver.Retry(ctx, "writing "+path, func() error {
			_, err := n.Client.Logical().WriteWithContext(ctx, path, data)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	retryWrite(first, "keybroker/roles/cached", map[string]interface{}{"scopes": "read", "audiences": "svc"})
	// The first node reads the role into memory, and the config.
	write(t, first.Client, "keybroker/keys/cached", map[string]interface{}{"name": "before"})
	write(t, first.Client, "keybroker/token/cached", nil)

	// Leadership moves away; the first node stays up.
	second := moveLeadership(ctx, t, c, func(n *vaultserver.Node) bool { return n != first })
	// The second node reads the role (the write's existence check) before
	// it changes it; each change is seen by its next mint.
	retryWrite(second, "keybroker/roles/cached", map[string]interface{}{"scopes": "read,write"})
	mintsWrite := func(n *vaultserver.Node) {
		t.Helper()
		tok := write(t, n.Client, "keybroker/token/cached", map[string]interface{}{"scopes": "write"})
		if got := tok.Data["scopes"].([]interface{}); len(got) != 1 || got[0] != "write" {
			t.Fatalf("a token mint on %s with a scope added on %s: scopes %v", n.Name, second.Name, got)
		}
	}
	refusedAsSuspended := func(n *vaultserver.Node) {
		t.Helper()
		_, err := n.Client.Logical().WriteWithContext(ctx, "keybroker/keys/cached", map[string]interface{}{"name": "after"})
		if statusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "is suspended") {
			t.Fatalf("a key mint on %s from a role suspended on %s: %v; want refused as suspended", n.Name, second.Name, err)
		}
	}
	mintsWrite(second)
	retryWrite(second, "keybroker/roles/cached/suspend", nil)
	refusedAsSuspended(second)
	// Leadership comes back to the first node, which held the role as
	// it was before.
	moveLeadership(ctx, t, c, func(n *vaultserver.Node) bool { return n == first })

	mintsWrite(first)
	refusedAsSuspended(first)
}

// moveLeadership seals the active node, and unseals it once another is
// active (a sealed node holds no Raft vote: two would lose the quorum),
// until a node that want accepts is active; it returns that node. The
// sealed node keeps running, as a node that steps down does (a second
// manual step-down in a row is queued and not run by Vault 1.21 here).
func moveLeadership(ctx context.Context, t *testing.T, c *vaultserver.Cluster, want func(*vaultserver.Node) bool) *vaultserver.Node {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		n, err := c.WaitActive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want(n) {
			// Mounts are set up once the node answers as active; a
			// request may still race them, so wait for a mount read.
			if err := vaultserver.Retry(ctx, "reading the mount on "+n.Name, func() error {
				_, err := n.Client.Logical().ReadWithContext(ctx, "keybroker/config")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return n
		}
		if err := c.Seal(ctx, n); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitActive(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Unseal(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("leadership never moved where the test wanted it")
	return nil
}
