package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"
)

// floodGuard bounds the Vault calls that unknown API keys can cause. A key's
// checksum is public (CRC32), so anyone can make well-formed keys that only
// Vault can refuse. Three limits hold:
//   - per client (an IPv4 address, an IPv6 /64): one uncached key is looked
//     up at a time, and only while the client has failure tokens left; each
//     lookup Vault refuses takes one (failed_auth_burst, refilled at
//     failed_auth_rate per second). So one client causes at most
//     burst + rate x t refused lookups in t seconds; once out of tokens it
//     gets 429 too_many_failures with Retry-After and Vault is not asked.
//   - overall: at most vault_verify_concurrency lookups are in flight.
//   - key_ids Vault says do not exist are remembered (negative_cache_ttl),
//     so a key_id is looked up once however many secrets are tried with it.
type floodGuard struct {
	rate    rate.Limit
	burst   int
	clients *lru.Cache[netip.Prefix, *clientGate]
	vault   *semaphore.Weighted
}

type clientGate struct {
	failures *rate.Limiter
	turn     chan struct{} // one cold lookup at a time
}

// maxLookupWait is how long a request waits for its client's turn or a free
// Vault slot before it is refused.
const maxLookupWait = 2 * time.Second

func newFloodGuard(s *settings) (*floodGuard, error) {
	clients, err := lru.New[netip.Prefix, *clientGate](s.cacheSize)
	if err != nil {
		return nil, err
	}
	return &floodGuard{
		rate: rate.Limit(s.failedAuthRate), burst: s.failedAuthBurst,
		clients: clients, vault: semaphore.NewWeighted(int64(s.verifyConcurrency)),
	}, nil
}

// clientKey groups addresses one client can easily hold: an IPv6 host
// usually has a whole /64. An unknown address shares one bucket.
func clientKey(ip netip.Addr) netip.Prefix {
	switch {
	case !ip.IsValid():
		return netip.Prefix{}
	case ip.Is4():
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// lookup runs f, a Vault lookup of an uncached key for client ip, within the
// limits. f reports whether Vault refused the key. A non-nil decision means f
// was not run.
func (fg *floodGuard) lookup(ctx context.Context, ip netip.Addr, f func() (refused bool)) *decision {
	k := clientKey(ip)
	g, ok := fg.clients.Get(k)
	if !ok {
		g = &clientGate{failures: rate.NewLimiter(fg.rate, fg.burst), turn: make(chan struct{}, 1)}
		if prev, found, _ := fg.clients.PeekOrAdd(k, g); found {
			g = prev
		}
	}
	wait := time.NewTimer(maxLookupWait)
	defer wait.Stop()
	select {
	case g.turn <- struct{}{}:
	case <-wait.C:
		d := decision{status: http.StatusTooManyRequests, reason: reasonTooManyFailures, retryAfter: time.Second}
		return &d
	case <-ctx.Done():
		d := deny(http.StatusServiceUnavailable, reasonUnavailable)
		return &d
	}
	defer func() { <-g.turn }()
	if t := g.failures.Tokens(); t < 1 {
		d := decision{status: http.StatusTooManyRequests, reason: reasonTooManyFailures,
			retryAfter: time.Duration((1 - t) / float64(fg.rate) * float64(time.Second))}
		return &d
	}
	actx, cancel := context.WithTimeout(ctx, maxLookupWait)
	err := fg.vault.Acquire(actx, 1)
	cancel()
	if err != nil {
		d := deny(http.StatusServiceUnavailable, reasonUnavailable)
		return &d
	}
	refused := f()
	fg.vault.Release(1)
	if refused {
		g.failures.Allow() // takes the token checked above
	}
	return nil
}
