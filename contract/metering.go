package contract

// Metering is what a verifier writes to the plugin while it serves: budget
// reservations and the reports of their use, takes from a cluster-wide rate
// limit, and the API keys it saw used. The verifier sends these types as
// JSON; the plugin reads each request field by its Field constant and
// answers with the answer type's Data. A name is so spelled here only: the
// json tags and the constants are one list, which metering_test.go checks.

// Paths under the plugin's mount a verifier writes to.
const (
	PathBudgetReserve = "budget/reserve"
	PathBudgetReport  = "budget/report"
	PathRateReserve   = "rate/reserve"
	PathKeyUsage      = "key-usage"
)

// Request and answer fields of the metering paths.
const (
	FieldID            = "id"
	FieldReservationID = "reservation_id"
	FieldUnits         = "units"
	FieldMinUnits      = "min_units"
	FieldTTL           = "ttl"
	FieldHolder        = "holder"
	FieldUsed          = "used"
	FieldRelease       = "release"
	FieldRole          = "role"
	FieldSubject       = "subject"
	FieldUsage         = "usage"
	FieldReportID      = "report_id"

	FieldGranted   = "granted"
	FieldExhausted = "exhausted"
	FieldLimit     = "limit"
	FieldPeriodEnd = "period_end"
	FieldRemaining = "remaining"
	FieldReset     = "reset"
	FieldExpiresAt = "expires_at"
	FieldReleased  = "released"
	FieldCapped    = "capped"
	FieldEnded     = "ended"
	FieldLimited   = "limited"
	FieldWindow    = "window"
	FieldWindowEnd = "window_end"
	FieldRecorded  = "recorded"
	FieldSkipped   = "skipped"
	FieldDuplicate = "duplicate"
)

// Values of BudgetReportAnswer.Ended.
const (
	EndedReleased = "released"
	EndedExpired  = "expired"
)

// BudgetReserve asks PathBudgetReserve for Units more of credential ID's
// budget, added to reservation ReservationID when that is still the
// caller's and current (else a new reservation is made).
type BudgetReserve struct {
	ID            string `json:"id"`
	ReservationID string `json:"reservation_id"`
	Units         int64  `json:"units"`
	// MinUnits is the smallest grant worth having (max_cost_per_request);
	// 0 is taken as 1.
	MinUnits int64 `json:"min_units"`
	// TTL is how long the reservation lives without a report, in seconds;
	// 0 is the plugin's default.
	TTL int64 `json:"ttl"`
	// Holder names the verifier, for the audit log only.
	Holder string `json:"holder"`
}

// BudgetReservation is PathBudgetReserve's answer. Granted 0 (Exhausted)
// says the budget is spent until Reset; ReservationID, Units and ExpiresAt
// are then empty. Times are RFC 3339.
type BudgetReservation struct {
	Granted   int64  `json:"granted"`
	Exhausted bool   `json:"exhausted"`
	Limit     int64  `json:"limit"`
	PeriodEnd string `json:"period_end"`
	// Remaining is what is left to reserve after this grant; -1: unlimited.
	Remaining     int64  `json:"remaining"`
	Reset         string `json:"reset,omitempty"`
	ReservationID string `json:"reservation_id,omitempty"`
	Units         int64  `json:"units,omitempty"`
	ExpiresAt     string `json:"expires_at,omitempty"`
}

// Data is the answer as the plugin's response data.
func (a *BudgetReservation) Data() map[string]interface{} {
	d := map[string]interface{}{
		FieldGranted:   a.Granted,
		FieldExhausted: a.Exhausted,
		FieldLimit:     a.Limit,
		FieldPeriodEnd: a.PeriodEnd,
		FieldRemaining: a.Remaining,
	}
	putNonZero(d, FieldReset, a.Reset)
	putNonZero(d, FieldReservationID, a.ReservationID)
	putNonZero(d, FieldUnits, a.Units)
	putNonZero(d, FieldExpiresAt, a.ExpiresAt)
	return d
}

// BudgetReport tells PathBudgetReport the running total Used on a
// reservation (so a retried report counts once), and with Release ends it.
type BudgetReport struct {
	ReservationID string `json:"reservation_id"`
	Used          int64  `json:"used"`
	Release       bool   `json:"release"`
}

// BudgetReportAnswer is PathBudgetReport's answer.
type BudgetReportAnswer struct {
	// Used is what the credential has used this period.
	Used int64 `json:"used"`
	// Remaining is what is left to reserve, of the credential's budget and
	// its tenant's ceiling; -1: unlimited.
	Remaining int64 `json:"remaining"`
	Released  bool  `json:"released"`
	// Capped: the report claimed more than the reservation could have
	// cost and was recorded at that cap.
	Capped bool `json:"capped"`
	// Ended says the reservation had already ended (EndedReleased or
	// EndedExpired); the use was recorded all the same.
	Ended string `json:"ended,omitempty"`
	// ExpiresAt and Units are set while the reservation lives on: Units
	// is its grant now, fewer than the verifier was granted when an
	// operator lowered the credential's budget since.
	ExpiresAt string `json:"expires_at,omitempty"`
	Units     *int64 `json:"units,omitempty"`
}

// Data is the answer as the plugin's response data.
func (a *BudgetReportAnswer) Data() map[string]interface{} {
	d := map[string]interface{}{
		FieldUsed:      a.Used,
		FieldRemaining: a.Remaining,
		FieldReleased:  a.Released,
		FieldCapped:    a.Capped,
	}
	putNonZero(d, FieldEnded, a.Ended)
	putNonZero(d, FieldExpiresAt, a.ExpiresAt)
	if a.Units != nil {
		d[FieldUnits] = *a.Units
	}
	return d
}

// RateReserve asks PathRateReserve for Units requests of a credential's
// cluster-wide rate limit. A JWT names its Role and Subject (its lineage);
// an API key only its key_id.
type RateReserve struct {
	ID      string `json:"id"`
	Units   int64  `json:"units"`
	Role    string `json:"role,omitempty"`
	Subject string `json:"subject,omitempty"`
}

// RateAnswer is PathRateReserve's answer. Limited false says the
// credential has no rate limit: Granted is then all Units asked and
// nothing else is set.
type RateAnswer struct {
	Limited   bool   `json:"limited"`
	Granted   int64  `json:"granted"`
	Limit     int64  `json:"limit,omitempty"`
	Window    int64  `json:"window,omitempty"` // seconds
	WindowEnd string `json:"window_end,omitempty"`
}

// Data is the answer as the plugin's response data.
func (a *RateAnswer) Data() map[string]interface{} {
	d := map[string]interface{}{FieldLimited: a.Limited, FieldGranted: a.Granted}
	if a.Limited {
		d[FieldLimit], d[FieldWindow], d[FieldWindowEnd] = a.Limit, a.Window, a.WindowEnd
	}
	return d
}

// KeyUsageReport is what a verifier writes to PathKeyUsage: Usage is the
// JSON array of KeyUse, as sent (sent again byte for byte with its
// ReportID when its answer was lost).
type KeyUsageReport struct {
	Usage    string `json:"usage"`
	ReportID string `json:"report_id"`
}

// KeyUsageAnswer is PathKeyUsage's answer.
type KeyUsageAnswer struct {
	Recorded  int  `json:"recorded"`
	Skipped   int  `json:"skipped"`
	Duplicate bool `json:"duplicate"`
}

// Data is the answer as the plugin's response data.
func (a *KeyUsageAnswer) Data() map[string]interface{} {
	return map[string]interface{}{FieldRecorded: a.Recorded, FieldSkipped: a.Skipped, FieldDuplicate: a.Duplicate}
}

// putNonZero sets d[k] to v unless v is its type's zero, as omitempty
// leaves it out of the JSON.
func putNonZero[T comparable](d map[string]interface{}, k string, v T) {
	var zero T
	if v != zero {
		d[k] = v
	}
}
