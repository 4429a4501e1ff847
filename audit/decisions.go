package audit

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// The sidecars' decision logs: a line read (the sidecar's own record,
// contract.DecisionRecord), then an event of the credential it names.

// Decision is one line of a sidecar's decision log: the record as the
// sidecar wrote it (contract.DecisionRecord, the one definition of the
// line), its time read, and where it was read.
type Decision struct {
	contract.DecisionRecord
	At     time.Time // DecisionRecord.Time, read
	Source string    // input:line
	seq    int
}

// Credential is the key_id or the jti the decision was about.
func (d *Decision) Credential() string {
	if d.KeyID != "" {
		return d.KeyID
	}
	return d.JTI
}

// addDecision reads a decision-log line as the sidecar wrote it.
func (l *Log) addDecision(b []byte, src, input string, seq int) {
	var d Decision
	if err := json.Unmarshal(b, &d.DecisionRecord); err != nil {
		l.Malformed[input]++
		return
	}
	var err error
	if d.At, err = contract.ParseDecisionTime(d.Time); err != nil {
		l.Malformed[input]++
		return
	}
	d.Source, d.seq = src, seq
	l.Decisions = append(l.Decisions, &d)
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
