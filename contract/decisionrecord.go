package contract

import "time"

// DecisionRecord is one line of the sidecar's decision log
// (decision_log_path): one JSON object per decision, per line. The sidecar
// writes it and keybroker-audit reads it, both through this type, so a
// field is named once. The field order is the order of the keys on the
// line.
//
// Who the caller is (Kind, KeyID or JTI, Subject, Role, Tenant, Actors) is
// set only once the credential verified; the record never holds a
// credential, a proof, a header's value or a query string.
type DecisionRecord struct {
	// Time is when the decision was taken, in DecisionTimeLayout (UTC).
	Time    string `json:"time"`
	Type    string `json:"type"` // always DecisionType
	Mode    string `json:"mode"` // the front end: proxy, auth (/verify), grpc, middleware
	Outcome string `json:"outcome"`
	Status  int    `json:"status"`
	Reason  string `json:"reason"`
	// Expected is what a denial's reason was measured against, when that
	// is what to fix: for audience_mismatch the audiences the verifier
	// accepts (space-separated), for issuer_mismatch its issuer. Never
	// what the credential said.
	Expected string `json:"expected,omitempty"`
	Method   string `json:"method,omitempty"`
	// Path is the request's path without its query, a segment holding a
	// credential replaced by "[credential]".
	Path     string `json:"path,omitempty"`
	Route    string `json:"route,omitempty"` // the matched route's path_prefix
	Kind     string `json:"kind,omitempty"`  // DecisionKindAPIKey or DecisionKindJWT
	KeyID    string `json:"key_id,omitempty"`
	JTI      string `json:"jti,omitempty"`
	Subject  string `json:"subject,omitempty"`
	Role     string `json:"role,omitempty"`
	Tenant   string `json:"tenant,omitempty"`
	ClientIP string `json:"client_ip,omitempty"`
	// Cost is what the request was charged as it was allowed (present,
	// even 0, when it was); Held what was held for it until the usage
	// is read from the answer.
	Cost    *int64   `json:"cost,omitempty"`
	Held    int64    `json:"held,omitempty"`
	DPoP    bool     `json:"dpop,omitempty"`
	Actors  []string `json:"actors,omitempty"`
	Sidecar string   `json:"sidecar,omitempty"` // the sidecar's name (its holder id)
}

// The values of DecisionRecord's fixed-vocabulary fields.
const (
	DecisionType       = "decision"
	DecisionAllow      = "allow"
	DecisionDeny       = "deny"
	DecisionKindAPIKey = "api_key"
	DecisionKindJWT    = "jwt"
	DecisionTimeLayout = "2006-01-02T15:04:05.000000000Z07:00"
)

// DecisionTime formats t as a record's Time: RFC 3339 in UTC with all nine
// digits of nanoseconds, so the lines of one file sort as text.
func DecisionTime(t time.Time) string { return t.UTC().Format(DecisionTimeLayout) }

// ParseDecisionTime reads a record's Time as a JSON time would be read (RFC
// 3339, any precision and offset); "" is the zero time.
func ParseDecisionTime(s string) (time.Time, error) {
	var t time.Time
	if s == "" {
		return t, nil
	}
	err := t.UnmarshalText([]byte(s))
	return t, err
}
