package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar/internal/clientkey"
)

// floodGuard bounds the Vault calls that unknown API keys can cause. A key's
// checksum is public (CRC32), so anyone can make well-formed keys that only
// Vault can refuse. Three limits hold:
//   - per client (an IPv4 address, an IPv6 /64): a token bucket of
//     failed_auth_burst tokens refilled at failed_auth_rate per second; each
//     lookup Vault refuses takes one, and lookups in flight never outnumber
//     the tokens left, so every refusal has its token. One client so causes
//     at most burst + rate x t refused lookups in t seconds; with no token
//     left it gets 429 too_many_failures with Retry-After, and Vault is not
//     asked. Valid keys take no token (they are cached after).
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
	mu       sync.Mutex
	failures *rate.Limiter
	inflight int
	done     chan struct{} // closed and replaced when a lookup ends
}

// maxLookupWait is how long a request waits for room among its client's
// lookups or for a free Vault slot before it is refused.
const maxLookupWait = 2 * time.Second

// newFloodGuard holds up to size clients, each refilled at perSecond up to
// burst, with at most inFlight lookups at Vault.
func newFloodGuard(size int, perSecond float64, burst, inFlight int) (*floodGuard, error) {
	clients, err := lru.New[netip.Prefix, *clientGate](size)
	if err != nil {
		return nil, err
	}
	return &floodGuard{
		rate: rate.Limit(perSecond), burst: burst,
		clients: clients, vault: semaphore.NewWeighted(int64(inFlight)),
	}, nil
}

func (fg *floodGuard) gate(ip netip.Addr) *clientGate {
	k := clientkey.Of(ip)
	if g, ok := fg.clients.Get(k); ok {
		return g
	}
	g := &clientGate{failures: rate.NewLimiter(fg.rate, fg.burst), done: make(chan struct{})}
	if prev, found, _ := fg.clients.PeekOrAdd(k, g); found {
		return prev
	}
	return g
}

// lookup runs f, a Vault lookup of an uncached key for client ip, within the
// limits. f reports whether Vault refused the key. A non-nil decision means f
// was not run.
func (fg *floodGuard) lookup(ctx context.Context, ip netip.Addr, f func() (refused bool)) *decision {
	g := fg.gate(ip)
	timeout := time.NewTimer(maxLookupWait)
	defer timeout.Stop()
	for {
		g.mu.Lock()
		t := g.failures.Tokens()
		if t < 1 {
			g.mu.Unlock()
			return &decision{status: http.StatusTooManyRequests, reason: contract.ReasonTooManyFailures,
				retryAfter: time.Duration((1 - t) / float64(fg.rate) * float64(time.Second))}
		}
		if t >= float64(g.inflight+1) {
			g.inflight++
			g.mu.Unlock()
			break
		}
		wait := g.done
		g.mu.Unlock()
		select {
		case <-wait:
		case <-timeout.C:
			return &decision{status: http.StatusTooManyRequests, reason: contract.ReasonTooManyFailures, retryAfter: time.Second}
		case <-ctx.Done():
			return &decision{status: http.StatusServiceUnavailable, reason: contract.ReasonUnavailable}
		}
	}
	refused := false
	defer func() {
		g.mu.Lock()
		g.inflight--
		if refused {
			g.failures.Allow() // there was a token for it: inflight never exceeds them
		}
		close(g.done)
		g.done = make(chan struct{})
		g.mu.Unlock()
	}()
	actx, cancel := context.WithTimeout(ctx, maxLookupWait)
	err := fg.vault.Acquire(actx, 1)
	cancel()
	if err != nil {
		return &decision{status: http.StatusServiceUnavailable, reason: contract.ReasonUnavailable}
	}
	refused = f()
	fg.vault.Release(1)
	return nil
}
