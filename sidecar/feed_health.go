package sidecar

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
)

// What a feed the sidecar follows says of its own health. A decision that
// depends on a feed (every credential on the revocation feed, API keys on
// the key-record feed when key_replica is on) is refused until the feed has
// been read to its end once: a sidecar that does not know what was revoked
// must not pass what might have been.
const (
	feedStarting    = "starting"    // not read to its end yet, no failure either
	feedOK          = "ok"          // the last read succeeded
	feedForbidden   = "forbidden"   // Vault answered 403: the policy lacks the capability
	feedUnreachable = "unreachable" // no answer, or 502/503/504 (sealed, no active node)
	feedError       = "error"       // another answer (400, 500, a body that does not parse)
)

var feedStates = []string{feedStarting, feedOK, feedForbidden, feedUnreachable, feedError}

// feedHealth is one feed's state, for decisions, /healthz, the metric and
// the log. It is written by the feed's own loop and read anywhere.
type feedHealth struct {
	name string // metric label and /healthz key: revocations, key_records
	// path is the Vault path it reads and capability what the sidecar's
	// policy needs on it: named in the error a 403 logs.
	path, capability string

	// read: the feed was read to its end at least once. forbidden: Vault
	// refuses it now (403), read before or not: what the sidecar holds
	// stops growing from then on, so it no longer knows what was revoked.
	read, forbidden atomic.Bool
	mu              sync.Mutex
	state           string
	err             string // the last failure, for /healthz ("" when ok)
	// refusals counts the 403s in a row, to space the retries out.
	refusals int
}

// maxForbiddenRetry is the longest wait between reads Vault refuses: a
// refused read makes the sidecar log in again (the token may have been
// revoked), and a policy that lacks the feed would otherwise have it log
// in, minting a token, every revocation_poll_interval.
const maxForbiddenRetry = 10 * time.Second

// retryIn is how long to wait before reading again after a failure: base,
// doubled for each 403 in a row, up to maxForbiddenRetry, then spread by
// jitter.
func (f *feedHealth) retryIn(base time.Duration) time.Duration {
	f.mu.Lock()
	n := f.refusals
	f.mu.Unlock()
	d := base
	for i := 1; i < n && d < maxForbiddenRetry; i++ {
		d *= 2
	}
	return jitter(min(d, max(base, maxForbiddenRetry)))
}

// jitter spreads d uniformly over [d/2, 3d/2): a fleet of sidecars whose
// reads all failed at once (a failover, Vault restarting) would otherwise
// retry in step, every one of thousands at the same instant, and keep
// meeting the new active node as one wave (BENCHMARKS.md, Fan-out). The
// mean wait is d.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d)
}

func newFeedHealth(name, path, capability string) *feedHealth {
	return &feedHealth{name: name, path: path, capability: capability, state: feedStarting}
}

// known says whether decisions may rely on the feed: read to its end once,
// and not refused since. A feed Vault cannot be reached for keeps what it
// read (its lag says how old that is: Vault down is what the sidecar rides
// out); one Vault refuses is a policy that took the feed away, which no
// waiting fixes, so decisions on it stop.
func (f *feedHealth) known() bool { return f.read.Load() && !f.forbidden.Load() }

// succeeded records a good read; end says it left nothing unread.
func (f *feedHealth) succeeded(log hclog.Logger, end bool) {
	if end && !f.read.Load() {
		f.read.Store(true)
	}
	f.forbidden.Store(false)
	f.mu.Lock()
	was := f.state
	f.state, f.err, f.refusals = feedOK, "", 0
	f.mu.Unlock()
	if was == feedForbidden || was == feedUnreachable || was == feedError {
		log.Info("feed readable again", "feed", f.name, "path", f.path)
	}
}

// failed records a failed read and logs it once per change of state: a 403
// at error level with the capability the policy lacks (it does not fix
// itself), Vault out of reach as a warning.
func (f *feedHealth) failed(log hclog.Logger, err error) {
	if errors.Is(err, context.Canceled) {
		// The sidecar is stopping: not the feed's health, and not worth
		// a warning as the last lines of every stop.
		return
	}
	state := feedStateOf(err)
	f.forbidden.Store(state == feedForbidden)
	f.mu.Lock()
	was := f.state
	f.state, f.err = state, err.Error()
	if state == feedForbidden {
		f.refusals++
	} else {
		f.refusals = 0
	}
	f.mu.Unlock()
	if was == state {
		log.Debug("feed read failed", "feed", f.name, "state", state, "error", err)
		return
	}
	switch state {
	case feedForbidden:
		// Vault answers 403 both for a path the policy lacks and for a
		// mount that does not exist: say both.
		log.Error("Vault refused the feed to this sidecar's token (403): its policy needs the capability on the path, or no keybroker plugin is mounted there (check vault { mount } against `vault secrets list`); until it is read again, credentials that depend on it are refused",
			"feed", f.name, "path", f.path, "capability", f.capability, "error", oneLine(err))
	default:
		log.Warn("cannot read the feed; credentials that depend on it are refused until it has been read once", "feed", f.name, "path", f.path, "state", state, "error", oneLine(err))
	}
}

// status is the feed's state and its last failure.
func (f *feedHealth) status() (state, lastErr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.err
}

// feedStateOf says what a failed read means. withLogin has already logged
// in again once on a 403, so a 403 here is the policy, not a stale token.
func feedStateOf(err error) string {
	var re *api.ResponseError
	var le *loginError
	switch {
	case errors.As(err, &le):
		// The token was refused and a new login failed too: not the
		// feed's capability but the login (or Vault) is what fails.
		if nodeUnavailable(le.err) {
			return feedUnreachable
		}
		return feedError
	case errors.As(err, &re) && re.StatusCode == http.StatusForbidden:
		return feedForbidden
	case nodeUnavailable(err):
		return feedUnreachable
	}
	return feedError
}

// paceFeed sleeps after a feed read when the next read should not follow
// at once: with no long polls, or when a long poll came back at once with
// nothing new (a plugin that does not hold reads). A read with more to
// come, or a long poll that waited, has paced itself.
// longPolls says whether reads of this feed long-poll at all; poll is
// revocation_poll_interval.
func paceFeed(ctx context.Context, poll time.Duration, longPolls, more bool, wait time.Duration, nothingNew bool, asked time.Time) {
	if more {
		return
	}
	if !longPolls || (wait > 0 && nothingNew && time.Since(asked) < wait/2) {
		sleep(ctx, poll)
	}
}
