package sidecar

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/jwtverify"
)

// With rate_limit_scope = "cluster" and Vault out of reach, the sidecar's
// own bucket is the limit, and it asks Vault again only after a second, not
// per request.
func TestClusterRateFallsBackToTheSidecarsBucket(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.RateLimitScope = "cluster" })
	id := &identity{jwt: true, id: "jti-1", role: "agent", subject: "entity-1", rate: &jwtverify.RateLimit{PerSecond: 0.001, Burst: 3}}
	passed := 0
	for i := 0; i < 10; i++ {
		if _, ok := f.sc.core.rate.allow(context.Background(), id); !ok {
			continue
		}
		if _, ok := f.sc.cluster.allow(context.Background(), id); ok {
			passed++
		}
	}
	if passed != 3 {
		t.Fatalf("%d of 10 requests passed without Vault, want the bucket's burst of 3", passed)
	}
	if n := testutil.ToFloat64(f.sc.m.vaultCalls.WithLabelValues("rate", "error")); n != 1 {
		t.Fatalf("%v failed calls to Vault for one lineage within a second, want 1", n)
	}
}
