package sidecar

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
)

// Sidecar is the assembly: the components, the decision core that asks
// them (core, decide.go), and the front ends that hand it requests. Its
// caches are bounded (cache_size each).
type Sidecar struct {
	s     *settings
	log   hclog.Logger
	vault *vaultClient
	m     *metrics
	// core decides every request, through the components below.
	core *decider
	rec  *recorder
	// The credential kinds, each with its own caches, and the DPoP proofs
	// (nil: no DPoP).
	apiKeys   *apiKeys
	agentJWTs *agentJWTs
	dpop      *dpopProofs
	// jwks is the key set agent JWTs are verified against, and jwksFeed
	// what keeps it (and the issuer) current.
	jwks     *jwks
	jwksFeed *jwksFeed

	// The feeds: revocations into the revoked set, and key records into
	// the key replica (nil when key_replica = false).
	revocations *revocationFeed
	keyRecords  *keyRecordFeed

	cluster *clusterRate // nil unless rate_limit_scope = "cluster"
	budgets *budgets
	holder  string // this sidecar's name in reservations

	dlog *decisionLog // nil: no decision log (decision_log_path)

	// usage holds the API keys let through since the last key-usage report.
	usage *keyUsage

	// life orders Start against Stop (an embedder may call them from two
	// goroutines): stop ends what Start began, running counts it, and
	// once stopped a Sidecar starts no more.
	life             sync.Mutex
	stop             context.CancelFunc
	running          sync.WaitGroup
	started, stopped bool
}

// New checks the configuration and builds a Sidecar. It starts nothing
// and opens nothing (no goroutine, no file, no call to Vault): Start or
// Serve does.
func New(c *Config, log hclog.Logger) (*Sidecar, error) {
	s, err := c.settings()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.New(&hclog.LoggerOptions{Name: "keybroker-sidecar", Level: hclog.LevelFromString(s.logLevel), JSONFormat: s.logFormat == "json"})
	}
	vc, err := newVaultClient(s, log.Named("vault"))
	if err != nil {
		return nil, err
	}
	sc := &Sidecar{s: s, log: log, vault: vc, m: newMetrics()}
	sc.assembleFeeds()
	sc.holder = s.name
	if sc.holder == "" {
		host, _ := os.Hostname()
		sc.holder = fmt.Sprintf("keybroker-sidecar %s pid %d", host, os.Getpid())
	}
	sc.budgets = newBudgets(vc, budgetOptionsOf(s, sc.holder), log, budgetCountersOf(sc.m))
	sc.usage = newKeyUsage(vc, s.usageReport, log, sc.m.usageDropped, sc.m.vaultCalls)
	if s.clusterRate {
		if sc.cluster, err = newClusterRate(vc, s.cacheSize, log, sc.m.vaultCalls); err != nil {
			return nil, err
		}
	}
	if err := sc.assembleDecisions(); err != nil {
		return nil, err
	}
	if s.decisionLogPath != "" {
		if sc.dlog, err = newDecisionLog(s.decisionLogPath, s.decisionLogSample, sc.holder, sc.m.decisionLogDropped, log.Named("decision-log")); err != nil {
			return nil, err
		}
		sc.rec.log = sc.dlog
	}
	return sc, nil
}

// Start opens the decision log and begins what keeps decisions current
// (the Vault login, the JWKS, the revocation and key-record feeds, budget
// reservations) until ctx ends or Stop. Serve calls it; a Go service that
// embeds the verifier (Middleware) calls it itself, once; later calls do
// nothing, and so does one after Stop. Its error is the decision log's
// file failing to open: nothing is started then, and it is logged too, for
// an embedder that drops the error (every credential is refused until a
// Start succeeds).
func (sc *Sidecar) Start(ctx context.Context) error {
	sc.life.Lock()
	defer sc.life.Unlock()
	if sc.started || sc.stopped {
		return nil // once: a second set of feeds would only leak
	}
	if sc.dlog != nil {
		if err := sc.dlog.start(); err != nil {
			sc.log.Error("not started: the decision log cannot be opened", "error", err)
			return err
		}
	}
	sc.started = true
	ctx, cancel := context.WithCancel(ctx)
	sc.stop = cancel
	sc.running.Add(2)
	if sc.s.usageReport > 0 {
		sc.running.Add(1)
		go func() {
			defer sc.running.Done()
			sc.usage.run(ctx)
		}()
	}
	go func() {
		defer sc.running.Done()
		sc.background(ctx)
	}()
	go func() {
		defer sc.running.Done()
		sc.budgets.run(ctx)
	}()
	return nil
}

// Stop reports what in-flight requests used and gives back the budget
// left, so a clean stop loses nothing, then ends what Start began and
// flushes and closes the decision log. Call it
// after the server in front stopped taking requests.
func (sc *Sidecar) Stop() {
	final, finalDone := context.WithTimeout(context.Background(), 5*time.Second)
	defer finalDone()
	sc.budgets.report(final, true)
	sc.life.Lock()
	sc.stopped = true
	if sc.stop != nil {
		sc.stop()
	}
	sc.life.Unlock()
	sc.running.Wait()
	sc.dlog.close()
}

// background logs in, keeps the token fresh, and follows the feeds: the
// JWKS, the revocations and the key records.
func (sc *Sidecar) background(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sec, err := sc.vault.login(ctx)
	if err != nil {
		sc.log.Warn("vault login failed at start; retrying", "error", err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); sc.vault.keepLoggedIn(ctx, sec) }()

	// The feeds start at once, each on its own: an issuer that cannot be
	// read holds up agent JWTs, not the revocations API keys depend on.
	// Without JWTs (credential_kinds) the JWKS is not followed at all.
	wg.Add(1)
	go func() { defer wg.Done(); sc.revocations.follow(ctx) }()
	if sc.keyRecords != nil {
		wg.Add(1)
		go func() { defer wg.Done(); sc.keyRecords.follow(ctx) }()
	}
	if sc.s.acceptJWTs {
		// The issuer, from config or discovery, and the keys.
		sc.jwksFeed.start(ctx)
		sc.jwksFeed.follow(ctx)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Ready reports whether every component this configuration uses is ready:
// a verifier and keys when JWTs are accepted (credential_kinds), the
// revocation feed (and, with key_replica, the key-record feed) read to its
// end once. Until then it refuses the credentials that depend on them
// (decider.presented). /healthz says which it waits for.
func (sc *Sidecar) Ready() bool {
	return (!sc.s.acceptJWTs || sc.jwks.ready()) && sc.revocations.known() && (sc.keyRecords == nil || sc.keyRecords.known())
}
