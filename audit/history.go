package audit

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// History is the life of the credentials a query names.
type History struct {
	Query       string   `json:"query"`
	Credentials []*Cred  `json:"credentials"`
	Events      []*Event `json:"events"`
	Hidden      []Hidden `json:"hidden,omitempty"`
	Fixes       []string `json:"fixes,omitempty"`
	Notes       []string `json:"notes,omitempty"`
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// BuildHistory finds the credentials whose key_id, jti or name is query
// and tells their life in time order: mint, renewals, rotation,
// suspension, budget, verifications, sidecar decisions, revocation.
func BuildHistory(l *Log, query string, opt Options) *History {
	e := newEngine(l, opt)
	h := &History{Query: query}
	hq := e.hash(query)
	targets, hiddenNames, hiddenIDs := e.named(query, hq)
	if len(targets) == 0 {
		targets = append(targets, e.unminted(h, query, hq, hiddenNames, hiddenIDs))
	}
	in := map[*Cred]bool{}
	for _, c := range targets {
		in[c] = true
	}
	e.learnLeasesFor(in)
	e.track = in
	e.run()
	var evs []*Event
	for _, ev := range e.events {
		if in[ev.cred] {
			ev.Credential = ev.cred.ID
			evs = append(evs, ev)
		}
	}
	h.Events = mergeAllowed(evs)
	h.Credentials = targets
	for _, c := range targets {
		c.Tenant = e.tenantName(c)
		h.Notes = append(h.Notes, e.unmatchable(c)...)
	}
	if len(l.Decisions) == 0 {
		h.Notes = append(h.Notes, "no sidecar decision log in the inputs: requests the sidecar allowed or denied are not shown (it decides without calling Vault)")
	}
	h.Hidden, h.Fixes = e.fixes()
	h.Notes = append(h.Notes, e.notes...)
	return h
}

// named finds the credentials whose key_id, jti or name is query, in
// clear or as hq, its HMAC (learning the clear form), and counts the mints
// whose id or name is HMAC'd, which may be it.
func (e *engine) named(query, hq string) (targets []*Cred, hiddenNames, hiddenIDs int) {
	for _, c := range e.creds {
		switch {
		case c.ID == query:
		case hq != "" && c.ID == hq:
			e.resolveID(c, query)
		case c.Name == query:
		case hq != "" && c.Name == hq:
			c.Name = query
		default:
			if isHMAC(c.Name) {
				hiddenNames++
			}
			if c.hiddenID {
				hiddenIDs++
			}
			continue
		}
		targets = append(targets, c)
	}
	return targets, hiddenNames, hiddenIDs
}

// unminted is the credential a query names when no mint of it is in the
// inputs: what names it later is still told, with notes on the mints that
// could have been it had they been in clear.
func (e *engine) unminted(h *History, query, hq string, hiddenNames, hiddenIDs int) *Cred {
	kind := "api_key"
	if uuidRe.MatchString(query) {
		kind = "jwt"
	}
	c := &Cred{ID: query, Kind: kind, NotMinted: true, idForms: forms{}, leaseForms: forms{}}
	c.idForms.add(hq)
	e.addCred(c)
	h.Notes = append(h.Notes, fmt.Sprintf("no mint of a credential with key_id, jti or name %q is in the inputs: shown is what names it later", query))
	// What could have matched, had it been in clear.
	for _, x := range e.creds {
		if x.hiddenID {
			e.hidden[hiddenKey{x.Mount, "response", map[string]string{"api_key": "key_id", "jwt": "jti"}[x.Kind]}]++
		}
		if isHMAC(x.Name) {
			e.hidden[hiddenKey{x.Mount, "response", "name"}]++
		}
	}
	if (hiddenNames > 0 || hiddenIDs > 0) && e.opt.Hasher == nil {
		var what []string
		if hiddenIDs > 0 {
			what = append(what, plural(hiddenIDs, "mint has its key_id or jti HMAC'd", "mints have their key_id or jti HMAC'd"))
		}
		if hiddenNames > 0 {
			what = append(what, plural(hiddenNames, "mint has its name HMAC'd", "mints have their name HMAC'd"))
		}
		h.Notes = append(h.Notes, strings.Join(what, " and ")+": one may be it; pass -audit-device to match by audit-hash")
	}
	return c
}

// learnLeasesFor learns every credential's lease, asking audit-hash only
// for the ones asked about (in).
func (e *engine) learnLeasesFor(in map[*Cred]bool) {
	for _, c := range e.creds {
		e.learnLeases(c, in[c])
	}
	if e.opt.Hasher != nil {
		// A lease revocation left unmatched may be another credential's:
		// finding whose keeps it from shadowing the ones asked about.
		if n := e.hashPendingLeases(maxHistoryHashes); n >= maxHistoryHashes {
			e.notes = append(e.notes, fmt.Sprintf("audit-hash was asked for %d other leases, the most one history asks: some lease revocations were left unmatched", n))
		}
	}
}

// unmatchable says what of c's life the inputs may hold without it being
// matched to c: lease revocations by an HMAC'd lease_id while it lived, or
// every decision when its id itself is HMAC'd.
func (e *engine) unmatchable(c *Cred) []string {
	var notes []string
	if c.LeaseID != "" {
		end := c.RevokedAt
		if !c.expiresAt.IsZero() && (end.IsZero() || c.expiresAt.Before(end)) {
			end = c.expiresAt
		}
		if end.IsZero() {
			end = time.Unix(1<<40, 0)
		}
		if n := e.unresolvedBetween(c.MintedAt, end); n > 0 {
			notes = append(notes, fmt.Sprintf("%s: %s while it lived (sys/leases/revoke) an HMAC'd lease_id this log cannot match to a lease; it may be this credential's: pass -audit-device to match by audit-hash",
				shortHMAC(c.ID), plural(n, "lease revocation carries", "lease revocations carry")))
		}
	}
	if isHMAC(c.ID) {
		notes = append(notes, fmt.Sprintf("%s is an HMAC'd id: sidecar decisions, which name credentials in clear, cannot be matched to it", shortHMAC(c.ID)))
	}
	return notes
}

// mergeAllowed folds each run of allowed decisions into one event.
func mergeAllowed(evs []*Event) []*Event {
	var out []*Event
	for _, ev := range evs {
		if n := len(out); n > 0 && ev.Kind == "allowed" && out[n-1].Kind == "allowed" && out[n-1].cred == ev.cred {
			p := out[n-1]
			if p.Count == 0 {
				p.Count = 1
				p.Details["requests"] = p.Route
			}
			p.Count++
			p.Last = ev.Time
			if !strings.Contains(","+p.Details["requests"]+",", ","+ev.Route+",") && strings.Count(p.Details["requests"], ",") < 4 {
				p.Details["requests"] += "," + ev.Route
			}
			if c, ok := ev.Details["cost"]; ok {
				a, _ := strconv.ParseFloat(p.Details["cost"], 64)
				b, _ := strconv.ParseFloat(c, 64)
				p.Details["cost"] = strconv.FormatFloat(a+b, 'f', -1, 64)
			}
			if ev.Actor != nil && p.Actor != nil && ev.Actor.RemoteAddress != p.Actor.RemoteAddress {
				p.Actor.RemoteAddress = "(several)"
			}
			continue
		}
		out = append(out, ev)
	}
	for _, ev := range out {
		if ev.Count > 0 {
			ev.Route = ""
		}
	}
	return out
}

// hashPendingLeases hashes lease ids (newest credential first, at most
// limit) until every lease revocation with an HMAC'd lease_id is matched,
// and returns how many it hashed.
func (e *engine) hashPendingLeases(limit int) int {
	pending := map[string]bool{}
	for _, r := range e.log.Records {
		if r.Request == nil || !(r.Request.Path == "sys/leases/revoke" || r.Request.Path == "sys/revoke") || r.Failed() {
			continue
		}
		if h := r.reqData("lease_id"); isHMAC(h) && e.byLease[h] == nil {
			pending[h] = true
		}
	}
	calls := 0
	for i := len(e.creds) - 1; i >= 0 && len(pending) > 0 && calls < limit && e.hashErr == nil; i-- {
		c := e.creds[i]
		if c.LeaseID == "" || c.leaseHashed {
			continue
		}
		calls++
		c.leaseHashed = true
		if h := e.hash(c.LeaseID); h != "" {
			c.leaseForms.add(h)
			e.byLease[h] = c
			delete(pending, h)
		}
	}
	return calls
}

// maxHistoryHashes bounds the audit-hash calls one history makes to match
// other credentials' lease revocations.
const maxHistoryHashes = 500
