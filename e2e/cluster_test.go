package e2e

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/jwtverify"
)

// On a 3-node Raft cluster: credentials minted through a standby
// (forwarded) before the leader is killed still verify after; the cluster
// mints again once a new leader is elected (the gap is logged); a
// revocation issued after failover reaches a sidecar that rode through it.
func TestClusterLeaderFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster takes ~30s")
	}
	c := vaultserver.StartClusterT(t)
	ctx := ctxT(t)
	leader, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var standby *vaultserver.Node
	for _, n := range c.Nodes {
		if n != leader {
			standby = n
			break
		}
	}
	v := c.Server(standby) // everything below goes through a standby
	setupRoles(t, v)
	root := v.Client

	type key struct{ key, id string }
	var keys []key
	var secrets []*api.Secret
	for i := 0; i < 5; i++ {
		s := write(t, root, "keybroker/keys/svc", map[string]interface{}{"name": "before"})
		keys = append(keys, key{s.Data["key"].(string), s.Data["key_id"].(string)})
		secrets = append(secrets, s)
	}
	jwt := write(t, root, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	e := startSidecar(t, v, nil)
	if r := call(t, e.proxy, "GET", "/read", bearer(keys[0].key), ""); r.status != 200 {
		t.Fatalf("before failover: %d %s", r.status, r.body)
	}

	c.Kill(leader)
	gapStart := time.Now()
	var gap time.Duration
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := root.Logical().WriteWithContext(ctx, "keybroker/keys/svc", map[string]interface{}{"name": "after"}); err == nil {
			gap = time.Since(gapStart)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no successful mint within 60s of killing the leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	newLeader, err := c.WaitActive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s killed; %s active; first successful mint %s after the kill", leader.Name, newLeader.Name, gap.Round(time.Millisecond))

	for _, k := range keys {
		if ok, reason, _ := verify(t, root, k.key, "127.0.0.1"); !ok {
			t.Fatalf("key minted before failover: %s", reason)
		}
	}
	// Every running node serves the same keys, and they verify the JWT
	// minted before failover.
	var first string
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		var disc struct {
			Issuer string `json:"issuer"`
		}
		getJSON(t, n.Addr+"/v1/keybroker/.well-known/openid-configuration", &disc)
		resp, err := http.Get(n.Addr + "/v1/keybroker/jwks")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if first == "" {
			first = string(body)
		} else if string(body) != first {
			t.Fatalf("%s serves another JWKS than its peers", n.Name)
		}
		ks, err := jwtverify.ParseJWKS(body)
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		ver, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: disc.Issuer, Audiences: []string{"svc"}, Leeway: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ver.Verify(jwt, ks); err != nil {
			t.Fatalf("JWT minted before failover, checked with %s's JWKS: %v", n.Name, err)
		}
	}
	if r := call(t, e.proxy, "GET", "/read", bearer(jwt), ""); r.status != 200 {
		t.Fatalf("sidecar, JWT after failover: %d %s", r.status, r.body)
	}

	// A revocation after failover reaches the sidecar that rode through it.
	revoked := keys[1]
	if err := root.Sys().RevokeWithContext(context.Background(), secrets[1].LeaseID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the sidecar never saw a revocation issued after failover", func() bool {
		return call(t, e.proxy, "GET", "/read", bearer(revoked.key), "").status == 401
	})
	if r := call(t, e.proxy, "GET", "/read", bearer(keys[2].key), ""); r.status != 200 {
		t.Fatalf("an unrevoked key after failover: %d %s", r.status, r.body)
	}
}
