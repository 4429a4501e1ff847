// Package backend is keybroker's Vault secrets engine: it mints API keys (and,
// later, agent JWTs) from roles, verifies them, and publishes a revocation
// feed that verifiers follow.
package backend

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/internal/version"
)

// tidyInterval is how often the periodic function removes expired keys and
// revocation entries. Vault calls PeriodicFunc about once a minute; a full
// scan of every key that often would be wasted work.
const tidyInterval = 10 * time.Minute

type backend struct {
	*framework.Backend

	// revocationMu serialises revocations so that feed sequence numbers are
	// handed out in commit order: a reader at cursor N never misses an entry
	// committed later with a smaller number. Writes only happen on the active
	// node (standbys forward them), so a process-local lock is enough.
	revocationMu sync.Mutex

	tidyMu       sync.Mutex
	lastTidy     time.Time
	tidyDisabled bool // set by tests that drive tidy by hand
}

// Factory is the plugin's logical.Factory.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, fmt.Errorf("setting up keybroker backend: %w", err)
	}
	return b, nil
}

func newBackend() *backend {
	b := &backend{}
	b.Backend = &framework.Backend{
		Help:           backendHelp,
		BackendType:    logical.TypeLogical,
		RunningVersion: version.Version,
		Paths: framework.PathAppend(
			pathRoles(b),
			pathKeys(b),
			[]*framework.Path{
				pathVerify(b),
				pathRevocations(b),
				pathTidy(b),
			},
		),
		Secrets:      []*framework.Secret{secretAPIKey(b)},
		PeriodicFunc: b.periodic,
	}
	return b
}

// periodic runs tidy at most once per tidyInterval, and only where storage is
// writable (the active node of the primary cluster).
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	b.tidyMu.Lock()
	due := !b.tidyDisabled && time.Since(b.lastTidy) >= tidyInterval
	if due {
		b.lastTidy = time.Now()
	}
	b.tidyMu.Unlock()
	if !due {
		return nil
	}
	_, err := b.tidy(ctx, req.Storage, time.Now())
	return err
}

const backendHelp = `
The keybroker secrets engine mints short-lived, scoped credentials for services
and AI agents, and verifies them.

An operator defines roles (keybroker/roles/<name>) that fix what a credential
may carry: scopes, tenant, allowed source CIDRs and lifetime. Callers allowed by
Vault policy mint API keys from a role (keybroker/keys/<role>). Keys are Vault
leases: they expire with their TTL and are revoked with "vault lease revoke" or
with the Vault token that minted them. Only a SHA-256 hash of each key is stored.

Verifiers check credentials with keybroker/verify and follow revocations
incrementally through keybroker/revocations.
`
