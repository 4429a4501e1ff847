package sidecar

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// Sidecar holds everything a decision needs. Its caches are bounded
// (cache_size each); the revoked set holds what the feed says, until
// contract.RevocationGrace past each credential's expiry (no leeway accepts
// it then).
type Sidecar struct {
	s     *settings
	log   hclog.Logger
	vault *vaultClient
	m     *metrics
	dpop  *dpopConfig // nil: no DPoP
	authn authenticators
	// issuer is the JWT issuer, once known (config, or discovery).
	issuer atomic.Pointer[string]

	verifier atomic.Pointer[jwtverify.Verifier]
	keys     atomic.Pointer[jwtverify.KeySet]
	jwksOK   atomic.Int64 // UnixNano of the last good fetch
	feedOK   atomic.Int64 // UnixNano of the last good feed read
	// lastRefetch is when an unknown kid last triggered a JWKS fetch.
	refetchMu   sync.Mutex
	lastRefetch time.Time

	revoked revokedSet
	// revFeed and keyFeed say whether the revocation and key-record feeds
	// have been read, and how their reads go (keyFeed unused without a
	// replica).
	revFeed, keyFeed *feedHealth
	// verifyRefused: Vault answered keybroker/verify with 403 (the policy
	// lacks it), logged once until a verify succeeds.
	verifyRefused atomic.Bool
	// replica holds every key's record (nil when key_replica = false).
	replica *keyReplica

	positive *lru.Cache[[sha256.Size]byte, *keyEntry]
	negative *lru.Cache[[sha256.Size]byte, negEntry]
	// unknownIDs are key_ids Vault said no key has, until when.
	unknownIDs *lru.Cache[string, time.Time]
	flood      *floodGuard
	jwts       *lru.Cache[[sha256.Size]byte, *identity]
	vaultSF    singleflight.Group

	limiters *lru.Cache[string, *rate.Limiter]
	cluster  *clusterRate // nil unless rate_limit_scope = "cluster"
	budgets  *budgets
	holder   string // this sidecar's name in reservations

	dlog *decisionLog // nil: no decision log (decision_log_path)

	// usage holds the API keys let through since the last key-usage report.
	usage *keyUsage

	// stop ends what Start began; running counts it.
	stop    context.CancelFunc
	running sync.WaitGroup
	started atomic.Bool
}

type keyEntry struct {
	id      *identity
	fetched time.Time
}

type negEntry struct {
	reason  string
	expires time.Time
}

// New checks the configuration and builds a Sidecar; Run starts it.
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
	sc := &Sidecar{s: s, log: log, vault: vc, revoked: revokedSet{m: map[string]time.Time{}}}
	if sc.positive, err = lru.New[[sha256.Size]byte, *keyEntry](s.cacheSize); err != nil {
		return nil, err
	}
	if sc.negative, err = lru.New[[sha256.Size]byte, negEntry](s.cacheSize); err != nil {
		return nil, err
	}
	if sc.unknownIDs, err = lru.New[string, time.Time](s.cacheSize); err != nil {
		return nil, err
	}
	if sc.flood, err = newFloodGuard(s); err != nil {
		return nil, err
	}
	if sc.jwts, err = lru.New[[sha256.Size]byte, *identity](s.cacheSize); err != nil {
		return nil, err
	}
	if sc.limiters, err = lru.New[string, *rate.Limiter](s.cacheSize); err != nil {
		return nil, err
	}
	if s.keyReplica {
		sc.replica = newKeyReplica()
	}
	sc.revFeed = newFeedHealth("revocations", s.mount+"/revocations", "read")
	sc.keyFeed = newFeedHealth("key_records", s.mount+"/key-records and "+s.mount+"/key-records/snapshot", "read")
	if s.publicOrigin != "" {
		sc.dpop = &dpopConfig{origin: s.publicOrigin, maxAge: s.dpopMaxAge, leeway: s.leeway, replay: newReplayCache(s.dpopReplaySize)}
	}
	sc.authn = newAuthenticators(sc)
	sc.holder = s.name
	if sc.holder == "" {
		host, _ := os.Hostname()
		sc.holder = fmt.Sprintf("keybroker-sidecar %s pid %d", host, os.Getpid())
	}
	sc.m = newMetrics(sc)
	sc.budgets = newBudgets(vc, budgetOptionsOf(s, sc.holder), log, budgetCountersOf(sc.m))
	sc.usage = newKeyUsage(vc, s.usageReport, log, sc.m.usageDropped, sc.m.vaultCalls)
	if s.clusterRate {
		if sc.cluster, err = newClusterRate(vc, s.cacheSize, log, sc.m.vaultCalls); err != nil {
			return nil, err
		}
	}
	if s.decisionLogPath != "" {
		if sc.dlog, err = openDecisionLog(s.decisionLogPath, s.decisionLogSample, sc.holder, sc.m.decisionLogDropped, log.Named("decision-log")); err != nil {
			return nil, err
		}
	}
	return sc, nil
}

// Run serves until ctx ends. It logs in, loads the JWKS and the revocation
// feed, then serves its listeners; Vault being down at start delays
// readiness (/healthz), not serving.
func (sc *Sidecar) Run(ctx context.Context) error {
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	auth, err := net.Listen("tcp", sc.s.authListen)
	if err != nil {
		return fmt.Errorf("auth_listen: %w", err)
	}
	listeners = append(listeners, auth)
	var proxy net.Listener
	if sc.s.upstream != nil {
		if proxy, err = net.Listen("tcp", sc.s.listen); err != nil {
			closeAll()
			return fmt.Errorf("listen: %w", err)
		}
		listeners = append(listeners, proxy)
	}
	var grpcL net.Listener
	if sc.s.grpcListen != "" {
		if grpcL, err = net.Listen("tcp", sc.s.grpcListen); err != nil {
			closeAll()
			return fmt.Errorf("grpc_listen: %w", err)
		}
	}
	return sc.ServeWith(ctx, Listeners{Proxy: proxy, Auth: auth, GRPC: grpcL})
}

// Serve is Run on listeners the caller opened (tests use port 0). proxy may
// be nil when there is no upstream. It serves no gRPC: see ServeWith.
func (sc *Sidecar) Serve(ctx context.Context, proxy, auth net.Listener) error {
	return sc.ServeWith(ctx, Listeners{Proxy: proxy, Auth: auth})
}

// Listeners are what ServeWith serves on. Auth is required; Proxy may be
// nil when there is no upstream, GRPC when there is no grpc_listen.
type Listeners struct {
	Proxy, Auth net.Listener
	// GRPC serves Envoy's ext_authz gRPC API.
	GRPC net.Listener
}

// ServeWith is Serve with the gRPC ext_authz listener too.
func (sc *Sidecar) ServeWith(ctx context.Context, l Listeners) error {
	proxy, auth := l.Proxy, l.Auth
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sc.Start(ctx)

	servers := []*http.Server{sc.server(sc.authHandler())}
	lns := []net.Listener{auth}
	if proxy != nil {
		servers = append(servers, sc.server(sc.proxyHandler()))
		lns = append(lns, proxy)
	}
	errc := make(chan error, len(servers)+1)
	for i := range servers {
		go func(srv *http.Server, l net.Listener) {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}(servers[i], lns[i])
	}
	var grpcSrv *grpc.Server
	if l.GRPC != nil {
		grpcSrv = sc.grpcServer()
		go func() {
			// nil after GracefulStop or Stop; anything else is the
			// listener failing.
			if err := grpcSrv.Serve(l.GRPC); err != nil {
				errc <- fmt.Errorf("grpc_listen: %w", err)
			}
		}()
	} else if sc.s.grpcListen != "" {
		sc.log.Warn("grpc_listen is set but no gRPC listener was given (Serve); gRPC ext_authz is off", "grpc_listen", sc.s.grpcListen)
	}
	sc.log.Info("serving", "auth", auth.Addr().String(), "proxy", addrOf(proxy), "grpc", addrOf(l.GRPC), "upstream", sc.s.upstream)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	// Checks in flight on gRPC finish (Envoy holds their requests until
	// then), within the same bound as the HTTP servers, and before Stop
	// reports what they used.
	grpcStopped := make(chan struct{})
	go func() {
		if grpcSrv != nil {
			grpcSrv.GracefulStop()
		}
		close(grpcStopped)
	}()
	for _, srv := range servers {
		_ = srv.Shutdown(shutdown)
	}
	select {
	case <-grpcStopped:
	case <-shutdown.Done():
		if grpcSrv != nil {
			grpcSrv.Stop() // ends what is still in flight
		}
		<-grpcStopped
	}
	sc.Stop()
	return err
}

// Start begins what keeps decisions current (the Vault login, the JWKS,
// the revocation and key-record feeds, budget reservations) until ctx ends
// or Stop. Serve calls it; a Go service that embeds the verifier
// (Middleware) calls it itself, once.
func (sc *Sidecar) Start(ctx context.Context) {
	if !sc.started.CompareAndSwap(false, true) {
		return // once: a second set of feeds would only leak
	}
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
}

// Stop reports what in-flight requests used and gives back the budget
// left, so a clean stop loses nothing, then ends what Start began and
// flushes and closes the decision log. Call it
// after the server in front stopped taking requests.
func (sc *Sidecar) Stop() {
	final, finalDone := context.WithTimeout(context.Background(), 5*time.Second)
	defer finalDone()
	sc.budgets.report(final, true)
	if sc.stop != nil {
		sc.stop()
	}
	sc.running.Wait()
	sc.dlog.close()
}

// server applies the configured limits, so a client cannot hold a
// connection or a file descriptor open for nothing. There is no write
// timeout: a streamed answer (server-sent events) may rightly take long.
func (sc *Sidecar) server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: sc.s.readHeaderTimeout,
		ReadTimeout:       sc.s.readTimeout,
		IdleTimeout:       sc.s.idleTimeout,
		MaxHeaderBytes:    sc.s.maxHeaderBytes,
		ErrorLog:          sc.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
}

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// background logs in, keeps the token, the JWKS and the revoked set fresh.
func (sc *Sidecar) background(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sec, err := sc.vault.login(ctx)
	if err != nil {
		sc.log.Warn("vault login failed at start; retrying", "error", err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); sc.vault.keepLoggedIn(ctx, sec) }()

	// The issuer, from config or discovery, then the keys.
	for sc.verifier.Load() == nil && ctx.Err() == nil {
		if err := sc.initVerifier(ctx); err != nil {
			sc.log.Warn("cannot read the issuer from Vault; retrying", "error", err)
			sleep(ctx, time.Second)
		}
	}
	sc.fetchJWKS(ctx, "start")

	wg.Add(1)
	go func() { defer wg.Done(); sc.pollRevocations(ctx) }()
	if sc.replica != nil {
		wg.Add(1)
		go func() { defer wg.Done(); sc.followKeyRecords(ctx) }()
	}
	tick := time.NewTicker(sc.s.jwksRefresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			sc.fetchJWKS(ctx, "interval")
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (sc *Sidecar) initVerifier(ctx context.Context) error {
	iss := sc.s.issuer
	if iss == "" {
		var err error
		if iss, err = sc.vault.issuer(ctx); err != nil {
			return err
		}
	}
	v, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: iss, Audiences: sc.s.audiences, Leeway: sc.s.leeway, AcceptBound: true})
	if err != nil {
		return err
	}
	sc.verifier.Store(v)
	sc.issuer.Store(&iss)
	return nil
}

// fetchJWKS replaces the key set; on failure the last good one stays.
func (sc *Sidecar) fetchJWKS(ctx context.Context, trigger string) bool {
	b, err := sc.vault.raw(ctx, "jwks")
	var ks *jwtverify.KeySet
	if err == nil {
		ks, err = jwtverify.ParseJWKS(b)
	}
	if err != nil {
		sc.m.jwksFetches.WithLabelValues(trigger, "error").Inc()
		sc.log.Warn("JWKS fetch failed; keeping the last good key set", "trigger", trigger, "error", err)
		return false
	}
	sc.keys.Store(ks)
	sc.jwksOK.Store(time.Now().UnixNano())
	sc.m.jwksFetches.WithLabelValues(trigger, "ok").Inc()
	return true
}

// refetchForUnknownKid fetches the JWKS for a kid it does not know, at most
// once per jwks_min_refetch_interval however many such tokens arrive.
func (sc *Sidecar) refetchForUnknownKid(ctx context.Context) bool {
	sc.refetchMu.Lock()
	if time.Since(sc.lastRefetch) < sc.s.jwksMinRefetch {
		sc.refetchMu.Unlock()
		return false
	}
	sc.lastRefetch = time.Now()
	sc.refetchMu.Unlock()
	return sc.fetchJWKS(ctx, "unknown_kid")
}

// pollRevocations follows keybroker/revocations from cursor 0, and again
// from 0 when the feed's epoch changes or its last entry is below the
// cursor (storage went back: a restored snapshot, a re-enabled mount).
// What the sidecar already holds as revoked stays revoked until it expires.
func (sc *Sidecar) pollRevocations(ctx context.Context) {
	var cursor uint64
	var epoch string
	for ctx.Err() == nil {
		// The first read answers at once (the sidecar is not ready until
		// it has one); later ones long-poll.
		wait := sc.s.revocationWait
		if epoch == "" {
			wait = 0
		}
		asked, cursorBefore := time.Now(), cursor
		page, err := sc.vault.revocations(ctx, cursor, wait)
		if err != nil {
			sc.m.vaultCalls.WithLabelValues("revocations", "error").Inc()
			sc.revFeed.failed(sc.log, err)
			sleep(ctx, sc.revFeed.retryIn(sc.s.revocationPoll))
			continue
		}
		sc.m.vaultCalls.WithLabelValues("revocations", "ok").Inc()
		if contract.FeedRestart(epoch, cursor, page) {
			sc.log.Info("the revocation feed started a new epoch or went back; reading it again from the start", "cursor", cursor, "last", page.Last)
			sc.m.feedRestarts.Inc()
			cursor, epoch = 0, page.Epoch
			continue
		}
		epoch = page.Epoch
		now := time.Now()
		sc.revoked.apply(page.Revocations, now)
		cursor = page.Next
		sc.feedOK.Store(now.UnixNano())
		sc.revFeed.succeeded(sc.log, !page.More)
		sc.paceFeed(ctx, sc.s.revocationWait > 0, page.More, wait, page.Next == cursorBefore, asked)
	}
}

// Ready reports whether the sidecar has a verifier and keys, and has read
// the revocation feed (and, with key_replica, the key-record feed) to its
// end once: until then it refuses the credentials that depend on them
// (feedsKnown).
func (sc *Sidecar) Ready() bool {
	return sc.verifier.Load() != nil && sc.keys.Load() != nil && sc.revFeed.known() && (sc.replica == nil || sc.keyFeed.known())
}

// revokedSet is the set of revoked credential ids from the feed, each with
// when it may be forgotten.
type revokedSet struct {
	mu sync.RWMutex
	m  map[string]time.Time
}

// apply adds a page of the feed and forgets what no verifier could accept
// any more. An entry is kept until contract.RevocationGrace past its
// credential's expiry, not until the expiry: a JWT passes until exp +
// leeway (at most that grace), and an API key's expiry is Vault's clock,
// which this one may trail.
func (r *revokedSet) apply(entries []contract.FeedEntry, now time.Time) {
	for _, e := range entries {
		until := now.Add(24 * time.Hour) // unreadable: keep it rather than forget it
		if exp, err := time.Parse(time.RFC3339, e.ExpiresAt); err == nil {
			until = contract.RevokedUntil(exp)
		}
		r.add(e.ID, until)
	}
	r.prune(now)
}

// add holds id as revoked until the given time.
func (r *revokedSet) add(id string, until time.Time) {
	r.mu.Lock()
	r.m[id] = until
	r.mu.Unlock()
}

func (r *revokedSet) has(id string) bool {
	r.mu.RLock()
	_, ok := r.m[id]
	r.mu.RUnlock()
	return ok
}

func (r *revokedSet) prune(now time.Time) {
	r.mu.Lock()
	for id, until := range r.m {
		if !now.Before(until) {
			delete(r.m, id)
		}
	}
	r.mu.Unlock()
}

func (r *revokedSet) size() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.m)
}
