package audit

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// The engine turns the records and decisions read into credentials and
// their events: it indexes every mint first (index), then reads each
// request in time order (run), keeping the lookups by every form (clear or
// HMAC'd) a credential's id, token, lease and minter take.

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
	mounts := make([]string, 0, len(opt.Mounts))
	for _, m := range opt.Mounts {
		mounts = append(mounts, strings.TrimSuffix(m, "/")+"/")
	}
	opt.Mounts = mounts
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
	e.discoverMounts()
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
