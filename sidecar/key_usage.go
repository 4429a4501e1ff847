package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
)

// Last used: the sidecar decides without Vault, so only it sees a key used.
// It notes, per key_id, when it last let the key through, from where, and
// how often, and reports that to keybroker/key-usage once per
// usage_report_interval: one Vault call per interval, however busy.
//
// Each report carries a random report_id. A report whose answer did not
// come back is sent again as it was, with its id, before any newer one
// (the plugin counts a report_id once, for an hour at least); meanwhile
// the keys seen keep adding up for the next report.

// maxUsageKeys bounds what one interval holds (and the plugin takes per
// report); keys beyond it in an interval are counted as dropped.
const maxUsageKeys = contract.MaxKeyUsageEntries

// usageRetryFor is how long an unanswered report is sent again: well within
// the hour the plugin remembers its report_id, so that a late retry is not
// counted twice. Then it is dropped.
const usageRetryFor = 30 * time.Minute

type keyUse struct {
	last  time.Time
	from  netip.Addr
	count int64
}

// keyUsage notes the API keys let through and reports them each interval.
type keyUsage struct {
	vault    usageVault
	log      hclog.Logger
	interval time.Duration // 0: off
	// dropped counts uses past maxUsageKeys; vaultCalls the reports
	// (op "key_usage").
	dropped    prometheus.Counter
	vaultCalls *prometheus.CounterVec
	// off: Vault refused the reports for the policy.
	off atomic.Bool

	mu   sync.Mutex
	seen map[string]*keyUse
	// pending is the report sent whose answer did not come back; only
	// run's goroutine uses it.
	pending *usageReport
}

// usageVault is where key usage goes: the plugin, through the Vault client.
// An error is Vault's (*api.ResponseError for an answer), not decorated.
type usageVault interface {
	reportKeyUsage(ctx context.Context, req contract.KeyUsageReport) error
}

// newKeyUsage reports every interval (0: never; saw notes nothing).
func newKeyUsage(vault usageVault, interval time.Duration, log hclog.Logger, dropped prometheus.Counter, vaultCalls *prometheus.CounterVec) *keyUsage {
	return &keyUsage{vault: vault, interval: interval, log: log, dropped: dropped, vaultCalls: vaultCalls}
}

// usageReport is one report as sent: sent again byte for byte.
type usageReport struct {
	id    string
	body  string
	keys  int
	first time.Time
}

// wanted says whether uses are noted: reports are on and Vault has not
// refused them.
func (u *keyUsage) wanted() bool { return u.interval > 0 && !u.off.Load() }

// saw notes one allowed request of API key id.
func (u *keyUsage) saw(id string, from netip.Addr, now time.Time) {
	u.mu.Lock()
	e, ok := u.seen[id]
	switch {
	case ok:
		e.count++
		e.last, e.from = now, from
	case len(u.seen) < maxUsageKeys:
		if u.seen == nil {
			u.seen = make(map[string]*keyUse)
		}
		u.seen[id] = &keyUse{last: now, from: from, count: 1}
	default:
		u.mu.Unlock()
		u.dropped.Inc()
		return
	}
	u.mu.Unlock()
}

// take empties the interval's usage.
func (u *keyUsage) take() map[string]*keyUse {
	u.mu.Lock()
	defer u.mu.Unlock()
	seen := u.seen
	u.seen = nil
	return seen
}

// run sends each interval's usage until ctx ends, and what is left once
// more at the end.
func (u *keyUsage) run(ctx context.Context) {
	t := time.NewTicker(u.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			final, done := context.WithTimeout(context.Background(), 5*time.Second)
			u.send(final)
			done()
			return
		case <-t.C:
			if u.off.Load() {
				return
			}
			u.send(ctx)
		}
	}
}

func (u *keyUsage) send(ctx context.Context) {
	if p := u.pending; p != nil {
		if time.Since(p.first) > usageRetryFor {
			u.log.Warn("a key-usage report Vault did not answer for too long was dropped", "keys", p.keys, "report_id", p.id)
			u.pending = nil
		} else if !u.post(ctx, p) {
			return // the keys seen since wait for it
		}
	}
	seen := u.take()
	if len(seen) == 0 {
		return
	}
	entries := make([]contract.KeyUse, 0, len(seen))
	for id, e := range seen {
		entries = append(entries, contract.KeyUse{KeyID: id, Last: e.last.Unix(), From: ipString(e.from), Count: e.count})
	}
	body, err := json.Marshal(entries)
	if err != nil {
		u.log.Warn("cannot encode a key-usage report; dropped", "keys", len(entries), "error", err)
		return
	}
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	u.post(ctx, &usageReport{id: hex.EncodeToString(id[:]), body: string(body), keys: len(entries), first: time.Now()})
}

// post sends report r; one that did not get an answer is kept to be sent
// again (pending). It says whether r is done with.
func (u *keyUsage) post(ctx context.Context, r *usageReport) bool {
	err := u.vault.reportKeyUsage(ctx, contract.KeyUsageReport{Usage: r.body, ReportID: r.id})
	u.pending = nil
	var re *api.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusForbidden:
		// After a fresh login (withLogin): the policy lacks key-usage.
		// Stop, rather than log in again every interval.
		u.vaultCalls.WithLabelValues("key_usage", "refused").Inc()
		u.log.Warn("the sidecar's policy does not allow keybroker/key-usage; last-used reports are off until restart (add the policy line from examples/policies/sidecar.hcl)")
		u.off.Store(true)
	case errors.As(err, &re) && re.StatusCode == http.StatusBadRequest:
		u.vaultCalls.WithLabelValues("key_usage", "refused").Inc()
		u.log.Warn("Vault refused a key-usage report; dropped", "keys", r.keys, "error", err)
	case err != nil:
		u.vaultCalls.WithLabelValues("key_usage", "error").Inc()
		u.log.Warn("reporting key usage failed; sent again next interval", "keys", r.keys, "error", err)
		u.pending = r
		return false
	default:
		u.vaultCalls.WithLabelValues("key_usage", "ok").Inc()
	}
	return true
}
