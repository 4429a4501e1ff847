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
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
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
)

// decisionLog is the component: a queue, a sampler and a writer, handed
// logEntry values (decided, in decisionlog_entry.go, builds them from a
// request and its decision); it holds nothing of the sidecar but the
// counter it is given.
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
	expected              string
	status                int
	path, route           string
	kind, keyID, jti      string
	subject, role, tenant string
	actors                []string
	clientIP              netip.Addr
	cost, held            int64
	hasCost, dpop         bool
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

// sampled says whether a decision is logged: every denial, and allows as
// decision_log_sample_allowed says.
func (l *decisionLog) sampled(allowed bool) bool {
	return !allowed || l.sample >= 1 || rand.Float64() < l.sample
}

// enqueue hands e to the writer. It never blocks: with the queue full, e
// is dropped and counted.
func (l *decisionLog) enqueue(e *logEntry) {
	select {
	case l.ch <- *e:
	default:
		l.dropped.Inc()
	}
}

// record is the line the writer formats for e.
func (l *decisionLog) record(e *logEntry) contract.DecisionRecord {
	r := contract.DecisionRecord{
		Time: contract.DecisionTime(e.at), Type: contract.DecisionType, Mode: e.mode, Outcome: contract.DecisionDeny, Status: e.status, Reason: e.reason, Expected: e.expected,
		Method: e.method, Path: e.path, Route: e.route, Kind: e.kind, KeyID: e.keyID, JTI: e.jti,
		Subject: e.subject, Role: e.role, Tenant: e.tenant, Held: e.held, DPoP: e.dpop,
		Actors: e.actors, Sidecar: l.holder,
	}
	if e.status == http.StatusOK {
		r.Outcome = contract.DecisionAllow
	}
	if e.clientIP.IsValid() {
		r.ClientIP = e.clientIP.String()
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
		// Never started: nothing is open, and what was queued (decisions
		// before a Start that never came) is never written: counted as
		// dropped, as every decision not logged is.
		l.dropped.Add(float64(len(l.ch)))
		return
	}
	select {
	case <-l.done:
	case <-time.After(5 * time.Second):
		l.log.Warn("the decision log did not finish writing within 5s")
	}
}
