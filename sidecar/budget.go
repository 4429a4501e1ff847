package sidecar

import (
	"context"
	"errors"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/keybroker/keybroker/contract"
)

// budgets accounts metered credentials against chunks of budget reserved
// from the plugin. A request holds max_cost_per_request (or its route's fixed
// cost) from the current chunk before it is forwarded and settles its real
// cost after; Vault is called only to reserve a new chunk and, every
// budget_report_interval, to report use.
//
// The bound: a chunk admits holds only while they fit in it, except that
// once the plugin has nothing left to grant, one request at a time may take
// the chunk's last units (the "tail"). Each sidecar so spends at most its
// grants plus one request's overrun: across N sidecars, at most
// budget + N x max_cost_per_request per period.
type budgets struct {
	vault budgetVault
	opt   budgetOptions
	log   hclog.Logger
	met   budgetCounters
	// sf makes concurrent refills of one credential one call.
	sf singleflight.Group

	mu     sync.RWMutex
	meters map[string]*meter

	// reportMu keeps the periodic report and the final one apart.
	reportMu sync.Mutex
	kick     chan struct{}
}

// budgetVault is where budgets reserve and report: the plugin, through the
// Vault client (a fake in tests).
type budgetVault interface {
	reserve(ctx context.Context, req contract.BudgetReserve) (*contract.BudgetReservation, error)
	// report fails with errRefused when retrying cannot help.
	report(ctx context.Context, req contract.BudgetReport) (*contract.BudgetReportAnswer, error)
}

// budgetOptions are the budget_* settings, and the name reservations are
// held under.
type budgetOptions struct {
	reserveRequests                             int
	reportInterval, reservationTTL, idleRelease time.Duration
	holder                                      string
}

// budgetCounters are the metrics budgets bump; the assembly's registry
// holds them.
type budgetCounters struct {
	spent, costOverHold prometheus.Counter
	// fallbacks: responses whose usage could not be read, by source and
	// reason; vaultCalls: Vault calls by op and result.
	fallbacks, vaultCalls *prometheus.CounterVec
}

// meter is one credential's budget as this sidecar sees it.
type meter struct {
	id string

	mu      sync.Mutex
	cur     *chunk   // admitting holds
	retired []*chunk // reported until drained, then released
	tail    bool     // a tail request is in flight
	// exhaustedUntil is the period reset the plugin gave with granted=0;
	// until then requests get 429, asking again at most every recheck.
	exhaustedUntil, recheckAt time.Time
	central                   int64 // what the plugin had left at its last answer; -1: unlimited
	lastUse, credExpires      time.Time
	gone                      bool // dropped from budgets.meters
	// ask is what the next reservation asks for: it doubles while refills
	// come faster than reports, so a busy credential costs Vault about
	// one reservation per report interval, not one per ten requests.
	ask        int64
	lastRefill time.Time
}

// chunk is one reservation.
type chunk struct {
	resID                string
	granted, used, held  int64
	reported             int64
	periodEnd, expiresAt time.Time
	lastReport           time.Time
	released, refused    bool
	// ended: the plugin said the reservation is over (it expired while
	// reports could not get through); it admits nothing more and is
	// released once what it holds settles.
	ended bool
}

// hold is what one request holds until it settles.
type hold struct {
	b      *budgets
	m      *meter
	c      *chunk
	amount int64
	tail   bool
	// remaining is X-Budget-Remaining: what this sidecar knows is left
	// after the hold; -1 when unlimited.
	remaining int64
	settled   atomic.Bool
}

const (
	maxAskGrowth     = 1024
	exhaustedRecheck = time.Second
	maxRefills       = 8
	meterIdle        = time.Minute
)

func newBudgets(vault budgetVault, opt budgetOptions, log hclog.Logger, met budgetCounters) *budgets {
	return &budgets{vault: vault, opt: opt, log: log, met: met, meters: map[string]*meter{}, kick: make(chan struct{}, 1)}
}

// budgetOptionsOf and budgetCountersOf pick budgets' part of the
// sidecar's settings and metrics.
func budgetOptionsOf(s *settings, holder string) budgetOptions {
	return budgetOptions{reserveRequests: s.reserveRequests, reportInterval: s.reportInterval, reservationTTL: s.reservationTTL, idleRelease: s.idleRelease, holder: holder}
}

func budgetCountersOf(m *metrics) budgetCounters {
	return budgetCounters{spent: m.spent, costOverHold: m.costOverHold, fallbacks: m.usageFallbacks, vaultCalls: m.vaultCalls}
}

func (b *budgets) meter(id *identity) *meter {
	b.mu.RLock()
	m := b.meters[id.id]
	b.mu.RUnlock()
	if m != nil {
		return m
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if m = b.meters[id.id]; m == nil {
		m = &meter{id: id.id, central: -1, credExpires: id.expiresAt}
		b.meters[id.id] = m
	}
	return m
}

// acquire holds amount units for a request of id, reserving a new chunk
// from the plugin when the current one cannot cover it.
func (b *budgets) acquire(ctx context.Context, id *identity, amount int64) (*hold, decision) {
	m := b.meter(id)
	for refills := 0; ; refills++ {
		m.mu.Lock()
		if m.gone {
			m.mu.Unlock()
			m = b.meter(id)
			continue
		}
		h, d, refill := m.tryLocked(time.Now(), amount, refills >= maxRefills)
		m.mu.Unlock()
		if !refill {
			if h != nil {
				h.b = b
			}
			return h, d
		}
		if err := b.refill(ctx, m, id.budget.MaxCost); err != nil {
			b.log.Warn("cannot reserve budget; failing closed", "id", id.id, "error", err)
			return nil, deny(http.StatusServiceUnavailable, contract.ReasonUnavailable)
		}
	}
}

// tryLocked holds from the current chunk, or says a refill is needed.
func (m *meter) tryLocked(now time.Time, amount int64, noMoreRefills bool) (*hold, decision, bool) {
	c := m.cur
	if c != nil && !c.admits(now) {
		m.retireLocked()
		c = nil
	}
	if c != nil && c.free() >= amount {
		return m.holdLocked(now, c, amount, false), decision{}, false
	}
	exhausted := now.Before(m.exhaustedUntil)
	if exhausted && !now.Before(m.recheckAt) && !noMoreRefills {
		return nil, decision{}, true // ask the plugin again: the budget may have been raised
	}
	if !exhausted && !noMoreRefills {
		return nil, decision{}, true
	}
	if c != nil && c.free() > 0 && !m.tail {
		m.tail = true
		return m.holdLocked(now, c, c.free(), true), decision{}, false
	}
	if !exhausted {
		// Refills kept being taken by concurrent requests.
		return nil, deny(http.StatusServiceUnavailable, contract.ReasonUnavailable), false
	}
	return nil, decision{status: http.StatusTooManyRequests, reason: contract.ReasonBudgetExhausted, retryAfter: m.exhaustedUntil.Sub(now)}, false
}

func (m *meter) holdLocked(now time.Time, c *chunk, amount int64, tail bool) *hold {
	c.held += amount
	m.lastUse = now
	h := &hold{m: m, c: c, amount: amount, tail: tail, remaining: -1}
	if m.central >= 0 {
		h.remaining = m.central + c.free()
	}
	return h
}

func (c *chunk) free() int64 { return c.granted - c.used - c.held }

// admits says whether new holds may come from c: within its period, and
// not about to expire for want of a report.
func (c *chunk) admits(now time.Time) bool {
	return !c.released && !c.refused && !c.ended && now.Before(c.periodEnd) && now.Before(c.expiresAt.Add(-reservationMargin))
}

// reservationMargin keeps a chunk from admitting requests close to its
// expiry, when a report that could not get through would be refused.
const reservationMargin = 5 * time.Second

func (m *meter) retireLocked() {
	if m.cur != nil {
		m.retired = append(m.retired, m.cur)
		m.cur = nil
	}
}

// refill tops up the current chunk, or reserves a new one; concurrent
// requests for one credential share one call.
func (b *budgets) refill(ctx context.Context, m *meter, maxCost int64) error {
	_, err, _ := b.sf.Do(m.id, func() (interface{}, error) {
		maxCost = max(1, maxCost)
		base := min(maxUnitsRequest, maxCost*int64(b.opt.reserveRequests))
		m.mu.Lock()
		topUp := m.cur
		if topUp != nil && !topUp.admits(time.Now()) {
			topUp = nil
		}
		cur := ""
		if topUp != nil {
			cur = topUp.resID
		}
		if time.Since(m.lastRefill) < b.opt.reportInterval {
			m.ask = min(2*m.ask, base*maxAskGrowth, maxUnitsRequest)
		} else {
			m.ask = base
		}
		m.lastRefill = time.Now()
		units := max(m.ask, base)
		m.mu.Unlock()
		r, err := b.vault.reserve(context.WithoutCancel(ctx), contract.BudgetReserve{
			ID: m.id, ReservationID: cur, Units: units, MinUnits: min(units, maxCost), TTL: int64(b.opt.reservationTTL.Seconds()), Holder: b.opt.holder,
		})
		if err != nil {
			b.met.vaultCalls.WithLabelValues("reserve", "error").Inc()
			return nil, err
		}
		b.met.vaultCalls.WithLabelValues("reserve", "ok").Inc()
		m.mu.Lock()
		defer m.mu.Unlock()
		return nil, m.grantedLocked(time.Now(), topUp, r)
	})
	return err
}

// grantedLocked applies the plugin's answer to a reservation request that
// asked to top up topUp (nil: asked for a new reservation).
//
// One reservation is one chunk: its use is reported as a running total, so
// two chunks reporting on one reservation would each refuse the other's
// total and lose what the refused one spent, while the plugin gives the
// reservation's unused units back to be granted again. A top-up is
// therefore added to the chunk it named even when a report retired that
// chunk while the call was out (it then admits nothing more and is
// released with its units); only a new reservation id makes a new chunk.
func (m *meter) grantedLocked(now time.Time, topUp *chunk, r *contract.BudgetReservation) error {
	m.central = r.Remaining
	if r.Granted == 0 {
		reset, err := time.Parse(time.RFC3339Nano, r.Reset)
		if err != nil || !reset.After(now) {
			reset = now.Add(exhaustedRecheck)
		}
		m.exhaustedUntil, m.recheckAt = reset, now.Add(exhaustedRecheck)
		return nil
	}
	periodEnd, perr := time.Parse(time.RFC3339Nano, r.PeriodEnd)
	expiresAt, eerr := time.Parse(time.RFC3339Nano, r.ExpiresAt)
	if err := errors.Join(perr, eerr); err != nil {
		return err
	}
	m.exhaustedUntil = time.Time{}
	c := topUp
	if c == nil || c.resID != r.ReservationID {
		m.retireLocked()
		c = &chunk{resID: r.ReservationID, periodEnd: periodEnd}
		m.cur = c
	}
	c.granted += r.Granted
	if !c.released {
		c.expiresAt, c.lastReport = expiresAt, now
	}
	return nil
}

// maxUnitsRequest is the plugin's cap on one reservation.
const maxUnitsRequest = 1_000_000_000_000_000

// settle charges cost for a held request, once.
func (h *hold) settle(cost int64) {
	if h == nil || !h.settled.CompareAndSwap(false, true) {
		return
	}
	if cost > h.amount && !h.tail {
		h.b.met.costOverHold.Inc()
	}
	h.b.met.spent.Add(float64(cost))
	m := h.m
	m.mu.Lock()
	h.c.held -= h.amount
	h.c.used += cost
	if h.tail {
		m.tail = false
	}
	drained := h.c != m.cur && h.c.held == 0
	m.mu.Unlock()
	if drained {
		select {
		case h.b.kick <- struct{}{}:
		default:
		}
	}
}

// run reports every interval, and at once when a retired chunk drains.
func (b *budgets) run(ctx context.Context) {
	t := time.NewTicker(b.opt.reportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.kick:
		}
		b.report(ctx, false)
	}
}

// pending is one report to send.
type pending struct {
	m       *meter
	c       *chunk
	used    int64
	granted int64 // the chunk's grant when the report was sent
	release bool
}

// report sends what changed: new use, renewals, and releases of retired or
// idle chunks. final releases everything (a clean stop).
func (b *budgets) report(ctx context.Context, final bool) {
	b.reportMu.Lock()
	defer b.reportMu.Unlock()
	now := time.Now()
	for _, p := range b.collect(now, final) {
		ans, err := b.send(ctx, p)
		if err != nil && !errors.Is(err, errRefused) {
			continue // sent again next interval
		}
		p.m.mu.Lock()
		p.m.reportedLocked(p, ans, now)
		p.m.mu.Unlock()
	}
}

// collect retires what must stop admitting, lists the reports to send, and
// forgets idle meters.
func (b *budgets) collect(now time.Time, final bool) []pending {
	var todo []pending
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, m := range b.meters {
		m.mu.Lock()
		todo = m.pendingLocked(todo, now, final, b.opt)
		if m.idleLocked(now) {
			m.gone = true
			delete(b.meters, id)
		}
		m.mu.Unlock()
	}
	return todo
}

// pendingLocked retires the current chunk when it is over (or idle, or
// final) and adds to todo the reports m's chunks need: new use, a renewal
// due, or the release of a drained retired chunk.
func (m *meter) pendingLocked(todo []pending, now time.Time, final bool, opt budgetOptions) []pending {
	renewEvery := opt.reservationTTL / 3
	if c := m.cur; c != nil && (final || !c.admits(now) || (c.held == 0 && now.Sub(m.lastUse) > opt.idleRelease)) {
		m.retireLocked()
	}
	if c := m.cur; c != nil && (c.used != c.reported || now.Sub(c.lastReport) >= renewEvery) {
		todo = append(todo, pending{m: m, c: c, used: c.used, granted: c.granted})
	}
	for _, c := range m.retired {
		if release := c.held == 0; release || c.used != c.reported || now.Sub(c.lastReport) >= renewEvery {
			todo = append(todo, pending{m: m, c: c, used: c.used, granted: c.granted, release: release})
		}
	}
	return todo
}

// idleLocked says m holds nothing and is no longer worth keeping: unused
// for a while, or its credential expired, and not remembering an
// exhausted budget.
func (m *meter) idleLocked(now time.Time) bool {
	return m.cur == nil && len(m.retired) == 0 && (now.Sub(m.lastUse) > meterIdle || !now.Before(m.credExpires)) && !now.Before(m.exhaustedUntil)
}

// send sends one report, and counts and logs how it went.
func (b *budgets) send(ctx context.Context, p pending) (*contract.BudgetReportAnswer, error) {
	ans, err := b.vault.report(ctx, contract.BudgetReport{ReservationID: p.c.resID, Used: p.used, Release: p.release})
	switch {
	case errors.Is(err, errRefused):
		b.met.vaultCalls.WithLabelValues("report", "refused").Inc()
		b.log.Warn("budget report refused: its use was not recorded", "id", p.m.id, "error", err)
	case err != nil:
		b.met.vaultCalls.WithLabelValues("report", "error").Inc()
		b.log.Warn("budget report failed; retrying next interval", "id", p.m.id, "error", err)
	case ans.Ended == contract.EndedExpired:
		// Recorded, but the units the expiry gave back may have
		// been granted again: this use can go past the bound.
		b.met.vaultCalls.WithLabelValues("report", "late").Inc()
		b.log.Warn("budget reservation expired before its use was reported; the use was recorded late", "id", p.m.id)
	default:
		b.met.vaultCalls.WithLabelValues("report", "ok").Inc()
	}
	return ans, err
}

// reportedLocked applies the plugin's answer to report p; ans nil: the
// report was refused, and its chunk is dropped.
func (m *meter) reportedLocked(p pending, ans *contract.BudgetReportAnswer, now time.Time) {
	c := p.c
	c.lastReport = now
	if ans == nil {
		c.refused = true
	} else {
		c.reported = p.used
		m.central = ans.Remaining
		if ans.Units != nil && *ans.Units < p.granted {
			// The budget was lowered: admit no more than is left.
			// By the decrease only: a top-up answered since the
			// report was sent is not the plugin's to take back.
			c.granted -= p.granted - *ans.Units
		}
		if exp, perr := time.Parse(time.RFC3339Nano, ans.ExpiresAt); perr == nil {
			c.expiresAt = exp
		}
		if ans.Ended != "" && !c.ended {
			c.ended = true
			if m.cur == c {
				m.retireLocked()
			}
		}
	}
	if p.release || c.refused {
		c.released = true
		m.retired = removeChunk(m.retired, c)
		if m.cur == c {
			m.cur = nil
		}
	}
}

func removeChunk(cs []*chunk, c *chunk) []*chunk {
	out := cs[:0]
	for _, x := range cs {
		if x != c {
			out = append(out, x)
		}
	}
	return out
}

// retryAfterSeconds is a Retry-After value: whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}
