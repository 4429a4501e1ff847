package backend

import (
	"time"

	"github.com/hashicorp/vault/sdk/framework"
)

// pool is a tenant's account: what the tenant's credentials used in the
// current period, and what their live reservations hold unused, summed by
// the second in which they expire. Its size is bounded by how far ahead
// reservations expire (maxReservationTTL), never by how many reservations,
// credentials or verifiers there are; the reservations themselves live in
// their credentials' meters.
type pool struct {
	PeriodStart time.Time `json:"period_start"`
	Used        int64     `json:"used"`
	// Held maps a unix second to the units held unused by reservations that
	// expire at or before it (and after the second before).
	Held map[int64]int64 `json:"held,omitempty"`
}

// holdSecond is the key under which a reservation expiring at exp is held:
// exp rounded up to the second, so its units come back at most a second
// after it expires, never before.
func holdSecond(exp time.Time) int64 {
	s := exp.Unix()
	if exp.After(time.Unix(s, 0)) {
		s++
	}
	return s
}

// roll starts a new period when now is past the current one (reservations
// of the old period hold nothing in the new one) and lets go of what
// reservations that have expired held. A now before the current period (a
// clock read before another request rolled the pool on, or a clock stepped
// back) changes nothing: going back a period would wipe the new one's use
// and holds, and grant its ceiling again.
func (p *pool) roll(now time.Time, period time.Duration) {
	if now.Before(p.PeriodStart) {
		return
	}
	if start := periodStart(now, period); !start.Equal(p.PeriodStart) {
		p.PeriodStart, p.Used, p.Held = start, 0, nil
	}
	for s := range p.Held {
		if s <= now.Unix() {
			delete(p.Held, s)
		}
	}
}

func (p *pool) reserved() int64 {
	var n int64
	for _, u := range p.Held {
		n += u
	}
	return n
}

func (p *pool) remaining(limit int64) int64 {
	return max(0, limit-p.Used-p.reserved())
}

// counts says whether reservation r counts in t's current period: it was
// granted against this ceiling (not a deleted one of the same name) in this
// period.
func (t *tenantEntry) counts(r *reservation) bool {
	return t != nil && r.TenantID == t.ID && r.TenantPeriod.Equal(t.PeriodStart)
}

// join makes r, a new reservation, count against t's current period.
func (t *tenantEntry) join(r *reservation) {
	if t != nil {
		r.TenantID, r.TenantPeriod = t.ID, t.PeriodStart
	}
}

// unhold takes out what r held, as it was before a change; hold puts in what
// it holds after. Every change to a reservation's units, use or expiry is
// bracketed by the two.
func (t *tenantEntry) unhold(r reservation) {
	if !t.counts(&r) {
		return
	}
	s := holdSecond(r.ExpiresAt)
	if v, ok := t.Held[s]; ok {
		if v -= max(0, r.Units-r.Used); v > 0 {
			t.Held[s] = v
		} else {
			delete(t.Held, s)
		}
	}
}

func (t *tenantEntry) hold(r *reservation, now time.Time) {
	unused := r.Units - r.Used
	if !t.counts(r) || unused <= 0 || !now.Before(r.ExpiresAt) {
		return
	}
	if t.Held == nil {
		t.Held = map[int64]int64{}
	}
	t.Held[holdSecond(r.ExpiresAt)] += unused
}

// use records units newly used on r.
func (t *tenantEntry) use(r *reservation, units int64) {
	if t.counts(r) {
		t.Used += units
	}
}

// spendStatus is an account as reads show it.
func spendStatus(limit, used, reserved, remaining int64, start time.Time, period time.Duration) map[string]interface{} {
	return map[string]interface{}{
		"limit":        limit,
		"used":         used,
		"reserved":     reserved,
		"remaining":    remaining,
		"period_start": start.Format(time.RFC3339),
		"reset":        start.Add(period).Format(time.RFC3339),
	}
}

// spendFields describe spendStatus.
func spendFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"limit":        out(framework.TypeInt64, "Units per period; 0: no ceiling."),
		"used":         out(framework.TypeInt64, "Units used this period."),
		"reserved":     out(framework.TypeInt64, "Units that live reservations of this period hold unused."),
		"remaining":    out(framework.TypeInt64, "Units that can still be reserved this period; -1: unlimited."),
		"period_start": out(framework.TypeTime, "When the current period started."),
		"reset":        out(framework.TypeTime, "When the current period ends."),
	}
}
