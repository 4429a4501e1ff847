package sidecar

import (
	"context"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/keybroker/keybroker/jwtverify"
)

// jwksFeed keeps what agent JWTs are verified against current: it learns
// the issuer (from the config, or Vault's discovery document), makes the
// verifier, and fetches the key set at start and on a timer into keys (the
// agent JWT kind fetches it too, for a kid it does not know).
type jwksFeed struct {
	opts   jwksFeedOptions
	keys   *jwks
	source issuerSource
	// issuer is the JWT issuer once known, for the resource metadata.
	issuer atomic.Pointer[string]
	log    hclog.Logger
}

// issuerSource reads the issuer from the plugin's discovery document.
// vaultClient is one.
type issuerSource interface {
	issuer(ctx context.Context) (string, error)
}

// jwksFeedOptions are the settings the feed reads, made once.
type jwksFeedOptions struct {
	issuer    string // "": discovered from Vault
	audiences []string
	leeway    time.Duration
	refresh   time.Duration // jwks_refresh_interval
}

func newJWKSFeed(o jwksFeedOptions, keys *jwks, source issuerSource, log hclog.Logger) *jwksFeed {
	return &jwksFeed{opts: o, keys: keys, source: source, log: log}
}

// start makes the verifier, retrying each second until the issuer is
// known or ctx ends, then fetches the key set once.
func (f *jwksFeed) start(ctx context.Context) {
	for f.keys.verifier.Load() == nil && ctx.Err() == nil {
		if err := f.initVerifier(ctx); err != nil {
			f.log.Warn("cannot read the issuer from Vault; retrying", "error", err)
			sleep(ctx, time.Second)
		}
	}
	f.keys.fetch(ctx, "start")
}

func (f *jwksFeed) initVerifier(ctx context.Context) error {
	iss := f.opts.issuer
	if iss == "" {
		var err error
		if iss, err = f.source.issuer(ctx); err != nil {
			return err
		}
	}
	v, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: iss, Audiences: f.opts.audiences, Leeway: f.opts.leeway, AcceptBound: true})
	if err != nil {
		return err
	}
	f.keys.verifier.Store(v)
	f.issuer.Store(&iss)
	return nil
}

// follow fetches the key set every refresh interval until ctx ends; a
// failed fetch keeps the last good set.
func (f *jwksFeed) follow(ctx context.Context) {
	tick := time.NewTicker(f.opts.refresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			f.keys.fetch(ctx, "interval")
		}
	}
}
