package sidecar

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/contract"
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
	// lastErr is why the issuer cannot be read, for /healthz; nil once
	// it was.
	lastErr atomic.Pointer[string]
	log     hclog.Logger
}

// issuerSource reads the issuer from the plugin's discovery document.
// vaultClient is one.
type issuerSource interface {
	issuer(ctx context.Context) (string, error)
}

// jwksFeedOptions are the settings the feed reads, made once.
type jwksFeedOptions struct {
	mount     string // the plugin's mount, named when discovery fails
	issuer    string // "": discovered from Vault
	audiences []string
	leeway    time.Duration
	refresh   time.Duration // jwks_refresh_interval
}

func newJWKSFeed(o jwksFeedOptions, keys *jwks, source issuerSource, log hclog.Logger) *jwksFeed {
	return &jwksFeed{opts: o, keys: keys, source: source, log: log}
}

// start makes the verifier, retrying each second until the issuer is
// known or ctx ends, then fetches the key set once. A failure is logged
// once, with what to check, and again only when it changes: the same
// Vault error every second tells an operator nothing more.
func (f *jwksFeed) start(ctx context.Context) {
	last := ""
	for f.keys.verifier.Load() == nil && ctx.Err() == nil {
		if err := f.initVerifier(ctx); err != nil {
			if msg := err.Error(); msg != last {
				last = msg
				f.lastErr.Store(&msg)
				f.log.Warn("cannot read the issuer from Vault; agent JWTs are refused until it is read, retrying each second",
					"path", f.opts.mount+"/"+contract.PathOpenIDDiscovery, "hint", issuerHint(err), "error", oneLine(err))
			} else {
				f.log.Debug("issuer still unreadable", "error", err)
			}
			sleep(ctx, time.Second)
		}
	}
	f.keys.fetch(ctx, "start")
}

// issuerHint says what to check when the discovery document cannot be read.
// The document needs no token, so a 403 or 404 is Vault saying no keybroker
// mount answers at the configured path.
func issuerHint(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) && (re.StatusCode == http.StatusForbidden || re.StatusCode == http.StatusNotFound) {
		return "no keybroker plugin answers at this path: check vault { mount } in this configuration against `vault secrets list` on Vault"
	}
	return "Vault may be out of reach; issuer in this configuration skips discovery"
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
	f.keys.hints.Store(newJWTHints(f.opts.audiences, iss))
	f.keys.verifier.Store(v)
	f.issuer.Store(&iss)
	f.lastErr.Store(nil)
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
