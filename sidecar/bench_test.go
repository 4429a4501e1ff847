package sidecar

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

// benchSidecar is the test sidecar with a metered-free JWT of scope read.
func benchSidecar(b *testing.B) (*Sidecar, string) {
	b.Helper()
	f := newFixture(b, nil)
	return f.sc, f.jwt(b, "read", time.Hour)
}

func BenchmarkCheckJWTCached(b *testing.B) {
	sc, token := benchSidecar(b)
	ctx := context.Background()
	sc.agentJWTs.check(ctx, presentation{cred: token})
	b.ReportAllocs()
	for b.Loop() {
		if id, _ := sc.agentJWTs.check(ctx, presentation{cred: token}); id == nil {
			b.Fatal("denied")
		}
	}
}

func BenchmarkCheckJWTUncached(b *testing.B) {
	sc, token := benchSidecar(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		sc.agentJWTs.cache.Purge()
		if id, _ := sc.agentJWTs.check(ctx, presentation{cred: token}); id == nil {
			b.Fatal("denied")
		}
	}
}

// BenchmarkCheckKeyCached is the warm API key path: checksum, hash, cache.
func BenchmarkCheckKeyCached(b *testing.B) {
	sc, _ := benchSidecar(b)
	key, id, _ := apikey.Generate(nil, "kb")
	sc.apiKeys.positive.Add(apikey.Hash(key), &keyEntry{id: &identity{id: id, scopes: []string{"read"}, expiresAt: time.Now().Add(time.Hour)}, fetched: time.Now().Add(time.Hour)})
	ip := netip.MustParseAddr("127.0.0.1")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if got, _ := sc.apiKeys.check(ctx, presentation{cred: key, clientIP: ip}); got == nil {
			b.Fatal("denied")
		}
	}
}

func BenchmarkCIDRMatch(b *testing.B) {
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("127.0.0.0/8")}
	ip := netip.MustParseAddr("127.0.0.1")
	b.ReportAllocs()
	for b.Loop() {
		if !prefixesAllow(cidrs, ip) {
			b.Fatal("no match")
		}
	}
}

func BenchmarkRouteMatch(b *testing.B) {
	sc, _ := benchSidecar(b)
	b.ReportAllocs()
	for b.Loop() {
		if rt, _ := sc.s.match("GET", "/v1/items/42"); rt == nil || rt.scopes[0] != "read" {
			b.Fatal("wrong route")
		}
	}
}

// BenchmarkDecideJWTCached is one whole decision: route, credential
// extraction, cached JWT, revocation, CIDR and scope checks.
func BenchmarkDecideJWTCached(b *testing.B) {
	sc, token := benchSidecar(b)
	h := http.Header{}
	h.Set("Authorization", "Bearer "+token)
	r := request{method: "GET", target: "/v1/items/1", header: h, clientIP: netip.MustParseAddr("127.0.0.1")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if d := sc.core.decide(ctx, r); !d.allowed() {
			b.Fatal(fmt.Sprint("denied: ", d.reason))
		}
	}
}

// BenchmarkDecideMeteredJWTCached adds a budget hold and its settlement to
// the whole decision: what a metered request costs while its sidecar's chunk
// lasts (no Vault call), and a rate limiter check.
func BenchmarkDecideMeteredJWTCached(b *testing.B) {
	sc, token := benchSidecar(b)
	h := http.Header{}
	h.Set("Authorization", "Bearer "+token)
	r := request{method: "GET", target: "/v1/items/1", header: h, clientIP: netip.MustParseAddr("127.0.0.1")}
	ctx := context.Background()
	id, _ := sc.agentJWTs.check(ctx, presentation{cred: token})
	id.budget = &jwtverify.Budget{Units: 1 << 50, Period: 86400, MaxCost: 10}
	id.rate = &jwtverify.RateLimit{PerSecond: 1e6, Burst: 1e6}
	m := sc.budgets.meter(id)
	m.central = 1 << 50
	m.cur = &chunk{granted: 1 << 50, periodEnd: time.Now().Add(time.Hour), expiresAt: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	for b.Loop() {
		d := sc.core.decide(ctx, r)
		if !d.allowed() || d.hold == nil {
			b.Fatal(fmt.Sprint("denied: ", d.reason))
		}
		d.hold.settle(1)
	}
}

// BenchmarkDecideDPoPJWT is one whole decision of a DPoP-bound JWT with a
// fresh proof: the cached token, the proof's signature, its claims, the
// replay cache; with an ES256 and an EdDSA proof key. jwtverify's
// BenchmarkDPoPFloor is what it cannot go below.
func BenchmarkDecideDPoPJWT(b *testing.B) {
	for _, alg := range []string{"ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) { benchmarkDecideDPoPJWT(b, alg) })
	}
}

func benchmarkDecideDPoPJWT(b *testing.B, alg string) {
	f := newFixture(b, func(c *Config) { c.PublicOrigin = testOrigin })
	k := dpoptest.NewKey(b, alg)
	c := f.claims("read", time.Hour)
	c.ID, c.Cnf = "jti-bench", &jwtverify.Confirmation{JKT: k.JKT}
	tok := f.sign(b, c)
	// Proofs are signed ahead: each is used once, as a client would. More
	// than 10,000 runs would meet the lineage's share of the replay cache.
	proofs := make([]string, 10_001)
	now := time.Now()
	for i := range proofs {
		proofs[i] = k.Proof(b, "GET", testOrigin+"/v1/items/1", tok, now, nil)
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(proofs) {
			b.Fatal("more iterations than proofs signed ahead: run with -benchtime 10000x or fewer")
		}
		h := http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proofs[i]}}
		i++
		if d := f.sc.core.decide(ctx, request{method: "GET", target: "/v1/items/1", header: h, clientIP: netip.MustParseAddr("127.0.0.1")}); !d.allowed() {
			b.Fatal(fmt.Sprint("denied: ", d.reason))
		}
	}
}
