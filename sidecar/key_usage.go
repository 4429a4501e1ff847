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
	"time"

	"github.com/hashicorp/vault/api"

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

type keyUsage struct {
	mu   sync.Mutex
	seen map[string]*keyUse
	// pending is the report sent whose answer did not come back; only
	// reportUsage's goroutine uses it.
	pending *usageReport
}

// usageReport is one report as sent: sent again byte for byte.
type usageReport struct {
	id    string
	body  string
	keys  int
	first time.Time
}

// saw notes one allowed request of an API key.
func (sc *Sidecar) sawKey(id *identity, from netip.Addr, now time.Time) {
	u := &sc.usage
	u.mu.Lock()
	e, ok := u.seen[id.id]
	switch {
	case ok:
		e.count++
		e.last, e.from = now, from
	case len(u.seen) < maxUsageKeys:
		if u.seen == nil {
			u.seen = make(map[string]*keyUse)
		}
		u.seen[id.id] = &keyUse{last: now, from: from, count: 1}
	default:
		u.mu.Unlock()
		sc.m.usageDropped.Inc()
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

// reportUsage sends each interval's usage until ctx ends, and what is left
// once more at the end.
func (sc *Sidecar) reportUsage(ctx context.Context) {
	t := time.NewTicker(sc.s.usageReport)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			final, done := context.WithTimeout(context.Background(), 5*time.Second)
			sc.sendUsage(final)
			done()
			return
		case <-t.C:
			if sc.usageOff.Load() {
				return
			}
			sc.sendUsage(ctx)
		}
	}
}

func (sc *Sidecar) sendUsage(ctx context.Context) {
	u := &sc.usage
	if p := u.pending; p != nil {
		if time.Since(p.first) > usageRetryFor {
			sc.log.Warn("a key-usage report Vault did not answer for too long was dropped", "keys", p.keys, "report_id", p.id)
			u.pending = nil
		} else if !sc.postUsage(ctx, p) {
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
		sc.log.Warn("cannot encode a key-usage report; dropped", "keys", len(entries), "error", err)
		return
	}
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	sc.postUsage(ctx, &usageReport{id: hex.EncodeToString(id[:]), body: string(body), keys: len(entries), first: time.Now()})
}

// postUsage sends report r; one that did not get an answer is kept to be
// sent again (pending). It says whether r is done with.
func (sc *Sidecar) postUsage(ctx context.Context, r *usageReport) bool {
	err := sc.vault.withLogin(ctx, func() error {
		_, werr := sc.vault.c.Logical().WriteWithContext(ctx, sc.vault.mount+"/key-usage", map[string]interface{}{"usage": r.body, "report_id": r.id})
		return werr
	})
	sc.usage.pending = nil
	var re *api.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusForbidden:
		// After a fresh login (withLogin): the policy lacks key-usage.
		// Stop, rather than log in again every interval.
		sc.m.vaultCalls.WithLabelValues("key_usage", "refused").Inc()
		sc.log.Warn("the sidecar's policy does not allow keybroker/key-usage; last-used reports are off until restart (add the policy line from examples/policies/sidecar.hcl)")
		sc.usageOff.Store(true)
	case errors.As(err, &re) && re.StatusCode == http.StatusBadRequest:
		sc.m.vaultCalls.WithLabelValues("key_usage", "refused").Inc()
		sc.log.Warn("Vault refused a key-usage report; dropped", "keys", r.keys, "error", err)
	case err != nil:
		sc.m.vaultCalls.WithLabelValues("key_usage", "error").Inc()
		sc.log.Warn("reporting key usage failed; sent again next interval", "keys", r.keys, "error", err)
		sc.usage.pending = r
		return false
	default:
		sc.m.vaultCalls.WithLabelValues("key_usage", "ok").Inc()
	}
	return true
}
