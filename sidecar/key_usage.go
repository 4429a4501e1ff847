package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

// Last used: the sidecar decides without Vault, so only it sees a key used.
// It notes, per key_id, when it last let the key through, from where, and
// how often, and reports that to keybroker/key-usage once per
// usage_report_interval: one Vault call per interval, however busy.

// maxUsageKeys bounds what one interval holds (and the plugin takes per
// report); keys beyond it in an interval are counted as dropped.
const maxUsageKeys = 10000

type keyUse struct {
	last  time.Time
	from  netip.Addr
	count int64
}

type keyUsage struct {
	mu   sync.Mutex
	seen map[string]*keyUse
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

// giveBack merges an unreported interval into the current one.
func (u *keyUsage) giveBack(seen map[string]*keyUse) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.seen == nil {
		u.seen = make(map[string]*keyUse, len(seen))
	}
	for id, e := range seen {
		if cur, ok := u.seen[id]; ok {
			cur.count += e.count
			if e.last.After(cur.last) {
				cur.last, cur.from = e.last, e.from
			}
		} else if len(u.seen) < maxUsageKeys {
			u.seen[id] = e
		}
	}
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
	seen := sc.usage.take()
	if len(seen) == 0 {
		return
	}
	type entry struct {
		KeyID string `json:"key_id"`
		Last  int64  `json:"last"`
		From  string `json:"from,omitempty"`
		Count int64  `json:"count"`
	}
	entries := make([]entry, 0, len(seen))
	for id, e := range seen {
		entries = append(entries, entry{KeyID: id, Last: e.last.Unix(), From: ipString(e.from), Count: e.count})
	}
	body, err := json.Marshal(entries)
	if err == nil {
		err = sc.vault.withLogin(ctx, func() error {
			_, werr := sc.vault.c.Logical().WriteWithContext(ctx, sc.vault.mount+"/key-usage", map[string]interface{}{"usage": string(body)})
			return werr
		})
	}
	var re *api.ResponseError
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusForbidden:
		// After a fresh login (withLogin): the policy lacks key-usage.
		// Stop, rather than log in again every interval.
		sc.m.vaultCalls.WithLabelValues("key_usage", "refused").Inc()
		sc.log.Warn("the sidecar's policy does not allow keybroker/key-usage; last-used reports are off until restart (add the policy line from examples/policies/sidecar.hcl)")
		sc.usageOff.Store(true)
		return
	case errors.As(err, &re) && re.StatusCode == http.StatusBadRequest:
		sc.m.vaultCalls.WithLabelValues("key_usage", "refused").Inc()
		sc.log.Warn("Vault refused a key-usage report; dropped", "keys", len(entries), "error", err)
		return
	case err != nil:
		sc.m.vaultCalls.WithLabelValues("key_usage", "error").Inc()
		sc.log.Warn("reporting key usage failed; kept for the next report", "keys", len(entries), "error", err)
		sc.usage.giveBack(seen)
		return
	}
	sc.m.vaultCalls.WithLabelValues("key_usage", "ok").Inc()
}
