package sidecar

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// The decision log (decision_log_path): one JSON object per decision, per
// line, for auditors and log shippers (keybroker-audit reads it). Every
// denial counted in keybroker_sidecar_decisions_total is logged, and
// decision_log_sample_allowed of the allows. A
// decision is handed to one writer goroutine through a bounded channel and
// never waits for it: when the channel is full the decision is not logged
// and keybroker_sidecar_decision_log_dropped_total counts it, so a flood of
// requests cannot block on the log. The writer buffers, and flushes at
// least every second and on Stop.
//
// What is never logged: a credential, a DPoP proof, a header's value, a
// query string (only paths are: a query can hold a secret), a path segment
// that holds a credential (it is logged as "[credential]"). Who the caller
// is (kind, key_id or jti, subject, role, tenant, actors) only once the
// credential verified: an allow, or a denial after the check (revoked by
// the feed, expired, cidr_denied, insufficient_scope, delegation, rate,
// budget). A denial by the credential check itself (malformed, invalid, an
// unknown key, a key its record says is revoked, a bad or replayed proof)
// names no one, not even the key_id of a key whose checksum verifies:
// anyone can write one, and the log would then name a key its holder never
// presented.

const (
	// decisionLogBuffer decisions wait for the writer at most (about
	// 300 bytes each); past that they are dropped.
	decisionLogBuffer = 8192
	// maxLoggedPath: longer paths (and methods) are cut to this many bytes.
	maxLoggedPath = 512
	// decisionTimeLayout is RFC 3339 with all nine digits of nanoseconds,
	// so the lines of one file sort as text.
	decisionTimeLayout = "2006-01-02T15:04:05.000000000Z07:00"
)

type decisionLog struct {
	path    string // "-": stdout
	started atomic.Bool
	ch      chan logEntry
	sample  float64 // of the allows; 1: every one
	holder  string
	dropped prometheus.Counter
	log     hclog.Logger

	w      io.Writer
	closer io.Closer // nil for stdout
	quit   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// logEntry is what the hot path hands over: copies of strings and values
// that exist already, nothing formatted (the writer formats).
type logEntry struct {
	at                    time.Time
	mode, reason, method  string
	status                int
	path, route           string
	kind, keyID, jti      string
	subject, role, tenant string
	actors                []string
	clientIP              netip.Addr
	cost, held            int64
	hasCost, dpop         bool
}

// decisionRecord is one line of the log.
type decisionRecord struct {
	Time     string   `json:"time"`
	Type     string   `json:"type"`
	Mode     string   `json:"mode"`
	Outcome  string   `json:"outcome"`
	Status   int      `json:"status"`
	Reason   string   `json:"reason"`
	Method   string   `json:"method,omitempty"`
	Path     string   `json:"path,omitempty"`
	Route    string   `json:"route,omitempty"`
	Kind     string   `json:"kind,omitempty"`
	KeyID    string   `json:"key_id,omitempty"`
	JTI      string   `json:"jti,omitempty"`
	Subject  string   `json:"subject,omitempty"`
	Role     string   `json:"role,omitempty"`
	Tenant   string   `json:"tenant,omitempty"`
	ClientIP string   `json:"client_ip,omitempty"`
	Cost     *int64   `json:"cost,omitempty"`
	Held     int64    `json:"held,omitempty"`
	DPoP     bool     `json:"dpop,omitempty"`
	Actors   []string `json:"actors,omitempty"`
	Sidecar  string   `json:"sidecar,omitempty"`
}

// newDecisionLog prepares the log at path ("-": stdout) and opens
// nothing: start does, so a Sidecar built and never started holds no file
// and no goroutine. A path whose directory is missing is refused here, so
// the usual mistake still fails New.
func newDecisionLog(path string, sample float64, holder string, dropped prometheus.Counter, log hclog.Logger) (*decisionLog, error) {
	if path != "-" {
		if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
			if err == nil {
				err = fmt.Errorf("%s is not a directory", filepath.Dir(path))
			}
			return nil, fmt.Errorf("decision_log_path %s: %w", path, err)
		}
	}
	return &decisionLog{path: path, ch: make(chan logEntry, decisionLogBuffer), sample: sample, holder: holder, dropped: dropped, log: log,
		quit: make(chan struct{}), done: make(chan struct{})}, nil
}

// start opens the file for appending (created 0600), or takes stdout, and
// starts the writer; decisions queued before it are written then.
func (l *decisionLog) start() error {
	if !l.started.CompareAndSwap(false, true) {
		return nil // once: a second writer would interleave lines
	}
	if l.path == "-" {
		l.w = os.Stdout
	} else {
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			l.started.Store(false)
			return fmt.Errorf("decision_log_path: %w", err)
		}
		if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
			l.log.Warn("the decision log file is readable or writable by others than its owner", "path", l.path, "mode", fi.Mode().Perm().String())
		}
		l.w, l.closer = f, f
	}
	go l.run()
	return nil
}

// decided logs one decision of the given mode, taken at at: every denial,
// and allows as sampled. It never blocks.
func (l *decisionLog) decided(mode string, at time.Time, req *request, d *decision) {
	if d.allowed() && l.sample < 1 && rand.Float64() >= l.sample {
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
			e.kind, e.jti = "jwt", id.id
		} else {
			e.kind, e.keyID = "api_key", id.id
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
	select {
	case l.ch <- e:
	default:
		l.dropped.Inc()
	}
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

func (l *decisionLog) record(e *logEntry) decisionRecord {
	r := decisionRecord{
		Time: e.at.UTC().Format(decisionTimeLayout), Type: "decision", Mode: e.mode, Outcome: "deny", Status: e.status, Reason: e.reason,
		Method: e.method, Path: e.path, Route: e.route, Kind: e.kind, KeyID: e.keyID, JTI: e.jti,
		Subject: e.subject, Role: e.role, Tenant: e.tenant, ClientIP: ipString(e.clientIP), Held: e.held, DPoP: e.dpop,
		Actors: e.actors, Sidecar: l.holder,
	}
	if e.status == http.StatusOK {
		r.Outcome = "allow"
	}
	if e.hasCost {
		r.Cost = &e.cost
	}
	return r
}

// run is the writer: it formats, buffers and flushes (every second, before
// a line that would not fit, and on close). Lines a failed write may have
// lost count as dropped.
func (l *decisionLog) run() {
	defer close(l.done)
	bw := bufio.NewWriterSize(l.w, 64<<10)
	var line bytes.Buffer
	enc := json.NewEncoder(&line)
	enc.SetEscapeHTML(false)
	pending := 0 // lines in bw
	var lastWarn time.Time
	fail := func(err error, lost int) {
		l.dropped.Add(float64(lost))
		pending = 0
		bw.Reset(l.w)
		if time.Since(lastWarn) > time.Minute {
			lastWarn = time.Now()
			l.log.Warn("cannot write the decision log; decisions are lost", "error", err)
		}
	}
	flush := func() {
		if bw.Buffered() == 0 {
			return
		}
		if err := bw.Flush(); err != nil {
			fail(err, pending)
			return
		}
		pending = 0
	}
	put := func(e *logEntry) {
		line.Reset()
		if err := enc.Encode(l.record(e)); err != nil {
			fail(err, 1) // unreachable: every field encodes
			return
		}
		if line.Len() > bw.Available() {
			flush()
		}
		if _, err := bw.Write(line.Bytes()); err != nil {
			fail(err, pending+1)
			return
		}
		pending++
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case e := <-l.ch:
			put(&e)
		case <-tick.C:
			flush()
		case <-l.quit:
			for {
				select {
				case e := <-l.ch:
					put(&e)
					continue
				default:
				}
				break
			}
			flush()
			if l.closer != nil {
				if err := l.closer.Close(); err != nil {
					l.log.Warn("cannot close the decision log", "error", err)
				}
			}
			return
		}
	}
}

// close writes what is queued, flushes and closes the file; decisions
// after it are dropped (and counted). Safe on nil and more than once.
func (l *decisionLog) close() {
	if l == nil {
		return
	}
	l.once.Do(func() { close(l.quit) })
	if !l.started.Load() {
		return // never started: nothing was written, nothing is open
	}
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
		l.log.Warn("the decision log did not finish writing within 5s")
	}
}
