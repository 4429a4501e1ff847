package audit

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// DefaultPluginName is the mount type keybroker's mounts have in the audit
// log: the name the plugin is registered under.
const DefaultPluginName = "vault-plugin-secrets-keybroker"

// Options say how to read the log.
type Options struct {
	// PluginName is the mount_type of keybroker's mounts; default
	// DefaultPluginName.
	PluginName string
	// Mounts are more mount points ("kb/") to read as keybroker's.
	Mounts []string
	// Hasher, when set, hashes known values (the credential asked about,
	// its lease ids) to find them where the log HMAC'd them.
	Hasher Hasher
	// Context bounds Hasher calls; default context.Background().
	Context context.Context
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

type hiddenKey struct{ mount, side, field string }

type engine struct {
	log *Log
	opt Options
	ctx context.Context

	creds         []*Cred
	mintOf        map[*Record]*Cred
	byForm        map[string]*Cred
	byToken       map[string]*Cred
	byRefresh     map[string]*Cred
	byLease       map[string]*Cred
	byClientToken map[string][]*Cred
	byAccessor    map[string][]*Cred
	byReservation map[string]*Cred
	byRole        map[string][]*Cred
	learnedLease  map[string]string // HMAC → lease id, from renewals
	tenantOf      map[string]string // HMAC'd tenant → clear, from decisions

	events     []*Event
	track      map[*Cred]bool // when set, only these credentials' hidden fields count
	hidden     map[hiddenKey]int
	unresolved []*Record // lease revocations whose lease_id could not be matched
	notes      []string
	hashErr    error
	seq        int
}

func newEngine(l *Log, opt Options) *engine {
	if opt.PluginName == "" {
		opt.PluginName = DefaultPluginName
	}
	for i, m := range opt.Mounts {
		opt.Mounts[i] = strings.TrimSuffix(m, "/") + "/"
	}
	e := &engine{
		log: l, opt: opt, ctx: opt.Context,
		mintOf: map[*Record]*Cred{}, byForm: map[string]*Cred{}, byToken: map[string]*Cred{},
		byRefresh: map[string]*Cred{}, byLease: map[string]*Cred{}, byClientToken: map[string][]*Cred{},
		byAccessor: map[string][]*Cred{}, byReservation: map[string]*Cred{}, byRole: map[string][]*Cred{},
		learnedLease: map[string]string{}, tenantOf: map[string]string{}, hidden: map[hiddenKey]int{},
	}
	if e.ctx == nil {
		e.ctx = context.Background()
	}
	e.notes = append(e.notes, l.readNotes()...)
	e.index()
	return e
}

func (e *engine) isKB(r *Record) bool {
	if r.Request == nil {
		return false
	}
	if r.Request.MountType == e.opt.PluginName {
		return true
	}
	for _, m := range e.opt.Mounts {
		if r.Request.MountPoint == m || r.Request.MountPoint == "" && strings.HasPrefix(r.Request.Path, m) {
			return true
		}
	}
	return false
}

// rel is the path inside its keybroker mount, split.
func (e *engine) rel(r *Record) (mount string, segs []string) {
	mount = r.Request.MountPoint
	if mount == "" {
		for _, m := range e.opt.Mounts {
			if strings.HasPrefix(r.Request.Path, m) {
				mount = m
			}
		}
	}
	return mount, strings.Split(strings.TrimPrefix(r.Request.Path, mount), "/")
}

func (e *engine) hash(v string) string {
	if e.opt.Hasher == nil || v == "" || e.hashErr != nil {
		return ""
	}
	h, err := e.opt.Hasher.Hash(e.ctx, v)
	if err != nil {
		e.hashErr = err
		e.notes = append(e.notes, "audit-hash failed, so HMAC'd values were not matched: "+err.Error())
		return ""
	}
	return h
}

// index finds every mint, and what renewals teach about lease ids.
func (e *engine) index() {
	for _, r := range e.log.Records {
		if r.Request == nil {
			continue
		}
		if isRenew(r.Request.Path) {
			if h, l := r.reqData("lease_id"), r.leaseID(); isHMAC(h) && l != "" && !isHMAC(l) {
				e.learnedLease[h] = l
			}
		}
		if !e.isKB(r) || r.Response == nil || r.Failed() {
			continue
		}
		c := e.mintIn(r)
		if c == nil {
			continue
		}
		e.linkParent(c, r)
		e.addCred(c)
		e.mintOf[r] = c
	}
}

// mintIn is the credential a successful keybroker answer minted, nil when
// it minted none.
func (e *engine) mintIn(r *Record) *Cred {
	mount, segs := e.rel(r)
	c := &Cred{Mount: mount, MintedAt: r.Time, mint: r, idForms: forms{}, leaseForms: forms{}}
	if !mintKind(c, r, segs) {
		return nil
	}
	if c.Kind == "api_key" {
		c.ID, c.tokenHMAC = r.respData("key_id"), r.respData("key")
	} else {
		c.ID, c.tokenHMAC = r.respData("jti"), r.respData("token")
	}
	if c.ID == "" || c.ID == c.Parent {
		return nil // an approval request, or an answer about the old key
	}
	if c.Role == "" {
		c.Role = r.respData("role")
	}
	c.Tenant, c.Name = r.respData("tenant"), r.respData("name")
	if c.Name == "" {
		c.Name = r.reqData("name")
	}
	c.Scopes = strs(r.Response.Data["scopes"])
	if _, ok := r.Response.Data["scopes"]; !ok {
		c.Scopes = strs(r.Request.Data["scopes"])
	}
	c.LeaseID = r.leaseID()
	c.refreshHMAC = r.respData("refresh_token")
	c.clientToken, c.accessor = r.Request.ClientToken, r.Request.ClientTokenAccessor
	c.Minter = actorOf(r)
	c.hiddenID = isHMAC(c.ID)
	if s := r.respData("expires_at"); s != "" && !isHMAC(s) {
		c.expiresAt, _ = time.Parse(time.RFC3339Nano, s)
	} else if n, err := strconv.ParseInt(r.respData("expires_in"), 10, 64); err == nil && c.Kind == "jwt" {
		c.expiresAt = r.Time.Add(time.Duration(n) * time.Second)
	}
	return c
}

// mintKind says whether the path (segs, inside its mount) mints, and sets
// what kind of credential and how: a key or a token, minted (or through an
// approval), rotated, refreshed or exchanged.
func mintKind(c *Cred, r *Record, segs []string) bool {
	switch {
	case len(segs) == 2 && segs[0] == "keys" && segs[1] != "id":
		c.Kind, c.MintedVia, c.Role = "api_key", "mint", segs[1]
	case keyOp(segs) == "rotate":
		c.Kind, c.MintedVia, c.Parent = "api_key", "rotation", keyPathID(segs)
	case len(segs) == 2 && segs[0] == "token" && segs[1] == "refresh":
		c.Kind, c.MintedVia = "jwt", "refresh"
	case len(segs) == 2 && segs[0] == "token" && segs[1] == "exchange":
		c.Kind, c.MintedVia = "jwt", "exchange"
	case len(segs) == 2 && segs[0] == "token":
		c.Kind, c.MintedVia, c.Role = "jwt", "mint", segs[1]
	default:
		return false
	}
	if c.MintedVia == "mint" && r.reqData("approval_id") != "" {
		c.MintedVia = "approval"
	}
	return true
}

// linkParent links a refreshed, exchanged or rotated credential to the one
// it came from, when that one's mint is known.
func (e *engine) linkParent(c *Cred, r *Record) {
	switch c.MintedVia {
	case "refresh":
		if p := e.byRefresh[r.reqData("refresh_token")]; p != nil {
			c.parent, c.Parent = p, p.ID
		}
	case "exchange":
		if p := e.byToken[r.reqData("subject_token")]; p != nil {
			c.parent, c.Parent = p, p.ID
			p.children = append(p.children, c)
		}
	case "rotation":
		c.parent = e.byForm[c.Parent]
	}
}

func (e *engine) addCred(c *Cred) {
	c.idForms.add(c.ID)
	e.creds = append(e.creds, c)
	for f := range c.idForms {
		e.byForm[f] = c
	}
	if c.tokenHMAC != "" {
		e.byToken[c.tokenHMAC] = c
	}
	if c.refreshHMAC != "" {
		e.byRefresh[c.refreshHMAC] = c
	}
	if c.LeaseID != "" {
		c.leaseForms.add(c.LeaseID)
		e.byLease[c.LeaseID] = c
	}
	if c.clientToken != "" {
		e.byClientToken[c.clientToken] = append(e.byClientToken[c.clientToken], c)
	}
	if c.accessor != "" {
		e.byAccessor[c.accessor] = append(e.byAccessor[c.accessor], c)
	}
	if c.Role != "" {
		k := c.Mount + c.Role
		e.byRole[k] = append(e.byRole[k], c)
	}
}

// resolveID makes clear value v a form of c's id (found by hashing).
func (e *engine) resolveID(c *Cred, v string) {
	c.idForms.add(v)
	e.byForm[v] = c
	if c.hiddenID {
		c.ID = v
	}
}

// learnLeases adds the HMACs of c's lease id that the log or Vault can
// tell: from renewals (whose answers show the lease in clear), and from
// audit-hash when there is a Hasher.
func (e *engine) learnLeases(c *Cred, useHasher bool) {
	if c.LeaseID == "" {
		return
	}
	for h, l := range e.learnedLease {
		if l == c.LeaseID {
			c.leaseForms.add(h)
			e.byLease[h] = c
		}
	}
	if useHasher {
		c.leaseHashed = true
		if h := e.hash(c.LeaseID); h != "" {
			c.leaseForms.add(h)
			e.byLease[h] = c
		}
	}
}

func (e *engine) hide(c *Cred, ev *Event, side, field string) {
	if e.track != nil && !e.track[c] || c == nil {
		return
	}
	e.hidden[hiddenKey{c.Mount, side, field}]++
	if ev != nil {
		ev.Hidden = append(ev.Hidden, field+" ("+side+")")
	}
}

func (e *engine) emit(c *Cred, r *Record, kind string, details map[string]string) *Event {
	e.seq++
	ev := &Event{Kind: kind, cred: c, Source: "vault", Details: details, seq: e.seq}
	if c != nil {
		ev.Credential = c.ID
	}
	if r != nil {
		ev.Time, ev.Actor, ev.RequestID, ev.At = r.Time, actorOf(r), r.ID, r.Source
		ev.Route = r.Request.Operation + " " + r.Request.Path
	}
	for k, v := range ev.Details {
		if v == "" {
			delete(ev.Details, k)
		}
	}
	e.events = append(e.events, ev)
	return ev
}

func (e *engine) revoke(c *Cred, t time.Time, by string) {
	if c.RevokedAt.IsZero() {
		c.RevokedAt, c.RevokedBy = t, by
	}
}

// run turns every record and decision into events.
func (e *engine) run() {
	// A rotation names its predecessor by path; link it now that ids
	// found by hashing are known.
	for _, c := range e.creds {
		if c.MintedVia == "rotation" && c.parent == nil {
			c.parent = e.byForm[c.Parent]
		}
	}
	for _, r := range e.log.Records {
		if r.Request == nil {
			continue
		}
		e.record(r)
	}
	for _, d := range e.log.Decisions {
		e.decision(d)
	}
	e.inferExpiry()
	sort.SliceStable(e.events, func(i, j int) bool {
		a, b := e.events[i], e.events[j]
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		return a.seq < b.seq
	})
}

func isRenew(p string) bool {
	return p == "sys/leases/renew" || p == "sys/renew" || strings.HasPrefix(p, "sys/leases/renew/") || strings.HasPrefix(p, "sys/renew/")
}

// record reads one Vault request outside keybroker's mounts: what Vault
// itself does to a credential's lease or its minter's token.
func (e *engine) record(r *Record) {
	if e.isKB(r) {
		e.keybroker(r)
		return
	}
	p := r.Request.Path
	switch {
	case isRenew(p):
		e.renewal(r, p)
	case isLeaseRevoke(p):
		e.leaseRevoke(r, p)
	case isPrefixRevoke(p):
		e.prefixRevoke(r, p)
	case isTokenRevoke(p):
		e.tokenRevoke(r, p)
	}
}

func isLeaseRevoke(p string) bool {
	return p == "sys/leases/revoke" || p == "sys/revoke" || strings.HasPrefix(p, "sys/leases/revoke/") || strings.HasPrefix(p, "sys/revoke/")
}

func isPrefixRevoke(p string) bool {
	return strings.HasPrefix(p, "sys/leases/revoke-prefix/") || strings.HasPrefix(p, "sys/revoke-prefix/") ||
		strings.HasPrefix(p, "sys/leases/revoke-force/") || strings.HasPrefix(p, "sys/revoke-force/")
}

func isTokenRevoke(p string) bool {
	return p == "auth/token/revoke" || p == "auth/token/revoke-orphan" || p == "auth/token/revoke-accessor" || p == "auth/token/revoke-self"
}

// renewal: a lease renewal (or its refusal), by the lease in the path,
// the answer or the request.
func (e *engine) renewal(r *Record, p string) {
	lease := r.leaseID()
	if lease == "" {
		lease = lastAfter(p, "renew/")
	}
	c := e.byLease[lease]
	if c == nil {
		c = e.byLease[r.reqData("lease_id")]
	}
	if c == nil {
		return
	}
	kind := "renewed"
	if r.Failed() {
		kind = "renew_refused"
	} else {
		c.Renewals++
	}
	ev := e.emit(c, r, kind, map[string]string{"lease": c.LeaseID, "error": e.errText(c, nil, r)})
	ev.Route = "lease renew (" + p + ")"
	if inc := r.reqData("increment"); inc != "" && !isHMAC(inc) {
		ev.Details["increment"] = inc + "s"
	}
}

// leaseRevoke: one lease revoked, by the path or lease_id; one whose
// HMAC'd lease_id matches no lease is kept as unresolved.
func (e *engine) leaseRevoke(r *Record, p string) {
	lease := lastAfter(p, "revoke/")
	c := e.byLease[lease]
	h := r.reqData("lease_id")
	if c == nil {
		c = e.byLease[h]
	}
	if c == nil {
		if isHMAC(h) && !r.Failed() {
			e.unresolved = append(e.unresolved, r)
		}
		return
	}
	e.revocation(c, r, "lease revoke ("+p+")", nil)
}

// prefixRevoke: every lease under a prefix revoked (by force or not), of
// the credentials alive then.
func (e *engine) prefixRevoke(r *Record, p string) {
	i := strings.Index(p, "/revoke-")
	prefix := p[i+1:]
	prefix = prefix[strings.IndexByte(prefix, '/')+1:]
	for _, c := range e.creds {
		if c.LeaseID != "" && strings.HasPrefix(c.LeaseID, prefix) && c.MintedAt.Before(r.Time) && !c.goneBy(r.Time) {
			e.revocation(c, r, "lease prefix revoke ("+p+")", map[string]string{"prefix": prefix})
		}
	}
}

// tokenRevoke: a token revoked takes the leases it minted with it, which
// Vault does not itemise.
func (e *engine) tokenRevoke(r *Record, p string) {
	var cs []*Cred
	switch p {
	case "auth/token/revoke-accessor":
		cs = e.byAccessor[r.reqData("accessor")]
	case "auth/token/revoke-self":
		cs = e.byClientToken[r.Request.ClientToken]
	default:
		cs = e.byClientToken[r.reqData("token")]
	}
	for _, c := range cs {
		if c.LeaseID == "" || c.goneBy(r.Time) || !c.MintedAt.Before(r.Time) {
			continue // a key without a lease (orphan role) outlives its minter's token
		}
		if r.Failed() {
			e.emit(c, r, "revoke_refused", map[string]string{"error": r.Error}).Route = "token revoke (" + p + ")"
			continue
		}
		note := "the token that minted it was revoked; Vault revokes the token's leases itself and does not itemise them in the audit log"
		if n := e.unresolvedBetween(c.MintedAt, r.Time); n > 0 {
			note += fmt.Sprintf("; unless the lease was revoked before by %s with an HMAC'd lease_id in between", plural(n, "lease revocation", "lease revocations"))
		}
		ev := e.emit(c, r, "revoked", map[string]string{"lease": c.LeaseID, "note": note})
		ev.Route = "token revocation cascade (" + p + ")"
		e.revoke(c, r.Time, ev.Route)
		e.cascadeExchanged(c, r)
	}
}

// unresolvedBetween counts the lease revocations seen so far, in (from,
// to), whose HMAC'd lease_id matched no lease.
func (e *engine) unresolvedBetween(from, to time.Time) int {
	n := 0
	for _, r := range e.unresolved {
		if r.Time.After(from) && r.Time.Before(to) {
			n++
		}
	}
	return n
}

func lastAfter(p, marker string) string {
	if i := strings.Index(p, marker); i >= 0 {
		return p[i+len(marker):]
	}
	return ""
}

// errText is an error answer's text, or its field name among the hidden.
func (e *engine) errText(c *Cred, ev *Event, r *Record) string {
	if r.Error != "" {
		return r.Error
	}
	s := r.respData("error")
	if isHMAC(s) {
		e.hide(c, ev, "response", "error")
		return shortHMAC(s)
	}
	return s
}

func (e *engine) revocation(c *Cred, r *Record, route string, details map[string]string) {
	if details == nil {
		details = map[string]string{}
	}
	if r.Failed() {
		ev := e.emit(c, r, "revoke_refused", details)
		ev.Route = route
		if s := e.errText(c, ev, r); s != "" {
			ev.Details["error"] = s
		}
		return
	}
	if c.LeaseID != "" {
		details["lease"] = c.LeaseID
	}
	ev := e.emit(c, r, "revoked", details)
	ev.Route = route
	e.revoke(c, r.Time, route)
	e.cascadeExchanged(c, r)
}

// cascadeExchanged: revoking a token revokes what was exchanged from it,
// down the chain; the plugin does it through its feed, with no audit entry.
func (e *engine) cascadeExchanged(c *Cred, r *Record) {
	for _, ch := range c.children {
		if ch.revokedBy(r.Time) {
			continue
		}
		e.seq++
		ev := &Event{Time: r.Time, Kind: "revoked", cred: ch, Credential: ch.ID, Source: "inferred", seq: e.seq,
			Route:   "subject token revoked",
			Details: map[string]string{"subject": c.ID, "note": "exchanged from " + c.ID + ", which was revoked; the plugin revokes what was exchanged from a token without an audit entry"}}
		e.events = append(e.events, ev)
		e.revoke(ch, r.Time, "its subject token was revoked")
		e.cascadeExchanged(ch, r)
	}
}

// budgetOf tells a read or a change of credential id's budget.
func (e *engine) budgetOf(r *Record, id string) {
	c := e.byForm[id]
	if c == nil {
		return
	}
	if r.Request.Operation == "read" {
		e.emit(c, r, "budget_read", map[string]string{"used": r.respData("used"), "limit": r.respData("limit")})
	} else {
		e.emit(c, r, "budget_changed", map[string]string{"limit": r.respData("limit"), "error": e.errText(c, nil, r)})
	}
}

// keyPathID is the key_id a path about one key names: keys/<role>/id/<id>
// (and below it), or keys/id/<id> as plugins before issue 23 served it;
// "" for any other path.
func keyPathID(segs []string) string {
	switch {
	case len(segs) >= 3 && segs[0] == "keys" && segs[1] == "id":
		return segs[2]
	case len(segs) >= 4 && segs[0] == "keys" && segs[2] == "id":
		return segs[3]
	}
	return ""
}

// keyOp is what a path about one key does below it (rotate, suspend,
// resume; "" for the key itself).
func keyOp(segs []string) string {
	switch {
	case keyPathID(segs) == "":
		return ""
	case segs[1] == "id":
		return strings.Join(segs[3:], "/")
	}
	return strings.Join(segs[4:], "/")
}

// keybroker reads one request to a keybroker mount: a mint, or what was
// done with (or refused to) a credential already minted.
func (e *engine) keybroker(r *Record) {
	mount, segs := e.rel(r)
	if c := e.mintOf[r]; c != nil {
		e.mintEvent(c, r)
		return
	}
	switch segs[0] {
	case "keys":
		e.keyPath(r, segs)
	case "roles":
		e.rolePath(r, mount, segs)
	case "budget":
		e.budget(r, segs)
	case "verify":
		e.verify(r)
	case "token":
		e.tokenFailure(r, segs)
	case "revoke":
		e.revokeByValue(r)
	default:
		for _, k := range []string{"key_id", "jti", "id"} {
			if c := e.byForm[r.reqData(k)]; c != nil {
				e.emit(c, r, "vault_request", map[string]string{"error": e.errText(c, nil, r)})
				return
			}
		}
	}
}

// keyPath: a request about one key (keys/<role>/id/<id> and below).
func (e *engine) keyPath(r *Record, segs []string) {
	id := keyPathID(segs)
	if id == "" {
		return
	}
	c := e.byForm[id]
	if c == nil {
		return
	}
	sub := keyOp(segs)
	switch {
	case sub == "" && r.Request.Operation == "delete":
		e.revocation(c, r, "key delete ("+r.Request.Path+")", nil)
	case sub == "" && r.Request.Operation == "read":
		e.emit(c, r, "looked_up", map[string]string{"revoked": r.respData("revoked"), "error": e.errText(c, nil, r)})
	case sub == "suspend" || sub == "resume":
		kind := map[string]string{"suspend": "suspended", "resume": "resumed"}[sub]
		if r.Failed() {
			kind = sub + "_refused"
		}
		e.emit(c, r, kind, map[string]string{"error": e.errText(c, nil, r)})
	case sub == "rotate": // a failed rotation; a successful one is the successor's mint
		e.emit(c, r, "rotate_refused", map[string]string{"error": e.errText(c, nil, r)})
	default:
		e.emit(c, r, "vault_request", map[string]string{"error": e.errText(c, nil, r)})
	}
}

// rolePath: a role suspended or resumed reaches every key of it alive then.
func (e *engine) rolePath(r *Record, mount string, segs []string) {
	if len(segs) != 3 || (segs[2] != "suspend" && segs[2] != "resume") || r.Failed() {
		return
	}
	for _, c := range e.byRole[mount+segs[1]] {
		if c.MintedAt.Before(r.Time) && !c.revokedBy(r.Time) {
			kind := map[string]string{"suspend": "role_suspended", "resume": "role_resumed"}[segs[2]]
			e.emit(c, r, kind, map[string]string{"role": segs[1]})
		}
	}
}

// tokenFailure: a token path that minted nothing, a refused refresh or
// exchange.
func (e *engine) tokenFailure(r *Record, segs []string) {
	if len(segs) == 2 && segs[1] == "refresh" {
		e.refreshFailure(r)
	} else if len(segs) == 2 && segs[1] == "exchange" {
		if c := e.byToken[r.reqData("subject_token")]; c != nil {
			e.emit(c, r, "exchange_refused", map[string]string{"error": e.errText(c, nil, r)})
		}
	}
}

// revokeByValue: keybroker/revoke with key (and keys) in plaintext, which
// the log has HMAC'd like the mint answer's key: equal HMACs, same key.
// The answer's results[i] (kind, id, result) is for the i-th credential.
func (e *engine) revokeByValue(r *Record) {
	given := []string{r.reqData("key")}
	if given[0] == "" {
		given = nil
	}
	given = append(given, strs(r.Request.Data["keys"])...)
	var results []interface{}
	if r.Response != nil {
		results, _ = r.Response.Data["results"].([]interface{})
	}
	for i, v := range given {
		c := e.byToken[v]
		var res map[string]interface{}
		if i < len(results) {
			res, _ = results[i].(map[string]interface{})
		}
		if c == nil && res != nil {
			c = e.byForm[str(res["id"])]
		}
		if c == nil {
			continue
		}
		route := "revoke by value (" + r.Request.Path + ")"
		if r.Failed() {
			e.revocation(c, r, route, nil)
			continue
		}
		result := str(res["result"])
		switch {
		case result == "revoked":
			e.revocation(c, r, route, map[string]string{"result": result})
		case result == "" || isHMAC(result):
			ev := e.emit(c, r, "revoked", map[string]string{"result": shortHMAC(result),
				"note": "the result is HMAC'd: revoked, unless it was already revoked or expired"})
			ev.Route = route
			if result != "" {
				e.hide(c, ev, "response", "result")
			}
			if c.LeaseID != "" {
				ev.Details["lease"] = c.LeaseID
			}
			e.revoke(c, r.Time, route)
			e.cascadeExchanged(c, r)
		default: // already_revoked, expired, not_found, malformed
			e.emit(c, r, "revoke_by_value", map[string]string{"result": result}).Route = route
		}
	}
}

func (e *engine) mintEvent(c *Cred, r *Record) {
	d := map[string]string{"via": c.MintedVia, "role": shortHMAC(c.Role), "tenant": shortHMAC(c.Tenant),
		"name": shortHMAC(c.Name), "lease": c.LeaseID, "approval_id": r.reqData("approval_id")}
	ev := e.emit(c, r, "minted", d)
	if isHMAC(c.ID) {
		e.hide(c, ev, "response", map[string]string{"api_key": "key_id", "jwt": "jti"}[c.Kind])
	}
	if isHMAC(c.Role) {
		e.hide(c, ev, "response", "role")
	}
	if isHMAC(c.Tenant) {
		e.hide(c, ev, "response", "tenant")
	}
	if isHMAC(c.Name) {
		e.hide(c, ev, "response", "name")
	}
	hiddenScopes := false
	var sc []string
	for _, s := range c.Scopes {
		if isHMAC(s) {
			hiddenScopes = true
		}
		sc = append(sc, shortHMAC(s))
	}
	d["scopes"] = strings.Join(sc, ",")
	if hiddenScopes {
		e.hide(c, ev, "response", "scopes")
	}
	if !c.expiresAt.IsZero() {
		ttl := c.expiresAt.Sub(r.Time)
		if c.expiresAt.Nanosecond() == 0 {
			// expires_at is given to the second, truncated: round up.
			ttl = (ttl + time.Second - 1).Truncate(time.Second)
		}
		d["ttl"] = ttl.Round(time.Second).String()
		d["expires_at"] = c.expiresAt.UTC().Format(time.RFC3339)
	} else if isHMAC(r.respData("expires_at")) {
		e.hide(c, ev, "response", "expires_at")
	}
	if c.parent != nil {
		c.Parent = c.parent.ID
	}
	d["parent"] = shortHMAC(c.Parent)
	if c.MintedVia == "exchange" {
		var as []string
		for _, a := range strs(r.Response.Data["actors"]) {
			as = append(as, shortHMAC(a))
		}
		d["actors"] = strings.Join(as, ">")
	}
	for k, v := range d {
		if v == "" {
			delete(d, k)
		}
	}
	// The predecessor's side of a refresh, exchange or rotation.
	if p := c.parent; p != nil {
		switch c.MintedVia {
		case "refresh":
			p.refreshedAt = r.Time
			e.emit(p, r, "refreshed", map[string]string{"successor": c.ID})
		case "exchange":
			e.emit(p, r, "exchanged", map[string]string{"new_jti": c.ID, "actors": d["actors"]})
		case "rotation":
			ev := e.emit(p, r, "rotated", map[string]string{"successor": c.ID})
			if g := r.respData("grace_ends"); isHMAC(g) {
				e.hide(p, ev, "response", "grace_ends")
			} else if t, err := time.Parse(time.RFC3339Nano, g); err == nil {
				ev.Details["grace_ends"] = t.UTC().Format(time.RFC3339)
				p.graceEnds = t
			}
		}
	}
}

func (e *engine) verify(r *Record) {
	c := e.byForm[r.respData("key_id")]
	if c == nil {
		c = e.byForm[r.respData("jti")]
	}
	for _, k := range []string{"key", "token"} {
		if c == nil {
			c = e.byToken[r.reqData(k)]
		}
	}
	if c == nil || r.Response == nil {
		return
	}
	ev := e.emit(c, r, "verified", map[string]string{"valid": r.respData("valid"), "error": r.Error})
	if reason := r.respData("reason"); isHMAC(reason) {
		e.hide(c, ev, "response", "reason")
		ev.Details["reason"] = shortHMAC(reason)
	} else if reason != "" {
		ev.Details["reason"] = reason
	}
	if sc := strs(r.Request.Data["scopes"]); len(sc) > 0 {
		var out []string
		for _, s := range sc {
			if isHMAC(s) {
				e.hide(c, ev, "request", "scopes")
			}
			out = append(out, shortHMAC(s))
		}
		ev.Details["asked_scopes"] = strings.Join(out, ",")
	}
	if a := r.reqData("remote_addr"); a != "" && !isHMAC(a) {
		ev.Details["client_addr"] = a
	}
	c.Verifies++
}

func (e *engine) budget(r *Record, segs []string) {
	switch len(segs) {
	case 3: // budget/<role>/<id>
		e.budgetOf(r, segs[2])
		return
	case 2:
	default:
		return
	}
	byRes := func(id string) *Cred {
		if c := e.byReservation[id]; c != nil {
			return c
		}
		// reservation ids are <credential>:<uuid>
		if i := strings.IndexByte(id, ':'); i > 0 && !isHMAC(id) {
			return e.byForm[id[:i]]
		}
		return nil
	}
	switch segs[1] {
	case "reserve":
		c := e.byForm[r.reqData("id")]
		if c == nil {
			c = byRes(r.reqData("reservation_id"))
		}
		if c == nil {
			return
		}
		ev := e.emit(c, r, "budget_reserved", map[string]string{
			"granted": r.respData("granted"), "exhausted": r.respData("exhausted"), "remaining": r.respData("remaining"),
			"reservation_id": r.respData("reservation_id"), "holder": r.reqData("holder"), "error": e.errText(c, nil, r),
		})
		if u := r.reqData("units"); !isHMAC(u) {
			ev.Details["units"] = u
		}
		if isHMAC(ev.Details["holder"]) {
			e.hide(c, ev, "request", "holder")
			ev.Details["holder"] = shortHMAC(ev.Details["holder"])
		}
		if id := r.respData("reservation_id"); id != "" {
			e.byReservation[id] = c
			if isHMAC(id) {
				e.hide(c, ev, "response", "reservation_id")
				ev.Details["reservation_id"] = shortHMAC(id)
			}
		}
		if n, err := strconv.ParseInt(r.respData("granted"), 10, 64); err == nil {
			c.Granted += n
		}
		c.Reservations++
	case "report":
		id := r.reqData("reservation_id")
		c := byRes(id)
		if c == nil {
			return // a reservation_id HMAC'd in the request was HMAC'd in the reserve's answer too
		}
		ev := e.emit(c, r, "budget_reported", map[string]string{
			"reservation_id": shortHMAC(id), "period_used": r.respData("used"), "remaining": r.respData("remaining"),
			"released": r.respData("release"), "capped": r.respData("capped"), "ended": r.respData("ended"),
			"error": e.errText(c, nil, r),
		})
		if u := r.reqData("used"); u != "" && !isHMAC(u) {
			ev.Details["reservation_used"] = u
		}
		if r.respData("released") == "true" {
			ev.Details["released"] = "true"
		}
		if n, err := strconv.ParseInt(r.respData("used"), 10, 64); err == nil {
			c.PeriodUsed = n
		}
	default: // budget/<id>, as older plugins took changes too
		e.budgetOf(r, segs[1])
	}
}

// refreshFailure: a refused refresh. The successful ones are mints. A
// refresh token presented again after it was used is reuse: the plugin
// revokes its whole family.
func (e *engine) refreshFailure(r *Record) {
	c := e.byRefresh[r.reqData("refresh_token")]
	if c == nil || !r.Failed() {
		return
	}
	if !c.refreshedAt.IsZero() && c.refreshedAt.Before(r.Time) {
		ev := e.emit(c, r, "refresh_reused", map[string]string{
			"error": e.errText(c, nil, r),
			"note":  "its refresh token was already used at " + c.refreshedAt.UTC().Format(time.RFC3339Nano) + ": reuse is treated as theft and the whole family is revoked",
		})
		for _, m := range e.family(c) {
			if m.revokedBy(r.Time) {
				continue
			}
			e.seq++
			rv := &Event{Time: r.Time, Kind: "revoked", cred: m, Credential: m.ID, Source: "inferred", seq: e.seq,
				Actor: ev.Actor, RequestID: r.ID, At: r.Source, Route: "refresh reuse detection (" + r.Request.Path + ")",
				Details: map[string]string{"reused": c.ID, "note": "every token of the refresh family is revoked by the plugin"}}
			e.events = append(e.events, rv)
			e.revoke(m, r.Time, rv.Route)
			e.cascadeExchanged(m, r)
		}
		return
	}
	e.emit(c, r, "refresh_refused", map[string]string{"error": e.errText(c, nil, r)})
}

// family is every token of c's refresh family that the inputs show.
func (e *engine) family(c *Cred) []*Cred {
	root := func(x *Cred) *Cred {
		for x.MintedVia == "refresh" && x.parent != nil {
			x = x.parent
		}
		return x
	}
	r := root(c)
	var out []*Cred
	for _, x := range e.creds {
		if x.Kind == "jwt" && root(x) == r {
			out = append(out, x)
		}
	}
	return out
}

func (e *engine) decision(d *Decision) {
	c := e.byForm[d.KeyID]
	if c == nil {
		c = e.byForm[d.JTI]
	}
	if c == nil {
		return
	}
	if d.Tenant != "" && isHMAC(c.Tenant) {
		e.tenantOf[c.Tenant] = d.Tenant
	}
	kind := "allowed"
	if d.Outcome != contract.DecisionAllow {
		kind = "denied"
	}
	e.seq++
	ev := &Event{Time: d.At, Kind: kind, cred: c, Credential: c.ID, Source: "sidecar", seq: e.seq, At: d.Source,
		Actor:   &Actor{RemoteAddress: d.ClientIP, Sidecar: d.Sidecar, Subject: d.Subject, Actors: d.Actors},
		Route:   strings.TrimSpace(d.Method + " " + d.Path),
		Details: map[string]string{"route": d.Route, "status": strconv.Itoa(d.Status), "mode": d.Mode},
	}
	if d.Status == 0 {
		delete(ev.Details, "status")
	}
	if d.Route == "" {
		delete(ev.Details, "route")
	}
	if d.Mode == "" {
		delete(ev.Details, "mode")
	}
	if kind == "denied" {
		ev.Details["reason"] = d.Reason
		c.Denied++
		if c.Denials == nil {
			c.Denials = map[string]int{}
		}
		c.Denials[d.Reason]++
	} else {
		c.Allowed++
	}
	if d.Cost != nil {
		ev.Details["cost"] = strconv.FormatFloat(float64(*d.Cost), 'f', -1, 64)
		c.Cost += float64(*d.Cost)
	}
	if d.Held != 0 {
		ev.Details["held"] = strconv.FormatFloat(float64(d.Held), 'f', -1, 64)
	}
	if d.DPoP {
		ev.Details["dpop"] = "true"
	}
	e.events = append(e.events, ev)
}

// inferExpiry: a JWT that nobody revoked ends at its exp; Vault's lease
// expiry is not in the audit log. Only said for times the inputs reach.
func (e *engine) inferExpiry() {
	var last time.Time
	if n := len(e.log.Records); n > 0 {
		last = e.log.Records[n-1].Time
	}
	for _, c := range e.creds {
		if g := c.graceEnds; !g.IsZero() && !g.After(last) && !c.revokedBy(g) && !(!c.expiresAt.IsZero() && c.expiresAt.Before(g)) {
			e.seq++
			e.events = append(e.events, &Event{Time: g, Kind: "revoked", cred: c, Credential: c.ID, Source: "inferred", seq: e.seq,
				Route:   "rotation grace ended",
				Details: map[string]string{"note": "the plugin revokes a rotated key when its grace ends, through the feed, without an audit entry"}})
			c.RevokedAt, c.RevokedBy = g, "rotation grace ended"
			continue
		}
		if c.Kind != "jwt" || c.expiresAt.IsZero() || c.expiresAt.After(last) || c.revokedBy(c.expiresAt) {
			continue
		}
		e.seq++
		e.events = append(e.events, &Event{Time: c.expiresAt, Kind: "expired", cred: c, Credential: c.ID, Source: "inferred", seq: e.seq,
			Details: map[string]string{"note": "its exp passed; expiry has no audit entry"}})
	}
}

// tenantName is c's tenant in clear when the log (or a decision) tells it.
func (e *engine) tenantName(c *Cred) string {
	if t, ok := e.tenantOf[c.Tenant]; ok {
		return t
	}
	return shortHMAC(c.Tenant)
}

// fixes says how to get the hidden fields in clear from now on.
func (e *engine) fixes() ([]Hidden, []string) {
	var hs []Hidden
	byMount := map[string][2][]string{}
	for k, n := range e.hidden {
		hs = append(hs, Hidden{Mount: k.mount, Side: k.side, Field: k.field, Count: n})
	}
	sort.Slice(hs, func(i, j int) bool {
		a, b := hs[i], hs[j]
		if a.Mount != b.Mount {
			return a.Mount < b.Mount
		}
		if a.Side != b.Side {
			return a.Side < b.Side
		}
		return a.Field < b.Field
	})
	var out []string
	for _, h := range hs {
		v := byMount[h.Mount]
		if h.Side == "request" {
			v[0] = append(v[0], h.Field)
		} else {
			v[1] = append(v[1], h.Field)
		}
		byMount[h.Mount] = v
	}
	var mounts []string
	for m := range byMount {
		mounts = append(mounts, m)
	}
	sort.Strings(mounts)
	for _, m := range mounts {
		v := byMount[m]
		cmd := "vault secrets tune"
		for _, f := range v[0] {
			cmd += " -audit-non-hmac-request-keys=" + f
		}
		for _, f := range v[1] {
			cmd += " -audit-non-hmac-response-keys=" + f
		}
		out = append(out, cmd+" "+m+"   # each flag replaces the mount's list: repeat the keys already in clear (vault read sys/mounts/"+m+"tune); entries written before stay HMAC'd")
	}
	if len(hs) > 0 && e.opt.Hasher == nil {
		out = append(out, "for entries already written: pass -audit-device <path> (with VAULT_ADDR or -vault-addr, and VAULT_TOKEN allowed update on sys/audit-hash/<path>) to match the credential's id, name and lease ids by audit-hash")
	}
	return hs, out
}

// Hidden is one field an answer needed and the log HMAC'd.
type Hidden struct {
	Mount string `json:"mount"`
	Side  string `json:"side"` // request or response (data)
	Field string `json:"field"`
	Count int    `json:"entries"`
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
