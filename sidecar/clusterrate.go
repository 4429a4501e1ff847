package sidecar

import (
	"context"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
)

// clusterRateShare: a sidecar takes a window's limit in chunks of a
// quarter (at least one request), so that a few sidecars share a window
// with a Vault call each per chunk.
const clusterRateShare = 4

// clusterRateRetry is how long a sidecar that could not reach Vault for a
// lineage's window relies on its own bucket before asking again.
const clusterRateRetry = time.Second

// clusterRate keeps rate limits across sidecars (rate_limit_scope =
// "cluster"). Every lineage's requests come from the plugin's window for it
// (keybroker/rate/reserve), taken in chunks; the sidecar's own token bucket
// still applies first, which also bounds how often it asks. When Vault
// cannot be reached the sidecar's own bucket is the limit (per sidecar) until
// it can: a rate limit is there against floods, and the bucket still is one.
type clusterRate struct {
	vault   rateVault
	log     hclog.Logger
	windows *lru.Cache[string, *rateSlots]
	// vaultCalls counts the calls to Vault (op "rate").
	vaultCalls *prometheus.CounterVec
}

// rateVault is where the windows are kept: the plugin, through the Vault
// client (a fake in tests).
type rateVault interface {
	rateReserve(ctx context.Context, req contract.RateReserve) (*contract.RateAnswer, error)
}

// rateSlots are the requests this sidecar holds of one lineage's window.
type rateSlots struct {
	mu    sync.Mutex
	left  int64
	end   time.Time // end of the window the slots are of
	spent bool      // the window has none left at any sidecar
}

// newClusterRate keeps the windows of up to size lineages; vaultCalls
// counts its calls (op "rate").
func newClusterRate(vault rateVault, size int, log hclog.Logger, vaultCalls *prometheus.CounterVec) (*clusterRate, error) {
	w, err := lru.New[string, *rateSlots](size)
	return &clusterRate{vault: vault, log: log, windows: w, vaultCalls: vaultCalls}, err
}

// allow takes one request of id's lineage from the window, or says how long
// until the next window.
func (cr *clusterRate) allow(ctx context.Context, id *identity) (time.Duration, bool) {
	key := id.lineage()
	s, ok := cr.windows.Get(key)
	if !ok {
		s = &rateSlots{}
		if prev, found, _ := cr.windows.PeekOrAdd(key, s); found {
			s = prev
		}
	}
	// Holding the lineage's lock while asking Vault makes its concurrent
	// requests share one call.
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Before(s.end) {
		switch {
		case s.left > 0:
			s.left--
			return 0, true
		case s.spent:
			return s.end.Sub(now), false
		}
	}
	_, limit := contract.RateWindow(id.rate.PerSecond, id.rate.Burst)
	// Not cancelled with the request: a client that hangs up must not turn
	// the call into an error, which would fall back to the sidecar's bucket.
	req := contract.RateReserve{ID: id.id, Units: max(1, limit/clusterRateShare)}
	if id.jwt {
		req.Role, req.Subject = id.role, id.subject
	}
	ans, err := cr.vault.rateReserve(context.WithoutCancel(ctx), req)
	var end time.Time
	if err == nil {
		end, err = time.Parse(time.RFC3339Nano, ans.WindowEnd)
	}
	if err != nil || !ans.Limited {
		if err != nil {
			cr.vaultCalls.WithLabelValues("rate", "error").Inc()
			cr.log.Warn("cluster rate limit unavailable; this sidecar's own limit applies", "error", err)
		}
		// No window to take from: the sidecar's bucket alone, until
		// asking again is worth it.
		s.left, s.end, s.spent = 1<<62, now.Add(clusterRateRetry), false
		return 0, true
	}
	cr.vaultCalls.WithLabelValues("rate", "ok").Inc()
	s.end = end
	if ans.Granted <= 0 {
		s.left, s.spent = 0, true
		return max(0, end.Sub(now)), false
	}
	s.left, s.spent = ans.Granted-1, false
	return 0, true
}
