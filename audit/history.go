package audit

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
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
	var targets []*Cred
	hiddenNames, hiddenIDs := 0, 0
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
	if len(targets) == 0 {
		kind := "api_key"
		if uuidRe.MatchString(query) {
			kind = "jwt"
		}
		c := &Cred{ID: query, Kind: kind, NotMinted: true, idForms: forms{}, leaseForms: forms{}}
		c.idForms.add(hq)
		e.addCred(c)
		targets = append(targets, c)
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
	}
	in := map[*Cred]bool{}
	for _, c := range targets {
		in[c] = true
	}
	for _, c := range e.creds {
		e.learnLeases(c, in[c]) // audit-hash only for the credentials asked about
	}
	if e.opt.Hasher != nil {
		// A lease revocation left unmatched may be another credential's:
		// finding whose keeps it from shadowing the ones asked about.
		if n := e.hashPendingLeases(maxHistoryHashes); n >= maxHistoryHashes {
			e.notes = append(e.notes, fmt.Sprintf("audit-hash was asked for %d other leases, the most one history asks: some lease revocations were left unmatched", n))
		}
	}
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
		if c.LeaseID != "" {
			end := c.RevokedAt
			if !c.expiresAt.IsZero() && (end.IsZero() || c.expiresAt.Before(end)) {
				end = c.expiresAt
			}
			if end.IsZero() {
				end = time.Unix(1<<40, 0)
			}
			if n := e.unresolvedBetween(c.MintedAt, end); n > 0 {
				h.Notes = append(h.Notes, fmt.Sprintf("%s: %s while it lived (sys/leases/revoke) an HMAC'd lease_id this log cannot match to a lease; it may be this credential's: pass -audit-device to match by audit-hash",
					shortHMAC(c.ID), plural(n, "lease revocation carries", "lease revocations carry")))
			}
		}
		if isHMAC(c.ID) {
			h.Notes = append(h.Notes, fmt.Sprintf("%s is an HMAC'd id: sidecar decisions, which name credentials in clear, cannot be matched to it", shortHMAC(c.ID)))
		}
	}
	if len(l.Decisions) == 0 {
		h.Notes = append(h.Notes, "no sidecar decision log in the inputs: requests the sidecar allowed or denied are not shown (it decides without calling Vault)")
	}
	h.Hidden, h.Fixes = e.fixes()
	h.Notes = append(h.Notes, e.notes...)
	return h
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

// Report is what happened in a window, per role and tenant.
type Report struct {
	Since       time.Time    `json:"since"`
	Until       time.Time    `json:"until"`
	Groups      []*Group     `json:"groups"`
	TopSpenders []*Spender   `json:"top_spenders"`
	NeverUsed   []*Unused    `json:"never_used"`
	NewSources  []*NewSource `json:"new_sources"`
	Hidden      []Hidden     `json:"hidden,omitempty"`
	Fixes       []string     `json:"fixes,omitempty"`
	Notes       []string     `json:"notes,omitempty"`
}

// Group is one role and tenant's numbers in the window.
type Group struct {
	Role        string         `json:"role"`
	Tenant      string         `json:"tenant"`
	Mints       int            `json:"mints"`
	Revocations int            `json:"revocations"`
	Allowed     int            `json:"allowed"`
	Denied      int            `json:"denied"`
	Denials     map[string]int `json:"denials,omitempty"`
}

// Spender is one credential's spend in the window: units Vault recorded
// from budget reports, and the cost the sidecars' decisions logged.
type Spender struct {
	Credential string  `json:"credential"`
	Role       string  `json:"role,omitempty"`
	Tenant     string  `json:"tenant,omitempty"`
	Used       int64   `json:"used"`
	Cost       float64 `json:"sidecar_cost,omitempty"`
}

// Unused is a credential minted in the window that nothing used.
type Unused struct {
	Credential string    `json:"credential"`
	Role       string    `json:"role,omitempty"`
	Tenant     string    `json:"tenant,omitempty"`
	MintedAt   time.Time `json:"minted_at"`
	MintedBy   *Actor    `json:"minted_by,omitempty"`
}

// NewSource is an entity or address that minted in the window and
// appears nowhere in the inputs before it.
type NewSource struct {
	Kind        string    `json:"kind"` // entity or address
	Value       string    `json:"value"`
	FirstMint   time.Time `json:"first_mint"`
	Mints       int       `json:"mints"`
	Credentials []string  `json:"credentials"`
	Roles       []string  `json:"roles"`
}

// ReportOptions bound the report.
type ReportOptions struct {
	Since, Until time.Time
	Top          int // top spenders shown; default 10
}

// BuildReport summarises [Since, Until).
func BuildReport(l *Log, ro ReportOptions, opt Options) *Report {
	if ro.Top <= 0 {
		ro.Top = 10
	}
	e := newEngine(l, opt)
	rep := &Report{Since: ro.Since, Until: ro.Until}
	in := func(t time.Time) bool { return !t.Before(ro.Since) && t.Before(ro.Until) }

	for _, c := range e.creds {
		e.learnLeases(c, false)
	}
	if e.opt.Hasher != nil {
		e.hashForReport()
	}
	e.run()

	groups := map[[2]string]*Group{}
	group := func(role, tenant string) *Group {
		k := [2]string{role, tenant}
		g := groups[k]
		if g == nil {
			g = &Group{Role: role, Tenant: tenant}
			groups[k] = g
		}
		return g
	}
	credGroup := func(c *Cred) *Group { return group(shortHMAC(c.Role), e.tenantName(c)) }
	used := map[*Cred]bool{}
	spend := map[*Cred]*Spender{}
	lastUsed := map[*Cred]int64{}
	spender := func(c *Cred) *Spender {
		s := spend[c]
		if s == nil {
			s = &Spender{Credential: c.ID, Role: shortHMAC(c.Role), Tenant: e.tenantName(c)}
			spend[c] = s
		}
		return s
	}
	for _, ev := range e.events {
		c := ev.cred
		if ev.Time.Before(ro.Until) && (ev.Kind == "allowed" || ev.Kind == "verified") {
			used[c] = true
		}
		if ev.Kind == "budget_reported" {
			n, err := strconv.ParseInt(ev.Details["period_used"], 10, 64)
			if err == nil {
				if in(ev.Time) {
					// used is the credential's total for its period: a drop starts a new one.
					if d := n - lastUsed[c]; d >= 0 {
						spender(c).Used += d
					} else {
						spender(c).Used += n
					}
				}
				lastUsed[c] = n
			}
		}
		if !in(ev.Time) {
			continue
		}
		switch ev.Kind {
		case "minted":
			credGroup(c).Mints++
		case "revoked":
			credGroup(c).Revocations++
		}
	}
	for _, d := range l.Decisions {
		if !in(d.At) {
			continue
		}
		c := e.byForm[d.Credential()]
		g := group(d.Role, d.Tenant)
		if d.Role == "" && c != nil {
			g = credGroup(c)
		}
		if d.Outcome == contract.DecisionAllow {
			g.Allowed++
		} else {
			g.Denied++
			if g.Denials == nil {
				g.Denials = map[string]int{}
			}
			g.Denials[d.Reason]++
		}
		if d.Cost != nil && *d.Cost != 0 {
			if c == nil {
				c = &Cred{ID: d.Credential(), Role: d.Role, Tenant: d.Tenant, idForms: forms{}, leaseForms: forms{}}
				e.addCred(c)
			}
			spender(c).Cost += float64(*d.Cost)
		}
	}
	for _, g := range groups {
		rep.Groups = append(rep.Groups, g)
	}
	sort.Slice(rep.Groups, func(i, j int) bool {
		a, b := rep.Groups[i], rep.Groups[j]
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		return a.Tenant < b.Tenant
	})
	for _, s := range spend {
		if s.Used > 0 || s.Cost > 0 {
			rep.TopSpenders = append(rep.TopSpenders, s)
		}
	}
	sort.Slice(rep.TopSpenders, func(i, j int) bool {
		a, b := rep.TopSpenders[i], rep.TopSpenders[j]
		if a.Used != b.Used {
			return a.Used > b.Used
		}
		if a.Cost != b.Cost {
			return a.Cost > b.Cost
		}
		return a.Credential < b.Credential
	})
	if len(rep.TopSpenders) > ro.Top {
		rep.TopSpenders = rep.TopSpenders[:ro.Top]
	}

	// Never used, and minted from somewhere new.
	seenEntity, seenAddr := map[string]bool{}, map[string]bool{}
	before := 0
	for _, r := range l.Records {
		if !r.Time.Before(ro.Since) {
			break
		}
		before++
		if r.Auth != nil && r.Auth.EntityID != "" {
			seenEntity[r.Auth.EntityID] = true
		}
		if r.Request != nil && r.Request.RemoteAddress != "" {
			seenAddr[r.Request.RemoteAddress] = true
		}
	}
	newSrc := map[[2]string]*NewSource{}
	for _, c := range e.creds {
		if c.NotMinted || !in(c.MintedAt) {
			continue
		}
		if !used[c] {
			rep.NeverUsed = append(rep.NeverUsed, &Unused{Credential: c.ID, Role: shortHMAC(c.Role), Tenant: e.tenantName(c), MintedAt: c.MintedAt, MintedBy: c.Minter})
		}
		if before == 0 || c.Minter == nil {
			continue
		}
		for _, k := range [][2]string{{"entity", c.Minter.EntityID}, {"address", c.Minter.RemoteAddress}} {
			if k[1] == "" || k[0] == "entity" && seenEntity[k[1]] || k[0] == "address" && seenAddr[k[1]] {
				continue
			}
			ns := newSrc[k]
			if ns == nil {
				ns = &NewSource{Kind: k[0], Value: k[1], FirstMint: c.MintedAt}
				newSrc[k] = ns
				rep.NewSources = append(rep.NewSources, ns)
			}
			ns.Mints++
			if len(ns.Credentials) < 5 {
				ns.Credentials = append(ns.Credentials, c.ID)
			}
			if !containsStr(ns.Roles, shortHMAC(c.Role)) {
				ns.Roles = append(ns.Roles, shortHMAC(c.Role))
			}
		}
	}
	sort.SliceStable(rep.NeverUsed, func(i, j int) bool { return rep.NeverUsed[i].MintedAt.Before(rep.NeverUsed[j].MintedAt) })

	if len(l.Records) > 0 && before == 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the inputs start at %s, inside the window: with nothing before it to compare with, new entities and addresses are not listed",
			l.Records[0].Time.UTC().Format(time.RFC3339)))
	}
	if len(l.Decisions) == 0 {
		rep.Notes = append(rep.Notes, "no sidecar decision log in the inputs: no allows or denials, and 'never used' means no keybroker/verify call named the credential")
	}
	if n := len(e.unresolved); n > 0 {
		k := 0
		for _, r := range e.unresolved {
			if in(r.Time) {
				k++
			}
		}
		if k > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s in the window (sys/leases/revoke) an HMAC'd lease_id that could not be matched to a credential: not counted (pass -audit-device to match by audit-hash)",
				plural(k, "lease revocation carries", "lease revocations carry")))
		}
	}
	if len(l.Records) > 0 {
		last := l.Records[len(l.Records)-1].Time
		if last.Before(ro.Since) {
			rep.Notes = append(rep.Notes, fmt.Sprintf("the inputs end at %s, before the window: use -until", last.UTC().Format(time.RFC3339)))
		}
	}
	rep.Hidden, rep.Fixes = e.fixes()
	rep.Notes = append(rep.Notes, e.notes...)
	return rep
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

// maxReportHashes bounds the audit-hash calls one report makes.
const maxReportHashes = 2000

// hashForReport asks Vault for the HMACs that let the report attribute
// what the log hides: the ids decisions name in clear (for mints whose id
// is HMAC'd), and lease ids (for lease revocations by HMAC'd lease_id).
func (e *engine) hashForReport() {
	calls := 0
	hiddenIDs := 0
	for _, c := range e.creds {
		if c.hiddenID {
			hiddenIDs++
		}
	}
	if hiddenIDs > 0 {
		done := map[string]bool{}
		for _, d := range e.log.Decisions {
			id := d.Credential()
			if id == "" || done[id] || e.byForm[id] != nil || calls >= maxReportHashes {
				continue
			}
			done[id] = true
			calls++
			if h := e.hash(id); h != "" {
				if c := e.byForm[h]; c != nil {
					e.resolveID(c, id)
				}
			}
		}
	}
	calls += e.hashPendingLeases(maxReportHashes - calls)
	if calls >= maxReportHashes {
		e.notes = append(e.notes, fmt.Sprintf("audit-hash was asked %d times, the most one report asks: some HMAC'd values were left unmatched", maxReportHashes))
	}
}
