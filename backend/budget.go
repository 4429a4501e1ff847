package backend

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/jwtverify"
)

// Bounds on budgets and rates. maxUnits keeps every sum of units far from
// int64 overflow; larger budgets are mistakes, not plans.
const (
	maxUnits            = 1_000_000_000_000_000 // 1e15
	maxRate             = 1_000_000
	minBudgetPeriod     = time.Second
	maxBudgetPeriod     = 366 * 24 * time.Hour
	defaultBudgetPeriod = 24 * time.Hour
)

// limits is what a role, and each credential minted from it, carries about
// spend and request rate. Budget 0 means no per-credential ceiling.
type limits struct {
	Budget       int64         `json:"budget,omitempty"`
	BudgetPeriod time.Duration `json:"budget_period,omitempty"`
	MaxCost      int64         `json:"max_cost_per_request,omitempty"`
	RateLimit    float64       `json:"rate_limit,omitempty"`
	RateBurst    int           `json:"rate_burst,omitempty"`
}

func limitFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"budget": {
			Type:        framework.TypeInt64,
			Description: fmt.Sprintf("Units each credential may spend per budget_period; 0 (default) sets no per-credential ceiling. At most %d.", int64(maxUnits)),
		},
		"budget_period": {
			Type:        framework.TypeDurationSecond,
			Description: "Length of a budget period. Periods start at fixed boundaries (multiples of the period since 0001-01-01 UTC: 24h starts at midnight UTC, 1h on the hour). Default: 24h.",
		},
		"max_cost_per_request": {
			Type:        framework.TypeInt64,
			Description: "Most units one request may cost. Verifiers hold this much before forwarding a request and settle the real cost after. Must not exceed budget. Default: 1.",
		},
		"rate_limit": {
			Type:        framework.TypeFloat,
			Description: "Requests per second each credential may make through each verifier; 0 (default) sets no limit.",
		},
		"rate_burst": {
			Type:        framework.TypeInt,
			Description: "Requests a credential may make at once above rate_limit. Default: rate_limit rounded up.",
		},
	}
}

// limitsChange is the limits a role write gives; nil: left as it is.
type limitsChange struct {
	Budget, MaxCost *int64
	BudgetPeriod    *time.Duration
	RateLimit       *float64
	RateBurst       *int
}

// apply overwrites the limits c gives.
func (l *limits) apply(c limitsChange) {
	setIf(&l.Budget, c.Budget)
	setIf(&l.BudgetPeriod, c.BudgetPeriod)
	setIf(&l.MaxCost, c.MaxCost)
	setIf(&l.RateLimit, c.RateLimit)
	setIf(&l.RateBurst, c.RateBurst)
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// normalize checks the limits and fills in defaults.
func (l *limits) normalize() error {
	switch {
	case l.Budget < 0 || l.Budget > maxUnits:
		return fmt.Errorf("budget must be between 0 and %d, got %d", int64(maxUnits), l.Budget)
	case l.MaxCost < 0 || l.MaxCost > maxUnits:
		return fmt.Errorf("max_cost_per_request must be between 1 and %d, got %d", int64(maxUnits), l.MaxCost)
	case math.IsNaN(l.RateLimit) || l.RateLimit < 0 || l.RateLimit > maxRate:
		return fmt.Errorf("rate_limit must be between 0 and %d requests per second, got %v", maxRate, l.RateLimit)
	case l.RateBurst < 0 || l.RateBurst > maxRate:
		return fmt.Errorf("rate_burst must be between 0 and %d, got %d", maxRate, l.RateBurst)
	case l.RateBurst > 0 && l.RateLimit == 0:
		return fmt.Errorf("rate_burst needs a rate_limit")
	}
	l.applyDefaults()
	if err := validateBudgetPeriod(l.BudgetPeriod); err != nil {
		return err
	}
	if l.Budget > 0 && l.MaxCost > l.Budget {
		return fmt.Errorf("max_cost_per_request (%d) must not exceed budget (%d)", l.MaxCost, l.Budget)
	}
	return nil
}

func (l *limits) applyDefaults() {
	if l.BudgetPeriod == 0 {
		l.BudgetPeriod = defaultBudgetPeriod
	}
	if l.MaxCost == 0 {
		l.MaxCost = 1
	}
	if l.RateLimit > 0 && l.RateBurst == 0 {
		l.RateBurst = int(math.Ceil(l.RateLimit))
	}
}

func validateBudgetPeriod(p time.Duration) error {
	if p < minBudgetPeriod || p > maxBudgetPeriod || p%time.Second != 0 {
		return fmt.Errorf("budget_period must be whole seconds between %s and %s, got %s", minBudgetPeriod, maxBudgetPeriod, p)
	}
	return nil
}

// narrow returns the limits for one credential: the request may ask for a
// smaller budget (field "budget") than the role's, never a larger one.
// within returns l no looser than the role's limits r, for a refresh: a
// budget, cost or rate the role now caps lower is lowered to it, and one the
// role now sets where l had none is taken.
func (l limits) within(r limits) limits {
	if r.Budget > 0 && (l.Budget == 0 || l.Budget > r.Budget) {
		if l.Budget == 0 {
			l.BudgetPeriod = r.BudgetPeriod
		}
		l.Budget = r.Budget
	}
	if r.MaxCost > 0 && (l.MaxCost == 0 || l.MaxCost > r.MaxCost) {
		l.MaxCost = r.MaxCost
	}
	if l.Budget > 0 && l.MaxCost > l.Budget {
		l.MaxCost = l.Budget
	}
	if r.RateLimit > 0 && (l.RateLimit == 0 || l.RateLimit > r.RateLimit) {
		l.RateLimit = r.RateLimit
	}
	if r.RateBurst > 0 && (l.RateBurst == 0 || l.RateBurst > r.RateBurst) {
		l.RateBurst = r.RateBurst
	}
	return l
}

func (l limits) narrow(roleName string, budget *int64) (limits, error) {
	if budget == nil {
		return l, nil
	}
	asked := *budget
	switch {
	case asked <= 0 || asked > maxUnits:
		return l, fmt.Errorf("budget must be between 1 and %d, got %d", int64(maxUnits), asked)
	case l.Budget > 0 && asked > l.Budget:
		return l, fmt.Errorf("budget %d exceeds role %q's budget (%d)", asked, roleName, l.Budget)
	case asked < l.MaxCost:
		return l, fmt.Errorf("budget %d is below role %q's max_cost_per_request (%d)", asked, roleName, l.MaxCost)
	}
	l.Budget = asked
	return l, nil
}

func (l limits) responseData(data map[string]interface{}) {
	data["budget"] = l.Budget
	data["budget_period"] = int64(l.BudgetPeriod.Seconds())
	data["max_cost_per_request"] = l.MaxCost
	data["rate_limit"] = l.RateLimit
	data["rate_burst"] = l.RateBurst
}

// claims are the limits as verifiers see them: budget when the credential is
// metered (its own budget, or a tenant ceiling), rate_limit when it has one.
func (l limits) claims(metered bool) (*jwtverify.Budget, *jwtverify.RateLimit) {
	var b *jwtverify.Budget
	var r *jwtverify.RateLimit
	if metered {
		b = &jwtverify.Budget{Units: l.Budget, Period: int64(l.BudgetPeriod.Seconds()), MaxCost: l.MaxCost}
	}
	if l.RateLimit > 0 {
		r = &jwtverify.RateLimit{PerSecond: l.RateLimit, Burst: l.RateBurst}
	}
	return b, r
}

// account is the spend of one credential or tenant in its current period,
// and the reservations verifiers hold against it.
type account struct {
	PeriodStart  time.Time               `json:"period_start"`
	Used         int64                   `json:"used"`
	Reservations map[string]*reservation `json:"reservations,omitempty"`
	// Ended are reservations released or expired in the last endedKeep (at
	// most maxEnded): a release retried after its answer was lost is
	// answered as the first was, and use a verifier reports late, after
	// its reservation expired, still counts.
	Ended map[string]*reservation `json:"ended,omitempty"`
}

const (
	endedKeep = maxReservationTTL
	maxEnded  = 32
)

// reservation is a chunk of budget one verifier holds. It counts against the
// period it was granted in; use reported on it after that period counts
// there, not in the new one.
type reservation struct {
	PeriodStart time.Time     `json:"period_start"`
	Units       int64         `json:"units"`
	Used        int64         `json:"used"`
	TTL         time.Duration `json:"ttl"`
	ExpiresAt   time.Time     `json:"expires_at"`
	Holder      string        `json:"holder,omitempty"`
	// Owner is the Vault identity that made the reservation (its entity,
	// else its token accessor): only it may top it up, report on it or
	// release it.
	Owner string `json:"owner,omitempty"`
	// LastUse is when units were last granted or reported used: a
	// reservation whose reports show no use stops being renewed
	// maxIdleRenewal after it, so units cannot be hoarded by renewing.
	LastUse time.Time `json:"last_use,omitempty"`
	// TenantID and TenantPeriod are the tenant ceiling and period the
	// reservation counts in (see tenantEntry.counts); empty when none.
	TenantID     string    `json:"tenant_id,omitempty"`
	TenantPeriod time.Time `json:"tenant_period,omitempty"`
	// EndedAt is when the reservation was released or expired, for one in
	// account.Ended; Released tells which.
	EndedAt  time.Time `json:"ended_at,omitzero"`
	Released bool      `json:"released,omitempty"`
}

func periodStart(now time.Time, period time.Duration) time.Time {
	return now.UTC().Truncate(period)
}

// roll starts a new period when now is past the current one, and ends
// expired reservations, whose unused units so come back. A now before the
// current period changes nothing, as in pool.roll.
func (a *account) roll(now time.Time, period time.Duration) {
	if now.Before(a.PeriodStart) {
		return
	}
	if start := periodStart(now, period); !start.Equal(a.PeriodStart) {
		a.PeriodStart = start
		a.Used = 0
	}
	for id, r := range a.Reservations {
		if !now.Before(r.ExpiresAt) {
			a.end(id, r.ExpiresAt, false)
		}
	}
	for id, r := range a.Ended {
		if now.Sub(r.EndedAt) > endedKeep {
			delete(a.Ended, id)
		}
	}
}

// end moves reservation id to the ended ones. Past maxEnded, released ones
// go first, oldest first: a lost answer to a release costs nothing, while
// an expired reservation may still have use to report, which must not be
// pushed out by other reservations' churn.
func (a *account) end(id string, at time.Time, released bool) {
	r := a.Reservations[id]
	if r == nil {
		return
	}
	delete(a.Reservations, id)
	r.EndedAt, r.Released = at, released
	if a.Ended == nil {
		a.Ended = map[string]*reservation{}
	}
	a.Ended[id] = r
	for len(a.Ended) > maxEnded {
		first := ""
		for id, e := range a.Ended {
			if f := a.Ended[first]; first == "" || (e.Released && !f.Released) ||
				(e.Released == f.Released && e.EndedAt.Before(f.EndedAt)) {
				first = id
			}
		}
		delete(a.Ended, first)
	}
}

// lookup finds reservation id, live or ended.
func (a *account) lookup(id string) (r *reservation, ended bool) {
	if r = a.Reservations[id]; r != nil {
		return r, false
	}
	r = a.Ended[id]
	return r, r != nil
}

// reserved is what live reservations of the current period hold unused.
func (a *account) reserved() int64 {
	var n int64
	for _, r := range a.Reservations {
		if r.PeriodStart.Equal(a.PeriodStart) && r.Units > r.Used {
			n += r.Units - r.Used
		}
	}
	return n
}

// remaining is what can still be reserved; -1 when limit is 0 (no ceiling).
func (a *account) remaining(limit int64) int64 {
	if limit == 0 {
		return -1
	}
	return max(0, limit-a.Used-a.reserved())
}

// report records the cumulative use of reservation id, live or ended. Use
// only grows, so a retried report counts once; only a live reservation is
// renewed.
func (a *account) report(id string, used int64, now time.Time) error {
	r, ended := a.lookup(id)
	if r == nil {
		return errUnknownReservation
	}
	if used < r.Used {
		return fmt.Errorf("used (%d) is below what was already reported on this reservation (%d); report the running total", used, r.Used)
	}
	if r.PeriodStart.Equal(a.PeriodStart) {
		a.Used += used - r.Used
	}
	if used > r.Used || r.LastUse.IsZero() {
		r.LastUse = now
	}
	r.Used = used
	if !ended && now.Sub(r.LastUse) < maxIdleRenewal {
		r.ExpiresAt = now.Add(r.TTL)
	}
	return nil
}

var errUnknownReservation = fmt.Errorf("reservation is unknown")

// minRemaining is the smaller of two remainders where -1 means unlimited.
func minRemaining(a, b int64) int64 {
	switch {
	case a < 0:
		return b
	case b < 0:
		return a
	}
	return min(a, b)
}

// status is an account as reads show it.
func (a *account) status(limit int64, period time.Duration) map[string]interface{} {
	return spendStatus(limit, a.Used, a.reserved(), a.remaining(limit), a.PeriodStart, period)
}

// refusal is a metering request refused for what it asks (the caller's
// mistake, or a state it must learn of), not a failure of the plugin: the
// domain functions return it, and respond answers it as a 400 (or code).
type refusal struct {
	code int
	msg  string
}

func (r *refusal) Error() string { return r.msg }

// refuse is a 400 refusal.
func refuse(format string, args ...interface{}) error {
	return &refusal{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// respond turns a domain function's answer into the handler's: a refusal
// into an error response (a 403 into a coded error, as Vault answers a
// denied request), any other error into Vault's 500.
func respond(data func() map[string]interface{}, err error) (*logical.Response, error) {
	var r *refusal
	switch {
	case errors.As(err, &r) && r.code != http.StatusBadRequest:
		return nil, logical.CodedError(r.code, r.msg)
	case errors.As(err, &r):
		return logical.ErrorResponse(r.msg), nil
	case err != nil:
		return nil, err
	}
	return &logical.Response{Data: data()}, nil
}
