package audit

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Formats are the output formats.
var Formats = []string{"table", "json", "csv"}

const tableTime = "2006-01-02T15:04:05.000Z07:00"

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(tableTime)
}

// detailOrder puts the telling details first; the rest follow by name.
var detailOrder = []string{"via", "role", "tenant", "name", "scopes", "ttl", "expires_at", "lease", "parent", "successor", "new_jti",
	"actors", "valid", "reason", "asked_scopes", "status", "route", "requests", "cost", "held", "units", "granted", "exhausted",
	"reservation_used", "period_used", "remaining", "released", "capped", "ended", "holder", "reservation_id", "error", "note"}

func detailString(d map[string]string) string {
	rank := map[string]int{}
	for i, k := range detailOrder {
		rank[k] = i + 1
	}
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := rank[keys[i]], rank[keys[j]]
		if a == 0 {
			a = len(detailOrder) + 1
		}
		if b == 0 {
			b = len(detailOrder) + 1
		}
		if a != b {
			return a < b
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+oneLine(d[k]))
	}
	return strings.Join(parts, " ")
}

// oneLine folds a value's whitespace (Vault's multi-line errors) to spaces.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func writeJSON(w io.Writer, v interface{}) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteHistory writes h as table, json or csv. For csv, notes and fixes go
// to notes (the rows stay rows).
func WriteHistory(w, notes io.Writer, h *History, format string) error {
	switch format {
	case "json":
		return writeJSON(w, h)
	case "csv":
		return writeHistoryCSV(w, notes, h)
	case "table", "":
		writeHistoryTable(w, h)
		return nil
	default:
		return fmt.Errorf("unknown format %q: table, json or csv", format)
	}
}

// writeHistoryCSV writes one row per event; the trailer goes to notes.
func writeHistoryCSV(w, notes io.Writer, h *History) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"time", "last", "count", "event", "credential", "source", "entity_id", "display_name", "auth_method",
		"approle_role", "remote_address", "sidecar", "route", "details", "hidden", "request_id"})
	for _, ev := range h.Events {
		a := ev.Actor
		if a == nil {
			a = &Actor{}
		}
		count := ""
		if ev.Count > 0 {
			count = strconv.Itoa(ev.Count)
		}
		_ = cw.Write([]string{ev.Time.UTC().Format(time.RFC3339Nano), rfc(ev.Last), count, ev.Kind, ev.Credential, ev.Source,
			a.EntityID, a.DisplayName, a.AuthMethod, a.AppRole, a.RemoteAddress, a.Sidecar, ev.Route,
			detailString(ev.Details), strings.Join(ev.Hidden, ","), ev.RequestID})
	}
	cw.Flush()
	writeTrailer(notes, h.Hidden, h.Fixes, h.Notes)
	return cw.Error()
}

// writeHistoryTable writes the credentials, a summary line each, then the
// events (with a credential column when there are several).
func writeHistoryTable(w io.Writer, h *History) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CREDENTIAL\tKIND\tROLE\tTENANT\tNAME\tMINTED\tMINTED BY\tFROM\tLEASE")
	for _, c := range h.Credentials {
		minted, by, from := ts(c.MintedAt), c.Minter.String(), ""
		if c.NotMinted {
			minted = "(not in the inputs)"
		}
		if c.Minter != nil {
			from = c.Minter.RemoteAddress
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortHMAC(c.ID), c.Kind, dash(shortHMAC(c.Role)), dash(shortHMAC(c.Tenant)),
			dash(shortHMAC(c.Name)), minted, dash(by), dash(from), dash(c.LeaseID))
	}
	tw.Flush()
	for _, c := range h.Credentials {
		fmt.Fprintf(w, "  %s: %s\n", shortHMAC(c.ID), credSummary(c))
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	multi := len(h.Credentials) > 1
	if multi {
		fmt.Fprintln(tw, "TIME\tEVENT\tCREDENTIAL\tACTOR\tFROM\tROUTE\tDETAILS")
	} else {
		fmt.Fprintln(tw, "TIME\tEVENT\tACTOR\tFROM\tROUTE\tDETAILS")
	}
	for _, ev := range h.Events {
		kind, d := eventCells(ev)
		from, actor := "", ""
		if ev.Actor != nil {
			from, actor = ev.Actor.RemoteAddress, ev.Actor.String()
		}
		if multi {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ts(ev.Time), kind, shortHMAC(ev.Credential), dash(actor), dash(from), dash(ev.Route), d)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ts(ev.Time), kind, dash(actor), dash(from), dash(ev.Route), d)
		}
	}
	tw.Flush()
	writeTrailer(w, h.Hidden, h.Fixes, h.Notes)
}

// eventCells are an event's EVENT and DETAILS cells: merged runs counted
// and dated, inferred events said so, hidden fields named.
func eventCells(ev *Event) (kind, details string) {
	kind = ev.Kind
	if ev.Count > 0 {
		kind = fmt.Sprintf("%s x%d", kind, ev.Count)
	}
	if ev.Source == "inferred" {
		kind += " (inferred)"
	}
	d := detailString(ev.Details)
	if ev.Count > 0 {
		d = "until " + ts(ev.Last) + " " + d
	}
	if len(ev.Hidden) > 0 {
		d += " [hmac'd: " + strings.Join(ev.Hidden, ", ") + "]"
	}
	return kind, strings.TrimSpace(d)
}

func credSummary(c *Cred) string {
	var parts []string
	if c.Allowed > 0 || c.Denied > 0 {
		s := fmt.Sprintf("sidecar allowed %d, denied %d", c.Allowed, c.Denied)
		if len(c.Denials) > 0 {
			s += " (" + countString(c.Denials) + ")"
		}
		parts = append(parts, s)
	}
	parts = append(parts, fmt.Sprintf("verified %d", c.Verifies), fmt.Sprintf("renewed %d", c.Renewals))
	if c.Reservations > 0 {
		parts = append(parts, fmt.Sprintf("budget reserved %s, %d units granted, last reported period use %d", plural(c.Reservations, "time", "times"), c.Granted, c.PeriodUsed))
	}
	if c.MintedVia != "" && c.MintedVia != "mint" {
		s := "minted by " + c.MintedVia
		if c.Parent != "" {
			s += " of " + shortHMAC(c.Parent)
		}
		parts = append(parts, s)
	}
	if !c.RevokedAt.IsZero() {
		parts = append(parts, "revoked "+ts(c.RevokedAt)+" by "+c.RevokedBy)
	} else {
		parts = append(parts, "no revocation seen")
	}
	return strings.Join(parts, "; ")
}

func countString(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", dash(k), m[k]))
	}
	return strings.Join(parts, ", ")
}

func writeTrailer(w io.Writer, hidden []Hidden, fixes, notes []string) {
	if len(hidden) > 0 {
		fmt.Fprintln(w, "\nNot shown, HMAC'd in the audit log:")
		for _, h := range hidden {
			fmt.Fprintf(w, "  %s %s %s (%s)\n", h.Mount, h.Side, h.Field, plural(h.Count, "entry", "entries"))
		}
	}
	if len(fixes) > 0 {
		fmt.Fprintln(w, "To show them:")
		for _, f := range fixes {
			fmt.Fprintln(w, "  "+f)
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range notes {
			fmt.Fprintln(w, "  - "+n)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func rfc(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// WriteReport writes r as table, json or csv (one row per number, with
// its section).
func WriteReport(w, notes io.Writer, r *Report, format string) error {
	switch format {
	case "json":
		return writeJSON(w, r)
	case "csv":
		return writeReportCSV(w, notes, r)
	case "table", "":
		writeReportTable(w, r)
		return nil
	default:
		return fmt.Errorf("unknown format %q: table, json or csv", format)
	}
}

// writeReportCSV writes one row per number; the trailer goes to notes.
func writeReportCSV(w, notes io.Writer, r *Report) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"section", "role", "tenant", "credential", "item", "value", "time"})
	for _, g := range r.Groups {
		for _, kv := range [][2]string{{"mints", strconv.Itoa(g.Mints)}, {"revocations", strconv.Itoa(g.Revocations)},
			{"allowed", strconv.Itoa(g.Allowed)}, {"denied", strconv.Itoa(g.Denied)}} {
			_ = cw.Write([]string{"group", g.Role, g.Tenant, "", kv[0], kv[1], ""})
		}
		reasons := make([]string, 0, len(g.Denials))
		for k := range g.Denials {
			reasons = append(reasons, k)
		}
		sort.Strings(reasons)
		for _, k := range reasons {
			_ = cw.Write([]string{"group", g.Role, g.Tenant, "", "denied:" + k, strconv.Itoa(g.Denials[k]), ""})
		}
	}
	for _, s := range r.TopSpenders {
		_ = cw.Write([]string{"top_spender", s.Role, s.Tenant, s.Credential, "used", strconv.FormatInt(s.Used, 10), ""})
		if s.Cost > 0 {
			_ = cw.Write([]string{"top_spender", s.Role, s.Tenant, s.Credential, "sidecar_cost", strconv.FormatFloat(s.Cost, 'f', -1, 64), ""})
		}
	}
	for _, u := range r.NeverUsed {
		by := ""
		if u.MintedBy != nil {
			by = u.MintedBy.EntityID
		}
		_ = cw.Write([]string{"never_used", u.Role, u.Tenant, u.Credential, "minted_by_entity", by, rfc(u.MintedAt)})
	}
	for _, n := range r.NewSources {
		_ = cw.Write([]string{"new_source", strings.Join(n.Roles, ","), "", strings.Join(n.Credentials, ","), n.Kind, n.Value, rfc(n.FirstMint)})
	}
	cw.Flush()
	writeTrailer(notes, r.Hidden, r.Fixes, r.Notes)
	return cw.Error()
}

// writeReportTable writes the window, then a table per section.
func writeReportTable(w io.Writer, r *Report) {
	fmt.Fprintf(w, "Window %s to %s\n\n", ts(r.Since), ts(r.Until))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tTENANT\tMINTS\tREVOCATIONS\tALLOWED\tDENIED\tDENIALS BY REASON")
	for _, g := range r.Groups {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\n", dash(g.Role), dash(g.Tenant), g.Mints, g.Revocations, g.Allowed, g.Denied, dash(countString(g.Denials)))
	}
	tw.Flush()

	fmt.Fprintln(w, "\nTop spenders (units from budget reports; cost from sidecar decisions)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CREDENTIAL\tROLE\tTENANT\tUSED\tSIDECAR COST")
	for _, s := range r.TopSpenders {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", shortHMAC(s.Credential), dash(s.Role), dash(s.Tenant), s.Used, strconv.FormatFloat(s.Cost, 'f', -1, 64))
	}
	tw.Flush()

	fmt.Fprintln(w, "\nNever used (minted in the window; no sidecar allow, no keybroker/verify, no budget spent)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CREDENTIAL\tROLE\tTENANT\tMINTED\tMINTED BY")
	for _, u := range r.NeverUsed {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", shortHMAC(u.Credential), dash(u.Role), dash(u.Tenant), ts(u.MintedAt), dash(u.MintedBy.String()))
	}
	tw.Flush()

	fmt.Fprintln(w, "\nMints from new sources (entities and addresses not in the inputs before the window)")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tVALUE\tFIRST MINT\tMINTS\tROLES\tCREDENTIALS")
	for _, n := range r.NewSources {
		var ids []string
		for _, id := range n.Credentials {
			ids = append(ids, shortHMAC(id))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", n.Kind, n.Value, ts(n.FirstMint), n.Mints, strings.Join(n.Roles, ","), strings.Join(ids, ","))
	}
	tw.Flush()
	writeTrailer(w, r.Hidden, r.Fixes, r.Notes)
}
