package audit

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/contract"
)

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

// BuildReport summarises [Since, Until): per role and tenant, the mints,
// revocations and sidecar decisions; the top spenders; the credentials
// minted and never used; the entities and addresses minting for the first
// time.
func BuildReport(l *Log, ro ReportOptions, opt Options) *Report {
	if ro.Top <= 0 {
		ro.Top = 10
	}
	e := newEngine(l, opt)
	for _, c := range e.creds {
		e.learnLeases(c, false)
	}
	if e.opt.Hasher != nil {
		e.hashForReport()
	}
	e.run()

	b := &reportBuilder{e: e, l: l, ro: ro, rep: &Report{Since: ro.Since, Until: ro.Until},
		groups: map[[2]string]*Group{}, used: map[*Cred]bool{}, spend: map[*Cred]*Spender{}}
	b.countEvents()
	b.countDecisions()
	b.rankGroups()
	b.rankSpenders()
	before := b.mintSources()
	b.mints(before)
	b.note(before)
	rep := b.rep
	rep.Hidden, rep.Fixes = e.fixes()
	rep.Notes = append(rep.Notes, e.notes...)
	return rep
}

// reportBuilder holds a report's tallies while the events and decisions
// of the window are counted.
type reportBuilder struct {
	e   *engine
	l   *Log
	ro  ReportOptions
	rep *Report

	groups map[[2]string]*Group
	used   map[*Cred]bool // allowed, verified or spending before Until
	spend  map[*Cred]*Spender
	// Of the window's mints, what was seen before Since: where a mint
	// comes from is new when it is seen nowhere before it.
	seenEntity, seenAddr map[string]bool
}

func (b *reportBuilder) in(t time.Time) bool { return !t.Before(b.ro.Since) && t.Before(b.ro.Until) }

func (b *reportBuilder) group(role, tenant string) *Group {
	k := [2]string{role, tenant}
	g := b.groups[k]
	if g == nil {
		g = &Group{Role: role, Tenant: tenant}
		b.groups[k] = g
	}
	return g
}

func (b *reportBuilder) credGroup(c *Cred) *Group {
	return b.group(shortHMAC(c.Role), b.e.tenantName(c))
}

func (b *reportBuilder) spender(c *Cred) *Spender {
	s := b.spend[c]
	if s == nil {
		s = &Spender{Credential: c.ID, Role: shortHMAC(c.Role), Tenant: b.e.tenantName(c)}
		b.spend[c] = s
	}
	return s
}

// usedBy tells the events that show a credential used: a sidecar let it
// through, keybroker/verify was asked about it, or a verifier spent from
// its budget (a key that only spends is no less used than one allowed).
func usedBy(kind string) bool {
	switch kind {
	case "allowed", "verified", "budget_reserved", "budget_reported":
		return true
	}
	return false
}

// countEvents counts what Vault's log tells: uses, budget spend, mints
// and revocations.
func (b *reportBuilder) countEvents() {
	lastUsed := map[*Cred]int64{}
	for _, ev := range b.e.events {
		c := ev.cred
		if ev.Time.Before(b.ro.Until) && usedBy(ev.Kind) {
			b.used[c] = true
		}
		if ev.Kind == "budget_reported" {
			n, err := strconv.ParseInt(ev.Details["period_used"], 10, 64)
			if err == nil {
				if b.in(ev.Time) {
					// used is the credential's total for its period: a drop starts a new one.
					if d := n - lastUsed[c]; d >= 0 {
						b.spender(c).Used += d
					} else {
						b.spender(c).Used += n
					}
				}
				lastUsed[c] = n
			}
		}
		if !b.in(ev.Time) {
			continue
		}
		switch ev.Kind {
		case "minted":
			b.credGroup(c).Mints++
		case "revoked":
			b.credGroup(c).Revocations++
		}
	}
}

// countDecisions counts the sidecars' decisions in the window, by the role
// and tenant they name (else their credential's), and the cost they logged.
func (b *reportBuilder) countDecisions() {
	for _, d := range b.l.Decisions {
		if !b.in(d.At) {
			continue
		}
		c := b.e.byForm[d.Credential()]
		g := b.group(d.Role, d.Tenant)
		if d.Role == "" && c != nil {
			g = b.credGroup(c)
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
				b.e.addCred(c)
			}
			b.spender(c).Cost += float64(*d.Cost)
		}
	}
}

func (b *reportBuilder) rankGroups() {
	rep := b.rep
	for _, g := range b.groups {
		rep.Groups = append(rep.Groups, g)
	}
	sort.Slice(rep.Groups, func(i, j int) bool {
		a, b := rep.Groups[i], rep.Groups[j]
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		return a.Tenant < b.Tenant
	})
}

// rankSpenders keeps the Top credentials by units used, then by cost.
func (b *reportBuilder) rankSpenders() {
	rep := b.rep
	for _, s := range b.spend {
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
	if len(rep.TopSpenders) > b.ro.Top {
		rep.TopSpenders = rep.TopSpenders[:b.ro.Top]
	}
}

// mintSources learns the entities and addresses seen before the window,
// and returns how many records precede it.
func (b *reportBuilder) mintSources() (before int) {
	b.seenEntity, b.seenAddr = map[string]bool{}, map[string]bool{}
	for _, r := range b.l.Records {
		if !r.Time.Before(b.ro.Since) {
			break
		}
		before++
		if r.Auth != nil && r.Auth.EntityID != "" {
			b.seenEntity[r.Auth.EntityID] = true
		}
		if r.Request != nil && r.Request.RemoteAddress != "" {
			b.seenAddr[r.Request.RemoteAddress] = true
		}
	}
	return before
}

// mints lists the window's mints never used, and, when the inputs reach
// before the window (before > 0), the new places they were minted from.
func (b *reportBuilder) mints(before int) {
	rep := b.rep
	newSrc := map[[2]string]*NewSource{}
	for _, c := range b.e.creds {
		if c.NotMinted || !b.in(c.MintedAt) {
			continue
		}
		if !b.used[c] && b.spend[c] == nil {
			rep.NeverUsed = append(rep.NeverUsed, &Unused{Credential: c.ID, Role: shortHMAC(c.Role), Tenant: b.e.tenantName(c), MintedAt: c.MintedAt, MintedBy: c.Minter})
		}
		if before == 0 || c.Minter == nil {
			continue
		}
		for _, k := range [][2]string{{"entity", c.Minter.EntityID}, {"address", c.Minter.RemoteAddress}} {
			if k[1] == "" || k[0] == "entity" && b.seenEntity[k[1]] || k[0] == "address" && b.seenAddr[k[1]] {
				continue
			}
			ns := newSrc[k]
			if ns == nil {
				ns = &NewSource{Kind: k[0], Value: k[1], FirstMint: c.MintedAt}
				newSrc[k] = ns
				rep.NewSources = append(rep.NewSources, ns)
			}
			ns.add(c)
		}
	}
	sort.SliceStable(rep.NeverUsed, func(i, j int) bool { return rep.NeverUsed[i].MintedAt.Before(rep.NeverUsed[j].MintedAt) })
}

// add counts c's mint, naming at most 5 credentials.
func (ns *NewSource) add(c *Cred) {
	ns.Mints++
	if len(ns.Credentials) < 5 {
		ns.Credentials = append(ns.Credentials, c.ID)
	}
	if !containsStr(ns.Roles, shortHMAC(c.Role)) {
		ns.Roles = append(ns.Roles, shortHMAC(c.Role))
	}
}

// note says what the inputs leave out of the window.
func (b *reportBuilder) note(before int) {
	rep, l := b.rep, b.l
	if len(l.Records) > 0 && before == 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the inputs start at %s, inside the window: with nothing before it to compare with, new entities and addresses are not listed",
			l.Records[0].Time.UTC().Format(time.RFC3339)))
	}
	if len(l.Decisions) == 0 {
		rep.Notes = append(rep.Notes, "no sidecar decision log in the inputs: no allows or denials, and 'never used' means no keybroker/verify call named the credential and nothing spent from its budget")
	}
	if len(b.e.unresolved) > 0 {
		k := 0
		for _, r := range b.e.unresolved {
			if b.in(r.Time) {
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
		if last.Before(b.ro.Since) {
			rep.Notes = append(rep.Notes, fmt.Sprintf("the inputs end at %s, before the window: use -until", last.UTC().Format(time.RFC3339)))
		}
	}
}

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
