package backend

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

const (
	defaultReservationTTL = 30 * time.Second
	minReservationTTL     = 5 * time.Second
	maxReservationTTL     = 10 * time.Minute
	// maxIdleRenewal: a reservation with no new use is renewed by reports
	// for this long after its last grant or use, then left to expire.
	maxIdleRenewal = 2 * time.Minute
	// Live reservations one credential may have, in all and per Vault
	// identity: a sidecar holds one current chunk and a few draining.
	maxReservationsPerCredential = 256
	maxReservationsPerOwner      = 8
)

// meter is the budget of one credential: a snapshot of its limits and its
// account. A JWT of a refresh family links to the family's meter, so that
// refreshing does not bring a fresh budget.
type meter struct {
	Limit  int64         `json:"limit"`
	Period time.Duration `json:"period"`
	// MaxCost is the credential's max_cost_per_request: a report may record
	// at most a reservation's units plus this (one request's overrun).
	MaxCost   int64     `json:"max_cost,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	ExpiresAt time.Time `json:"expires_at"`
	Link      string    `json:"link,omitempty"`
	// Role is the role of the credential the meter was opened for: a
	// change of its budget is under budget/<role>/<id>, that role's path,
	// whichever credential sharing the meter names it (a rotated key's
	// successor, an exchanged token). Empty on meters of older versions.
	Role string `json:"role,omitempty"`
	account
}

func pathBudget(b *backend) []*framework.Path {
	credentialIDField := &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "The credential: an API key's key_id or a JWT's jti.",
		Required:    true,
	}
	budgetPeriod := map[string]*framework.FieldSchema{"budget_period": out(framework.TypeInt64, "Length of the credential's budget period, in seconds.")}
	budgetRead := merged(spendFields(), budgetPeriod, map[string]*framework.FieldSchema{
		"tenant":        out(framework.TypeString, "The credential's tenant; empty: none."),
		"expires_at":    out(framework.TypeTime, "When the credential's budget is kept until: its expiry, or its refresh family's."),
		"tenant_budget": out(framework.TypeMap, "Only when the tenant has a ceiling: its limit, used, reserved, remaining, period_start and reset."),
	})
	reservation := map[string]*framework.FieldSchema{
		contract.FieldUnits:     out(framework.TypeInt64, "Units the reservation holds now, used ones included; fewer than granted when the budget was lowered since."),
		contract.FieldExpiresAt: out(framework.TypeTime, "When the reservation expires unless a report renews it."),
	}
	return []*framework.Path{
		{
			Pattern: contract.PathBudgetReserve + "$",
			Fields: map[string]*framework.FieldSchema{
				contract.FieldID: credentialIDField,
				contract.FieldUnits: {
					Type:        framework.TypeInt64,
					Description: fmt.Sprintf("Units to reserve (1 to %d). Fewer are granted when fewer remain.", int64(maxUnits)),
					Required:    true,
				},
				contract.FieldMinUnits: {
					Type:        framework.TypeInt64,
					Description: "Smallest grant worth having (a verifier's max_cost_per_request). Near the end of a budget, grants shrink to half of what remains, but not below this. Default: 1.",
				},
				contract.FieldTTL: {
					Type:        framework.TypeDurationSecond,
					Description: fmt.Sprintf("How long the reservation lives without a report; each report renews it. %s to %s, default %s.", minReservationTTL, maxReservationTTL, defaultReservationTTL),
				},
				contract.FieldHolder: {
					Type:        framework.TypeString,
					Description: "Who holds the reservation (a verifier's name), shown nowhere but the audit log.",
				},
				contract.FieldReservationID: {
					Type:        framework.TypeString,
					Description: "A reservation of the caller's to add the units to. Ignored (a new reservation is made) when it is unknown, expired or of an ended period.",
				},
			},
			DisplayAttrs: pathAttrs("budget"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: operationAs("reserve", "", b.pathBudgetReserve, answers(merged(reservation, map[string]*framework.FieldSchema{
					contract.FieldGranted:       out(framework.TypeInt64, "Units granted; 0 when the budget is spent."),
					contract.FieldExhausted:     out(framework.TypeBool, "Whether nothing could be granted: the budget, or the tenant's ceiling, is spent until reset."),
					contract.FieldLimit:         out(framework.TypeInt64, "The credential's budget per period; 0: no ceiling of its own."),
					contract.FieldPeriodEnd:     out(framework.TypeTime, "When the period the grant counts in ends: the credential's or its tenant's, whichever is first."),
					contract.FieldRemaining:     out(framework.TypeInt64, "Units left to reserve after this grant; -1: unlimited."),
					contract.FieldReset:         out(framework.TypeTime, "Only when exhausted: when the spent budget comes back."),
					contract.FieldReservationID: out(framework.TypeString, "The reservation the units were added to, for keybroker/budget/report; absent when exhausted."),
				}))),
			},
			HelpSynopsis: "Reserve a chunk of a credential's budget.",
			HelpDescription: `Verifiers reserve budget in chunks so that requests do not call Vault one by
one. The grant is the smaller of units and what remains of the credential's
budget and its tenant's ceiling in the current period; once less than twice
units remains, it is half of what remains (at least min_units), so that the
last of a budget is spread over the verifiers that ask. granted=0 with
exhausted=true and reset says the budget is spent until reset. A reservation
counts against the period it was granted in, ends when released through
keybroker/budget/report, and expires (its unused units coming back) when no
report renews it within its ttl. An expired or revoked credential cannot
reserve.

A reservation belongs to the Vault identity that made it (its entity, else
its token accessor): only that identity may top it up, report on it or
release it. One identity may hold at most 8 live reservations on a
credential, and a credential at most 256 in all.`,
		},
		{
			Pattern: contract.PathBudgetReport + "$",
			Fields: map[string]*framework.FieldSchema{
				contract.FieldReservationID: {
					Type:        framework.TypeString,
					Description: "The reservation, as keybroker/budget/reserve returned it.",
					Required:    true,
				},
				contract.FieldUsed: {
					Type:        framework.TypeInt64,
					Description: "Units used on the reservation so far: the running total, so a retried report counts once.",
				},
				contract.FieldRelease: {
					Type:        framework.TypeBool,
					Description: "End the reservation after recording used; its unused units come back.",
				},
			},
			DisplayAttrs: pathAttrs("budget-use"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.UpdateOperation: operationAs("report", "", b.pathBudgetReport, answers(merged(reservation, map[string]*framework.FieldSchema{
					contract.FieldUsed:      out(framework.TypeInt64, "Units the credential has used this period."),
					contract.FieldRemaining: out(framework.TypeInt64, "Units left to reserve, of the credential's budget and its tenant's ceiling; -1: unlimited."),
					contract.FieldReleased:  out(framework.TypeBool, "Whether the reservation has ended: released now or before, or expired."),
					contract.FieldCapped:    out(framework.TypeBool, "Whether used was more than the reservation could have cost and was recorded at that cap."),
					contract.FieldEnded: withAllowed(out(framework.TypeString, "Only for a reservation that had already ended: released or expired. Stop spending from it."),
						contract.EndedReleased, contract.EndedExpired),
				}))),
			},
			HelpSynopsis: "Report what a reservation has used, and renew or release it.",
			HelpDescription: `Records the running total used on a reservation against the credential and
its tenant. Use may exceed the reservation by one request's overrun: a total
above the reservation's units plus the credential's max_cost_per_request is
recorded at that cap, and the answer says capped=true. A reservation that
ended (released, or expired for want of a report) in the last 10 minutes
still takes reports (of at most 32 ended ones per credential, released ones
forgotten first): the use they add is recorded, and the answer says
released=true and ended=released or ended=expired, so that a release retried
after its answer was lost, or use reported after an outage, is not lost.
A report for an unknown reservation, or one whose total goes down, is
refused and changes nothing; one from another Vault identity than the
reservation's is refused with 403 and changes nothing. Each report renews the reservation,
but only for 2 minutes after it last had units granted or used: a
reservation kept without use then expires and its units come back.`,
		},
		{
			Pattern:      "budget/" + framework.GenericNameRegex("id"),
			Fields:       map[string]*framework.FieldSchema{"id": credentialIDField},
			DisplayAttrs: pathAttrs("budget-of-any-role"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathBudgetRead, answers(budgetRead)),
			},
			HelpSynopsis: "Read any role's credential's budget and spend (an auditor's view).",
			HelpDescription: `Read shows limit (0: no per-credential ceiling), used, reserved, remaining (-1:
unlimited) and reset (when the current period ends) for the credential, and
the same under tenant_budget when its tenant has a ceiling. It reads a
credential of any role; a change of a budget is under budget/<role>/<id>.`,
		},
		{
			Pattern: "budget/" + framework.GenericNameRegex("role") + "/" + framework.GenericNameRegex("id"),
			Fields: map[string]*framework.FieldSchema{
				"role": {Type: framework.TypeString, Description: "The role whose credential opened the budget (for a rotated key's successor or an exchanged token, the role of the key or token it spends from).", Required: true},
				"id":   credentialIDField,
				"budget": {
					Type:        framework.TypeInt64,
					Description: fmt.Sprintf("Write only: the credential's new budget, units per period (0 to %d; 0: no per-credential ceiling, its tenant's still applies). At least its max_cost_per_request.", int64(maxUnits)),
					Required:    true,
				},
			},
			DisplayAttrs: pathAttrs("budget"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathBudgetRead, answers(budgetRead)),
				// The credential's spend after the change.
				logical.UpdateOperation: operation(b.pathBudgetWrite, answers(merged(spendFields(), budgetPeriod))),
			},
			HelpSynopsis: "Read a credential's budget and spend, or change its budget.",
			HelpDescription: `Read shows limit (0: no per-credential ceiling), used, reserved, remaining (-1:
unlimited) and reset (when the current period ends) for the credential, and
the same under tenant_budget when its tenant has a ceiling.

Write sets the credential's budget after mint, for this period and the next
ones; what was used this period stays used. A lower budget shrinks the
credential's live reservations to what is left, and each verifier learns it
from the answer to its next report (about a second while the credential is
busy), so spending past the new budget stops then. For a JWT of a refresh
family the family's budget changes. The role is the one whose credential
opened the budget: a credential of another role is answered as one with no
budget, so that a policy on budget/<role>/* reaches that role's budgets
and no others.

    vault write keybroker/budget/<role>/<key_id or jti> budget=500`,
		},
	}
}

// setFromRequest overwrites the limits a role write's fields give.
func (l *limits) setFromRequest(d *framework.FieldData) {
	var c limitsChange
	if v, ok := d.GetOk("budget"); ok {
		c.Budget = ptrTo(v.(int64))
	}
	if v, ok := d.GetOk("budget_period"); ok {
		c.BudgetPeriod = ptrTo(time.Duration(v.(int)) * time.Second)
	}
	if v, ok := d.GetOk("max_cost_per_request"); ok {
		c.MaxCost = ptrTo(v.(int64))
	}
	if v, ok := d.GetOk("rate_limit"); ok {
		c.RateLimit = ptrTo(v.(float64))
	}
	if v, ok := d.GetOk("rate_burst"); ok {
		c.RateBurst = ptrTo(v.(int))
	}
	l.apply(c)
}

func ptrTo[T any](v T) *T { return &v }

// loadMeter finds the meter that accounts for credential id, following a
// family link, and returns it with its storage path. API keys get a meter the
// first time it is needed, from the limits stored with the key.
func loadMeter(ctx context.Context, s logical.Storage, id string) (*meter, string, error) {
	path := meterPath(id)
	m, err := getJSON[meter](ctx, s, path)
	if err != nil {
		return nil, "", err
	}
	if m != nil && m.Link != "" {
		path = meterPath(m.Link)
		if m, err = getJSON[meter](ctx, s, path); err != nil {
			return nil, "", err
		}
	}
	if m != nil && m.MaxCost == 0 && apikey.ValidateID(id) {
		// A meter stored before it kept max_cost_per_request: take it from
		// the key, so the cap on reports is the key's (saved with the meter).
		k, err := getKey(ctx, s, id)
		if err != nil {
			return nil, "", err
		}
		if k != nil {
			m.MaxCost = k.MaxCost
		}
	}
	if m == nil && apikey.ValidateID(id) {
		k, err := getKey(ctx, s, id)
		if err != nil || k == nil || (k.Budget == 0 && k.Tenant == "") {
			return nil, "", err
		}
		m = meterFromKey(k)
	}
	return m, path, nil
}

// meterFromKey is the meter of API key k, the first time it is needed.
func meterFromKey(k *keyEntry) *meter {
	m := &meter{Limit: k.Budget, Period: k.BudgetPeriod, MaxCost: k.MaxCost, Tenant: k.Tenant, ExpiresAt: k.ExpiresAt, Role: k.Role}
	if m.Period == 0 {
		m.Period = defaultBudgetPeriod // a key minted before budgets existed
	}
	return m
}

// budgetUnderRole checks, on budget/<role>/<id>, that the meter m (at path,
// the one credential id spends from) was opened for a credential of role: a
// policy on budget/<role>/* must reach no other role's budget. It refuses
// otherwise; nothing on budget/<id> (role ""), which names no role.
func budgetUnderRole(ctx context.Context, s logical.Storage, role, id string, m *meter, path string) error {
	if role == "" {
		return nil
	}
	owner, err := meterOwner(ctx, s, m, path, id)
	switch {
	case err != nil:
		return err
	case owner != role:
		// One answer for another role's, an unknown owner's and none: no
		// oracle of what exists.
		return refuse("no budget is kept for %q under role %q: not a metered credential of the role (an exchanged token spends from its subject's role's budget), a budget opened by an older version that noted no role, or expired and tidied", id, role)
	}
	if m.Role == "" {
		m.Role = owner // noted from now on (the caller saves m)
	}
	return nil
}

// meterOwner is the role of the credential meter m (at path, the meter
// credential id spends from) was opened for; "" when a meter of an older
// version does not say. Such a meter of a key takes its key's role, or,
// the key tidied (a rotated one), that of id's key: a successor has its
// predecessor's role.
func meterOwner(ctx context.Context, s logical.Storage, m *meter, path, id string) (string, error) {
	if m.Role != "" {
		return m.Role, nil
	}
	for _, k := range []string{strings.TrimPrefix(path, meterPrefix), id} {
		if !apikey.ValidateID(k) {
			continue
		}
		key, err := getKey(ctx, s, k)
		if err != nil {
			return "", err
		}
		if key != nil {
			return key.Role, nil
		}
	}
	return "", nil
}

// isRevoked says whether the API key or JWT id was revoked.
func isRevoked(ctx context.Context, s logical.Storage, id string) (bool, error) {
	if apikey.ValidateID(id) {
		k, err := getKey(ctx, s, id)
		return k != nil && k.revoked(), err
	}
	e, err := s.Get(ctx, revokedJTIPrefix+id)
	if err != nil {
		return false, fmt.Errorf("reading revoked jti: %w", err)
	}
	return e != nil, nil
}

// isMetered says whether credentials with these limits and tenant are
// accounted: they have a budget, or their tenant a ceiling.
func isMetered(ctx context.Context, s logical.Storage, l limits, tenant string) (bool, error) {
	if l.Budget > 0 {
		return true, nil
	}
	if tenant == "" {
		return false, nil
	}
	t, err := getTenant(ctx, s, tenant)
	return t != nil, err
}

// extendMeter moves the expiry of credential id's meter, if it has one, to
// at least exp.
func (mt *meters) extendMeter(ctx context.Context, s logical.Storage, id string, exp time.Time) error {
	path := meterPath(id)
	l := locksutil.LockForKey(mt.meterLocks, path)
	l.Lock()
	defer l.Unlock()
	m, err := getJSON[meter](ctx, s, path)
	if err != nil || m == nil {
		return err
	}
	if m.ExpiresAt.Before(exp) {
		m.ExpiresAt = exp
		if err := putJSON(ctx, s, meterPath(id), m); err != nil {
			return err
		}
	}
	if m.Link != "" && m.Link != id {
		// The meter it spends from lives as long (a rotated key's
		// successor renewed past its predecessor's expiry).
		l.Unlock()
		defer l.Lock()
		return mt.extendMeter(ctx, s, m.Link, exp)
	}
	return nil
}

// meterRoot is the meter a credential spends from, and its id: its own, or
// the one its meter links to (its refresh family's); nil when unmetered.
func meterRoot(ctx context.Context, s logical.Storage, id string) (string, *meter, error) {
	m, err := getJSON[meter](ctx, s, meterPath(id))
	if err != nil || m == nil || m.Link == "" {
		return id, m, err
	}
	root, err := getJSON[meter](ctx, s, meterPath(m.Link))
	return m.Link, root, err
}

// meterToken keeps the meter of a new JWT: its own, or a link to its refresh
// family's, which lives as long as the family's newest token.
// ownFamily says familyID is the token's own refresh family's (not the
// subject token's meter an exchanged token spends from, whose role is the
// subject's, never the exchanging one's).
func (mt *meters) meterToken(ctx context.Context, s logical.Storage, jti, familyID string, ownFamily bool, g grant, exp time.Time) error {
	if g.Budget == 0 && g.Tenant == "" {
		return nil
	}
	own := &meter{Limit: g.Budget, Period: g.BudgetPeriod, MaxCost: g.MaxCost, Tenant: g.Tenant, ExpiresAt: exp, Role: g.Role}
	if familyID == "" {
		return putJSON(ctx, s, meterPath(jti), own)
	}
	l := locksutil.LockForKey(mt.meterLocks, meterPath(familyID))
	l.Lock()
	defer l.Unlock()
	fm, err := getJSON[meter](ctx, s, meterPath(familyID))
	if err != nil {
		return err
	}
	if fm == nil {
		fm = own
	}
	if fm.Role == "" && ownFamily {
		// A family's meter of an older version learns its role from
		// its next refresh, so that its budget can be changed under it.
		fm.Role = g.Role
	}
	// A refresh narrowed to a role that now allows less: the family's
	// meter follows (it never widens).
	if g.Budget > 0 && (fm.Limit == 0 || g.Budget < fm.Limit) {
		fm.Limit = g.Budget
	}
	if g.MaxCost > 0 && (fm.MaxCost == 0 || g.MaxCost < fm.MaxCost) {
		fm.MaxCost = g.MaxCost
	}
	fm.ExpiresAt = maxTime(fm.ExpiresAt, exp)
	if err := putJSON(ctx, s, meterPath(familyID), fm); err != nil {
		return err
	}
	return putJSON(ctx, s, meterPath(jti), &meter{Link: familyID, ExpiresAt: exp})
}

// pathBudgetReserve adapts a budget/reserve request into reserveBudget.
func (b *backend) pathBudgetReserve(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	ans, err := b.meters.reserveBudget(ctx, req.Storage, ownerOf(req), contract.BudgetReserve{
		ID:            d.Get(contract.FieldID).(string),
		ReservationID: d.Get(contract.FieldReservationID).(string),
		Units:         d.Get(contract.FieldUnits).(int64),
		MinUnits:      d.Get(contract.FieldMinUnits).(int64),
		TTL:           int64(d.Get(contract.FieldTTL).(int)),
		Holder:        d.Get(contract.FieldHolder).(string),
	})
	return respond(ans.Data, err)
}

// reserveBudget grants owner (a Vault identity) up to in.Units of
// credential in.ID's budget, added to its reservation in.ReservationID
// when that is still current, else in a new one.
func (mt *meters) reserveBudget(ctx context.Context, s logical.Storage, owner string, in contract.BudgetReserve) (*contract.BudgetReservation, error) {
	ttl, err := checkReserve(in)
	if err != nil {
		return nil, err
	}
	var ans *contract.BudgetReservation
	op := &meterOp{id: in.ID, apply: func(b *meterBatch) (err error) {
		ans, err = b.reserve(owner, in, ttl)
		return err
	}}
	if err := mt.run(ctx, s, op); err != nil {
		return nil, err
	}
	return ans, nil
}

// reserve is reserveBudget on the batch's meter.
func (b *meterBatch) reserve(owner string, in contract.BudgetReserve, ttl time.Duration) (*contract.BudgetReservation, error) {
	m, t, now := b.m, b.t, b.now
	if m == nil {
		return nil, refuse("no budget is kept for %q: not a metered credential, or expired and tidied", in.ID)
	}
	// The credential's record, read under the meter's lock (once for the
	// batch): a revocation stored before this request began is seen.
	c, err := b.credential(in.ID)
	if err != nil {
		return nil, err
	}
	if err := reservable(c, m, now); err != nil {
		return nil, err
	}
	m.roll(now, m.Period)
	q := quoteReservation(m, t, in.Units, max(1, in.MinUnits))
	ans := &contract.BudgetReservation{Granted: q.grant, Exhausted: q.grant == 0, Limit: m.Limit, PeriodEnd: q.periodEnd.Format(time.RFC3339Nano)}
	if q.grant == 0 {
		ans.Reset = q.reset.Format(time.RFC3339Nano)
		return ans, nil
	}
	resID, r, err := grantReservation(owner, in, m, t, q.grant, ttl, now)
	if err != nil {
		return nil, err
	}
	b.changed = true
	ans.ReservationID, ans.Units, ans.ExpiresAt = resID, r.Units, r.ExpiresAt.Format(time.RFC3339Nano)
	ans.Remaining = q.left
	if q.left >= 0 {
		ans.Remaining = q.left - q.grant
	}
	return ans, nil
}

// checkReserve refuses a reservation request out of bounds, and returns
// its ttl (the default for 0).
func checkReserve(in contract.BudgetReserve) (time.Duration, error) {
	minUnits := max(1, in.MinUnits)
	ttl := time.Duration(in.TTL) * time.Second
	if ttl == 0 {
		ttl = defaultReservationTTL
	}
	switch {
	case in.ID == "":
		return 0, refuse("id is required: an API key's key_id or a JWT's jti")
	case in.Units <= 0 || in.Units > maxUnits:
		return 0, refuse("units must be between 1 and %d, got %d", int64(maxUnits), in.Units)
	case minUnits > in.Units:
		return 0, refuse("min_units (%d) must not exceed units (%d)", minUnits, in.Units)
	case ttl < minReservationTTL || ttl > maxReservationTTL:
		return 0, refuse("ttl must be between %s and %s, got %s", minReservationTTL, maxReservationTTL, ttl)
	}
	if err := validateText("holder", in.Holder, maxNameLength); err != nil {
		return 0, refuse("%s", err.Error())
	}
	return ttl, nil
}

// credential is what a reserve needs of a credential's own record: an
// API key's record (nil when there is none), or whether a JWT's jti is
// revoked.
type credential struct {
	id      string
	key     *keyEntry
	revoked bool
}

// credential reads credential id's record, once for the batch.
func (b *meterBatch) credential(id string) (credential, error) {
	c := credential{id: id}
	if !apikey.ValidateID(id) {
		if revoked, ok := b.revokedJTIs[id]; ok {
			c.revoked = revoked
			return c, nil
		}
		revoked, err := isRevoked(b.ctx, b.s, id)
		if err != nil {
			return c, err
		}
		if b.revokedJTIs == nil {
			b.revokedJTIs = map[string]bool{}
		}
		b.revokedJTIs[id], c.revoked = revoked, revoked
		return c, nil
	}
	k, err := b.key(id)
	c.key, c.revoked = k, k != nil && k.revoked()
	return c, err
}

// reservable refuses to reserve for credential c (whose meter is m) once
// it expired or was revoked.
func reservable(c credential, m *meter, now time.Time) error {
	expires := m.ExpiresAt
	if c.key != nil {
		// The key is the authority on its lifetime (renewals move it).
		expires = c.key.ExpiresAt
		m.ExpiresAt = maxTime(m.ExpiresAt, c.key.ExpiresAt)
	}
	if !now.Before(expires) {
		return refuse("credential %q has expired", c.id)
	}
	// A verifier whose revocation feed lags must still not spend for a
	// revoked credential.
	if c.revoked {
		return refuse("credential %q is revoked", c.id)
	}
	return nil
}

// reservationQuote is what a reservation request may be granted now.
type reservationQuote struct {
	// grant is what is granted; left what could be reserved before it
	// (-1: unlimited).
	grant, left int64
	// periodEnd is when the period the grant counts in ends (the
	// credential's or its tenant's, whichever is first); reset, for a
	// grant of 0, when the spent budget comes back.
	periodEnd, reset time.Time
}

// quoteReservation is the grant for units (at least minUnits when any)
// from meter m and its tenant t (nil: no ceiling): all of it while twice
// as much is left, then half of what is left, so that the last of a budget
// is spread over the verifiers that ask.
func quoteReservation(m *meter, t *tenantEntry, units, minUnits int64) reservationQuote {
	credLeft, tenantLeft := m.remaining(m.Limit), int64(-1)
	q := reservationQuote{periodEnd: m.PeriodStart.Add(m.Period)}
	if credLeft == 0 {
		q.reset = q.periodEnd
	}
	if t != nil {
		tenantLeft = t.remaining(t.Budget)
		tEnd := t.PeriodStart.Add(t.BudgetPeriod)
		q.periodEnd = minTime(q.periodEnd, tEnd)
		if tenantLeft == 0 {
			q.reset = maxTime(q.reset, tEnd)
		}
	}
	q.left = minRemaining(credLeft, tenantLeft)
	q.grant = units
	if q.left >= 0 {
		q.grant = min(units, q.left)
		if q.left < 2*units {
			q.grant = min(q.left, max(minUnits, q.left/2))
		}
	}
	return q
}

// grantReservation adds grant units to owner's reservation in.ReservationID
// of meter m, or to a new one, and has tenant t (nil: none) hold them; it
// stores neither. It returns the reservation and its id.
func grantReservation(owner string, in contract.BudgetReserve, m *meter, t *tenantEntry, grant int64, ttl time.Duration, now time.Time) (string, *reservation, error) {
	// Topping up the caller's reservation keeps its unused units usable
	// together with the new ones; one of an ended period, or another
	// identity's, is not topped up.
	resID := in.ReservationID
	if r := m.Reservations[resID]; r == nil || r.Owner != owner || !m.current(resID) || (t != nil && !t.counts(r)) || !strings.HasPrefix(resID, in.ID+":") {
		if err := m.reservationRoom(owner); err != nil {
			return "", nil, err
		}
		suffix, err := uuid.GenerateUUID()
		if err != nil {
			return "", nil, fmt.Errorf("generating reservation id: %w", err)
		}
		resID = in.ID + ":" + suffix
	}
	var before reservation
	if r := m.Reservations[resID]; r != nil {
		before = *r
	}
	r := m.grant(resID, grant, ttl, in.Holder, now)
	if r.Owner == "" {
		r.Owner = owner
		t.join(r)
	}
	if t != nil {
		t.unhold(before)
		t.hold(r, now)
	}
	return resID, r, nil
}

// tenantFor returns the tenant's entry rolled to now, or nil when the tenant
// has no ceiling.
func tenantFor(ctx context.Context, s logical.Storage, name string, now time.Time) (*tenantEntry, error) {
	if name == "" {
		return nil, nil
	}
	t, err := getTenant(ctx, s, name)
	if t != nil {
		t.roll(now, t.BudgetPeriod)
	}
	return t, err
}

func (a *account) addReservation(id string, r *reservation) {
	if a.Reservations == nil {
		a.Reservations = map[string]*reservation{}
	}
	a.Reservations[id] = r
}

// current says whether reservation id is live and of the current period.
func (a *account) current(id string) bool {
	r := a.Reservations[id]
	return r != nil && r.PeriodStart.Equal(a.PeriodStart)
}

// grant adds units to reservation id, creating it in the current period if
// need be, and renews it.
func (a *account) grant(id string, units int64, ttl time.Duration, holder string, now time.Time) *reservation {
	r := a.Reservations[id]
	if r == nil {
		r = &reservation{PeriodStart: a.PeriodStart, Holder: holder}
		a.addReservation(id, r)
	}
	r.Units += units
	r.TTL = ttl
	r.ExpiresAt = now.Add(ttl)
	r.LastUse = now
	return r
}

// ownerOf is the Vault identity behind a request: its entity, which stays
// the same across logins, else its token's accessor.
func ownerOf(req *logical.Request) string {
	if req.EntityID != "" {
		return "entity:" + req.EntityID
	}
	return "accessor:" + req.ClientTokenAccessor
}

// reservationRoom refuses a new reservation past the caps on live ones.
func (m *meter) reservationRoom(owner string) error {
	mine := 0
	for _, r := range m.Reservations {
		if r.Owner == owner {
			mine++
		}
	}
	switch {
	case len(m.Reservations) >= maxReservationsPerCredential:
		return refuse("the credential already has %d live reservations, the most it may have; release unused ones", maxReservationsPerCredential)
	case mine >= maxReservationsPerOwner:
		return refuse("this Vault identity already holds %d live reservations on the credential, the most it may; release unused ones", maxReservationsPerOwner)
	}
	return nil
}

// pathBudgetReport adapts a budget/report request into reportBudget.
func (b *backend) pathBudgetReport(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	ans, err := b.meters.reportBudget(ctx, req.Storage, ownerOf(req), b.Logger(), contract.BudgetReport{
		ReservationID: d.Get(contract.FieldReservationID).(string),
		Used:          d.Get(contract.FieldUsed).(int64),
		Release:       d.Get(contract.FieldRelease).(bool),
	})
	return respond(ans.Data, err)
}

// reportBudget records the running total used on owner's reservation
// in.ReservationID, live or recently ended, against its credential and
// tenant, and renews it or (in.Release) ends it.
func (mt *meters) reportBudget(ctx context.Context, s logical.Storage, owner string, log hclog.Logger, in contract.BudgetReport) (*contract.BudgetReportAnswer, error) {
	id, _, ok := strings.Cut(in.ReservationID, ":")
	switch {
	case !ok || id == "":
		return nil, refuse("reservation_id %q is not one keybroker/budget/reserve returned", in.ReservationID)
	case in.Used < 0 || in.Used > maxUnits:
		return nil, refuse("used must be between 0 and %d, got %d", int64(maxUnits), in.Used)
	}
	var ans *contract.BudgetReportAnswer
	op := &meterOp{id: id, apply: func(b *meterBatch) (err error) {
		ans, err = b.report(owner, log, in)
		return err
	}}
	if err := mt.run(ctx, s, op); err != nil {
		return nil, err
	}
	return ans, nil
}

// report is reportBudget on the batch's meter.
func (b *meterBatch) report(owner string, log hclog.Logger, in contract.BudgetReport) (*contract.BudgetReportAnswer, error) {
	resID, m, now := in.ReservationID, b.m, b.now
	if m == nil {
		return nil, refuse("reservation %q is unknown; its use was not recorded", resID)
	}
	m.roll(now, m.Period)
	r, ended := m.lookup(resID)
	var before reservation
	if r != nil {
		before = *r
	}
	used, capped, err := m.recordUse(resID, r, owner, in.Used, now)
	if err != nil {
		return nil, err
	}
	b.changed = true
	if in.Release && !ended {
		m.end(resID, now, true)
	}
	reportToTenant(b.t, r, before, used, in.Release, ended, now)
	if capped {
		log.Warn("a report claimed more than its reservation could have cost; recorded at the cap", "reservation_id", resID, "recorded", used)
	}
	return m.reportAnswer(b.t, r, in.Release, ended, capped), nil
}

// recordUse records used on reservation resID (r, nil when unknown) of
// owner: refused when r is another identity's, at most what r could have
// cost (capped says it was more). It returns what was recorded.
func (m *meter) recordUse(resID string, r *reservation, owner string, used int64, now time.Time) (int64, bool, error) {
	capped := false
	if r != nil {
		if r.Owner != "" && r.Owner != owner {
			return 0, false, &refusal{code: http.StatusForbidden, msg: fmt.Sprintf("reservation %q belongs to another Vault identity; its use was not recorded", resID)}
		}
		// What one reservation can have cost: its units, plus one
		// request's overrun.
		if most := r.Units + max(1, m.MaxCost); used > most {
			used, capped = most, true
		}
	}
	if err := m.report(resID, used, now); err != nil {
		if errors.Is(err, errUnknownReservation) {
			return 0, false, refuse("reservation %q is unknown, or ended more than %s ago; its use was not recorded", resID, endedKeep)
		}
		return 0, false, refuse("%s", err.Error())
	}
	return used, capped, nil
}

// reportToTenant counts a report of used on r (as it was before it) in
// tenant t's account (nil: no ceiling); ended says r had ended before
// this report, release that it ends now.
func reportToTenant(t *tenantEntry, r *reservation, before reservation, used int64, release, ended bool, now time.Time) {
	// The reservation may count in no tenant period (the ceiling was
	// deleted or set after it, or its period ended): then only the
	// credential's account changes.
	if !t.counts(r) {
		return
	}
	// An ended reservation holds nothing any more; only its late use
	// counts.
	if !ended {
		t.unhold(before)
	}
	t.use(r, used-before.Used)
	if !release && !ended {
		t.hold(r, now)
	}
}

// reportAnswer is the answer to a report on r, of meter m and tenant t
// (nil: none).
func (m *meter) reportAnswer(t *tenantEntry, r *reservation, release, ended, capped bool) *contract.BudgetReportAnswer {
	left := m.remaining(m.Limit)
	if t != nil {
		left = minRemaining(left, t.remaining(t.Budget))
	}
	ans := &contract.BudgetReportAnswer{Used: m.Used, Remaining: left, Released: release || ended, Capped: capped}
	if ended {
		// Said so that a verifier stops spending from it.
		ans.Ended = contract.EndedExpired
		if r.Released {
			ans.Ended = contract.EndedReleased
		}
	}
	if !release && !ended {
		// The reservation's units now: fewer than granted when an
		// operator lowered the budget since.
		units := r.Units
		ans.ExpiresAt, ans.Units = r.ExpiresAt.Format(time.RFC3339Nano), &units
	}
	return ans
}

// pathBudgetWrite adapts budget/<role>/<id> budget=N into changeBudget.
func (b *backend) pathBudgetWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	raw, ok := d.GetOk("budget")
	if !ok {
		return logical.ErrorResponse("budget is required"), nil
	}
	data, err := b.changeBudget(ctx, req.Storage, pathRole(d), d.Get(contract.FieldID).(string), raw.(int64))
	return respond(func() map[string]interface{} { return data }, err)
}

// changeBudget sets the budget of credential id, whose meter was opened
// for a credential of role (checked unless role is ""), and answers its
// spend after the change.
func (b *backend) changeBudget(ctx context.Context, s logical.Storage, role, id string, budget int64) (map[string]interface{}, error) {
	if budget < 0 || budget > maxUnits {
		return nil, refuse("budget must be between 0 and %d, got %d", int64(maxUnits), budget)
	}
	m, path, unlock, err := b.meters.lockMeter(ctx, s, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if m == nil {
		// The same answer as for another role's budget: no oracle.
		return nil, refuse("no budget is kept for %q under role %q: not a metered credential of the role, or expired and tidied", id, role)
	}
	if err := budgetUnderRole(ctx, s, role, id, m, path); err != nil {
		return nil, err
	}
	if budget > 0 && budget < m.MaxCost {
		return nil, refuse("budget (%d) must be at least the credential's max_cost_per_request (%d)", budget, m.MaxCost)
	}
	if m.Tenant != "" {
		defer b.meters.lockTenant(m.Tenant)()
	}
	// now is read holding the locks of what it rolls: a clock read
	// before another request rolled the tenant on would be a period
	// behind it.
	now := time.Now().UTC()
	m.roll(now, m.Period)
	m.Limit = budget
	if err := shrinkToLimit(ctx, s, m, now); err != nil {
		return nil, err
	}
	if apikey.ValidateID(id) {
		// The key's own record, so that verify answers say the same;
		// under the lock revocations take, never writing one over.
		b.revocations.lock()
		defer b.revocations.unlock()
		k, err := getKey(ctx, s, id)
		if err != nil {
			return nil, err
		}
		if k != nil {
			k.Budget = budget
			err := putKey(ctx, s, k)
			defer b.keyRecords.written(id, err) // once the meter below is stored too
			if err != nil {
				return nil, err
			}
		}
	}
	if err := putJSON(ctx, s, path, m); err != nil {
		return nil, err
	}
	b.Logger().Info("credential budget changed", "id", id, "budget", budget)
	data := m.status(m.Limit, m.Period)
	data["budget_period"] = int64(m.Period.Seconds())
	return data, nil
}

// shrinkToLimit shrinks m's reservations to its limit (see
// shrinkReservations), and what they hold of its tenant's ceiling with
// them; it stores the tenant, not m. The caller holds the tenant's lock.
func shrinkToLimit(ctx context.Context, s logical.Storage, m *meter, now time.Time) error {
	before := make(map[string]reservation, len(m.Reservations))
	for resID, r := range m.Reservations {
		before[resID] = *r
	}
	m.shrinkReservations()
	t, err := tenantFor(ctx, s, m.Tenant, now)
	if err != nil || t == nil {
		return err
	}
	for resID, r := range m.Reservations {
		t.unhold(before[resID])
		t.hold(r, now)
	}
	return putJSON(ctx, s, tenantPrefix+m.Tenant, t)
}

// shrinkReservations lowers the unused part of the live reservations of the
// current period so that, with what is used, they fit in the limit; each
// verifier learns its reservation's new units from its next report.
func (m *meter) shrinkReservations() {
	if m.Limit == 0 {
		return
	}
	left := max(0, m.Limit-m.Used)
	for _, r := range m.Reservations {
		if !r.PeriodStart.Equal(m.PeriodStart) {
			continue
		}
		unused := max(0, r.Units-r.Used)
		keep := min(unused, left)
		r.Units -= unused - keep
		left -= keep
	}
}

func (b *backend) pathBudgetRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id := d.Get("id").(string)
	m, path, err := loadMeter(ctx, req.Storage, id)
	if err != nil || m == nil {
		return nil, err
	}
	if role := pathRole(d); role != "" {
		owner, err := meterOwner(ctx, req.Storage, m, path, id)
		if err != nil || owner != role {
			return nil, err // another role's (or unknown): as one with no budget, 404
		}
	}
	now := time.Now().UTC()
	m.roll(now, m.Period)
	data := m.status(m.Limit, m.Period)
	data["budget_period"] = int64(m.Period.Seconds())
	data["tenant"] = m.Tenant
	data["expires_at"] = m.ExpiresAt.Format(time.RFC3339)
	t, err := tenantFor(ctx, req.Storage, m.Tenant, now)
	if err != nil {
		return nil, err
	}
	if t != nil {
		data["tenant_budget"] = t.status()
	}
	return &logical.Response{Data: data}, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
