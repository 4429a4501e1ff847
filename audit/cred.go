package audit

import (
	"strings"
	"time"
)

// A credential, who acts on it, and what happens to it.

// Cred is one credential as the log shows it.
type Cred struct {
	ID        string    `json:"id"` // key_id or jti; an HMAC when hidden
	Kind      string    `json:"kind"`
	Mount     string    `json:"mount,omitempty"`
	Role      string    `json:"role,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	Name      string    `json:"name,omitempty"`
	Scopes    []string  `json:"scopes,omitempty"`
	LeaseID   string    `json:"lease_id,omitempty"`
	MintedAt  time.Time `json:"minted_at,omitzero"`
	MintedVia string    `json:"minted_via,omitempty"` // mint, approval, refresh, exchange, rotation
	Parent    string    `json:"parent,omitempty"`     // refreshed, exchanged or rotated from
	Minter    *Actor    `json:"minted_by,omitempty"`
	// NotMinted says the mint is not in the inputs: only later events are.
	NotMinted bool `json:"mint_not_in_inputs,omitempty"`

	Allowed      int            `json:"allowed"`
	Denied       int            `json:"denied"`
	Denials      map[string]int `json:"denials,omitempty"`
	Verifies     int            `json:"verifies"`
	Renewals     int            `json:"renewals"`
	Reservations int            `json:"reservations"`
	Granted      int64          `json:"granted_units"`
	PeriodUsed   int64          `json:"period_used_units"` // the last report's total for its period
	Cost         float64        `json:"sidecar_cost,omitempty"`
	RevokedAt    time.Time      `json:"revoked_at,omitzero"`
	RevokedBy    string         `json:"revoked_by,omitempty"`

	mint        *Record
	parent      *Cred
	idForms     forms
	leaseForms  forms
	tokenHMAC   string
	refreshHMAC string
	refreshedAt time.Time
	clientToken string
	accessor    string
	children    []*Cred // exchanged from it
	hiddenID    bool
	expiresAt   time.Time
	leaseHashed bool
	graceEnds   time.Time // rotated: when the plugin revokes it
}

func (c *Cred) revokedBy(t time.Time) bool { return !c.RevokedAt.IsZero() && !c.RevokedAt.After(t) }

// goneBy says whether c had ended by t: revoked, or past its known expiry
// (Vault's lease expiry has no audit entry of its own).
func (c *Cred) goneBy(t time.Time) bool {
	return c.revokedBy(t) || !c.expiresAt.IsZero() && c.expiresAt.Before(t) || !c.graceEnds.IsZero() && c.graceEnds.Before(t)
}

// Event is one thing that happened to a credential.
type Event struct {
	Time time.Time `json:"time"`
	// Last and Count: consecutive allowed decisions are one event.
	Last       time.Time         `json:"last,omitzero"`
	Count      int               `json:"count,omitempty"`
	Kind       string            `json:"event"`
	Credential string            `json:"credential"`
	Actor      *Actor            `json:"actor,omitempty"`
	Route      string            `json:"route,omitempty"`
	Details    map[string]string `json:"details,omitempty"`
	// Hidden names the fields this event would show but that the log HMAC'd.
	Hidden []string `json:"hidden,omitempty"`
	// Source: "vault" (the audit log), "sidecar" (a decision log), or
	// "inferred" (what Vault or the plugin does without an entry of its own).
	Source    string `json:"source"`
	RequestID string `json:"request_id,omitempty"`
	At        string `json:"at,omitempty"` // input:line

	cred *Cred
	seq  int
}

// Actor is who made a request: a Vault identity for audit entries, a
// client address (and the sidecar that saw it) for decisions.
type Actor struct {
	EntityID      string            `json:"entity_id,omitempty"`
	DisplayName   string            `json:"display_name,omitempty"`
	AuthMethod    string            `json:"auth_method,omitempty"`
	AppRole       string            `json:"approle_role,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Policies      []string          `json:"policies,omitempty"`
	TokenType     string            `json:"token_type,omitempty"`
	RemoteAddress string            `json:"remote_address,omitempty"`
	Sidecar       string            `json:"sidecar,omitempty"`
	Subject       string            `json:"subject,omitempty"`
	Actors        []string          `json:"actors,omitempty"`
}

// String is the actor in one line: method, login, entity.
func (a *Actor) String() string {
	if a == nil {
		return ""
	}
	var parts []string
	if a.Sidecar != "" {
		parts = append(parts, "sidecar "+a.Sidecar)
	}
	if a.AuthMethod != "" {
		m := a.AuthMethod
		switch {
		case a.AppRole != "":
			m += ":" + a.AppRole
		case a.Metadata["username"] != "":
			m += ":" + a.Metadata["username"]
		case a.DisplayName != "" && !strings.HasPrefix(a.AuthMethod, a.DisplayName):
			m += " " + a.DisplayName
		}
		parts = append(parts, m)
	}
	if a.EntityID != "" {
		parts = append(parts, "entity "+a.EntityID)
	} else if a.AuthMethod != "" {
		parts = append(parts, "(no entity)")
	}
	if a.Subject != "" {
		parts = append(parts, "sub "+a.Subject)
	}
	if len(a.Actors) > 0 {
		parts = append(parts, "act "+strings.Join(a.Actors, ">"))
	}
	return strings.Join(parts, " ")
}

func actorOf(r *Record) *Actor {
	a := &Actor{}
	if r.Request != nil {
		a.RemoteAddress = r.Request.RemoteAddress
	}
	if au := r.Auth; au != nil {
		a.EntityID, a.DisplayName, a.Policies, a.TokenType = au.EntityID, au.DisplayName, au.Policies, au.TokenType
		a.AuthMethod = authMethod(au)
		a.AppRole = au.Metadata["role_name"]
		if len(au.Metadata) > 0 {
			a.Metadata = au.Metadata
		}
	}
	return a
}

// authMethod names the auth method a token came from: Vault prefixes
// display names with the auth mount's path ("approle", "userpass-alice",
// "oidc-alice@example.com"); a root token is "token" with policy root.
func authMethod(a *Auth) string {
	dn := a.DisplayName
	if dn == "" {
		if a.TokenType != "" {
			return "token"
		}
		return ""
	}
	if dn == "root" || dn == "token" && containsStr(a.Policies, "root") {
		return "token(root)"
	}
	if i := strings.IndexByte(dn, '-'); i > 0 {
		return dn[:i]
	}
	return dn
}
