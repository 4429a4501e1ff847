package sidecar

import (
	"net/http"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar/internal/credscan"
	"github.com/keybroker/keybroker/sidecar/internal/reqtarget"
)

// What the decision log is handed: a request and its decision, as copies
// of what exists already (decided builds the entry, the writer formats
// it), with what must never be logged taken out: a query, a path segment
// holding a credential.

// decided logs one decision of the given mode, taken at at: every denial,
// and allows as sampled. It never blocks.
func (l *decisionLog) decided(mode string, at time.Time, req *request, d *decision) {
	if !l.sampled(d.allowed()) {
		return
	}
	e := logEntry{at: at, mode: mode, status: d.status, reason: d.reason, method: cut(req.method), clientIP: req.clientIP, dpop: usedDPoP(req.header)}
	if d.hint != nil {
		e.expected = d.hint.expected
	}
	e.path = d.path
	if e.path == "" {
		e.path = rawPathOf(req.target)
	}
	e.path = credscan.Redact(e.path)
	e.path = cut(e.path)
	if d.rt != nil {
		e.route = d.rt.prefix
	}
	if id := d.id; id != nil {
		if id.jwt {
			e.kind, e.jti = contract.DecisionKindJWT, id.id
		} else {
			e.kind, e.keyID = contract.DecisionKindAPIKey, id.id
		}
		e.subject, e.role, e.tenant, e.actors = id.subject, id.role, id.tenant, id.actors
	}
	if d.hold != nil && d.rt != nil {
		// A gateway's request (auth, grpc) is charged the route's cost
		// as it is allowed, and so is one on a route that reads no
		// usage; a proxied one whose usage is read from the answer is
		// charged once that arrives: the log says what it holds.
		if mode == "auth" || mode == "grpc" || (d.rt.usageHeader == "" && !d.rt.openaiUsage) {
			e.cost, e.hasCost = d.rt.cost, true
		} else {
			e.held = d.hold.amount
		}
	}
	l.enqueue(&e)
}

// countEarlyDenial counts (and logs) a denial made before decide: an
// untrusted gateway, or a gateway's request that cannot be read.
func (sc *Sidecar) countEarlyDenial(mode string, d decision, req request) {
	sc.m.decisions.WithLabelValues(mode, "deny", d.reason).Inc()
	if sc.dlog != nil {
		sc.dlog.decided(mode, time.Now(), &req, &d)
	}
}

// rawPathOf is a target's path as sent, without its query (or the
// authority of an absolute-form target); a target with no path is itself
// without its query.
func rawPathOf(target string) string {
	if p, _, ok := reqtarget.Split(target); ok {
		return p
	}
	p, _, _ := strings.Cut(target, "?")
	return p
}

func cut(s string) string {
	if len(s) > maxLoggedPath {
		return s[:maxLoggedPath]
	}
	return s
}

// usedDPoP says whether the request came with the DPoP scheme.
func usedDPoP(h http.Header) bool {
	for _, v := range h["Authorization"] {
		if scheme, _, _ := strings.Cut(strings.TrimSpace(v), " "); strings.EqualFold(scheme, "DPoP") {
			return true
		}
	}
	return false
}
