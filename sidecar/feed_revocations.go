package sidecar

import (
	"context"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/sidecar/internal/revoked"
)

// revocationFeed follows the plugin's revocation feed into the revoked set
// it owns. The decision core reads it as a feedGate (known: read to its end
// and not refused since) and as revokedIDs (has).
type revocationFeed struct {
	opts    revocationOptions
	source  revocationSource
	revoked *revoked.Set
	health  *feedHealth
	// readAt is the UnixNano of the last good read, for the lag gauge and
	// /healthz.
	readAt atomic.Int64
	m      revocationMetrics
	log    hclog.Logger
}

// revocationSource reads the feed (Vault's <mount>/revocations) after a
// cursor; with wait > 0 the plugin holds the read until a revocation is
// added or wait passes. vaultClient is one.
type revocationSource interface {
	revocations(ctx context.Context, after uint64, wait time.Duration) (*contract.FeedPage, error)
}

// revocationOptions are the settings the feed reads, made once.
type revocationOptions struct {
	mount string        // the plugin's mount, for the path a 403 names
	wait  time.Duration // how long a read may be held (0: no long poll)
	poll  time.Duration // revocation_poll_interval: the pace without long polls, and the retry
}

// revocationMetrics are what the feed counts: its reads of Vault (op
// "revocations"), and its restarts from cursor 0.
type revocationMetrics struct {
	vaultCalls *prometheus.CounterVec
	restarts   prometheus.Counter
}

func newRevocationFeed(o revocationOptions, source revocationSource, m revocationMetrics, log hclog.Logger) *revocationFeed {
	return &revocationFeed{opts: o, source: source, m: m, log: log,
		revoked: revoked.New(), health: newFeedHealth("revocations", o.mount+"/"+contract.PathRevocations, "read")}
}

// known says whether decisions may rely on the revoked set (feedGate).
func (f *revocationFeed) known() bool { return f.health.known() }

// has says whether id was revoked (revokedIDs).
func (f *revocationFeed) has(id string) bool { return f.revoked.Has(id) }

// follow reads the feed from cursor 0 until ctx ends, and again from 0
// when the feed's epoch changes or its last entry is below the cursor
// (storage went back: a restored snapshot, a re-enabled mount). What the
// sidecar already holds as revoked stays revoked until it expires.
func (f *revocationFeed) follow(ctx context.Context) {
	var cursor uint64
	var epoch string
	for ctx.Err() == nil {
		// The first read answers at once (the sidecar is not ready until
		// it has one); later ones long-poll.
		wait := f.opts.wait
		if epoch == "" {
			wait = 0
		}
		asked, cursorBefore := time.Now(), cursor
		page, err := f.source.revocations(ctx, cursor, wait)
		if err != nil {
			f.m.vaultCalls.WithLabelValues("revocations", "error").Inc()
			f.health.failed(f.log, err)
			sleep(ctx, f.health.retryIn(f.opts.poll))
			continue
		}
		f.m.vaultCalls.WithLabelValues("revocations", "ok").Inc()
		if contract.FeedRestart(epoch, cursor, page) {
			f.log.Info("the revocation feed started a new epoch or went back; reading it again from the start", "cursor", cursor, "last", page.Last)
			f.m.restarts.Inc()
			cursor, epoch = 0, page.Epoch
			continue
		}
		epoch = page.Epoch
		now := time.Now()
		f.revoked.Apply(page.Revocations, now)
		cursor = page.Next
		f.readAt.Store(now.UnixNano())
		f.health.succeeded(f.log, !page.More)
		paceFeed(ctx, f.opts.poll, f.opts.wait > 0, page.More, wait, page.Next == cursorBefore, asked)
	}
}
