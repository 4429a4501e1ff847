package sidecar

import (
	"net/http"
	"strings"
	"time"

	"github.com/keybroker/keybroker/contract"
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
	e.path = d.path
	if e.path == "" {
		e.path = rawPathOf(req.target)
	}
	e.path = redactPath(e.path)
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

// redactPath replaces each segment of path that holds a credential with
// "[credential]", so that a path refused as credential_in_path (or refused
// before that check, or not canonical at all) is logged without it. A raw
// segment is looked at percent-decoded too (leniently: it may not decode).
// Each segment is scanned once (and once decoded, if it has a '%'); a path
// with none is returned as is, without allocating.
func redactPath(path string) string {
	var b strings.Builder
	var cs credentialScan
	copied := 0 // path[:copied] is in b (or needs no redaction)
	for start := 0; start <= len(path); {
		end := strings.IndexByte(path[start:], '/')
		if end < 0 {
			end = len(path)
		} else {
			end += start
		}
		seg := path[start:end]
		if cs.found(seg) || strings.IndexByte(seg, '%') >= 0 && cs.found(lenientUnescape(seg)) {
			b.Grow(len(path))
			b.WriteString(path[copied:start])
			b.WriteString("[credential]")
			copied = end
		}
		start = end + 1
	}
	if copied == 0 {
		return path
	}
	b.WriteString(path[copied:])
	return b.String()
}

// lenientUnescape decodes every well-formed %XX of s, once, and leaves the
// rest; s itself when it has no '%'.
func lenientUnescape(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// rawPathOf is a target's path as sent, without its query (or the
// authority of an absolute-form target); a target with no path is itself
// without its query.
func rawPathOf(target string) string {
	if p, _, ok := splitTarget(target); ok {
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
