package backend

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/internal/version"
)

// tidyInterval is how often the periodic function removes expired keys and
// revocation entries. Vault calls PeriodicFunc about once a minute; a full
// scan of every key that often would be wasted work.
const tidyInterval = 10 * time.Minute

// operationPrefixKeybroker starts the operationId of every operation in
// Vault's OpenAPI document: keybroker-mint-api-key, keybroker-read-role.
const operationPrefixKeybroker = "keybroker"

// backend is the plugin as Vault sees it: the paths (handlers are its
// methods, as the framework wants) over components that own their state
// and are handed storage, a logger and the time by each call.
//
// Locks, outermost first, as the handlers take them: a role's lock (key
// mints, rotation, role writes and suspensions); an approval request's;
// refreshMu; a meter's, then its tenant's; the revocation feed's.
// Renewing or rotating a key releases the revocation lock before taking a
// meter's, since changing a budget takes them the other way. The approval
// index's lock, the signer's and the key-record feed's are leaves: no
// other lock is taken while one of them is held.
type backend struct {
	*framework.Backend

	// revocations is the revocation feed; its lock serialises every
	// revocation with the change it records.
	revocations *revocationFeed
	// revoker revokes keys and tokens through the two feeds.
	revoker revoker
	// keyRecords is the key-record feed: every change to a key, a tenant
	// ceiling or a role's suspension is added to it once stored.
	keyRecords *keyRecordFeed
	// signer holds the parsed signing ring; its lock serialises rotation
	// and config writes.
	signer signer
	// meters holds the locks of budgets, tenant ceilings, rate windows and
	// key use.
	meters *meters
	// approvals holds the locks of approval requests and of the roles'
	// indexes of live ones.
	approvals *approvals
	// roleLocks serialise changes to one role (roleLocks.of).
	roleLocks roleLocks
	// roles and configs hold the roles and the config as stored, for the
	// mints and verifications that read them on every request
	// (storedCache says how they stay true across a cluster). Read a role
	// with b.roles.get; a writer reads storage (getRole) and forgets.
	roles   *storedCache[role]
	configs *storedCache[config]
	// keyIDs hands out key_ids no key has (keyIDLedger).
	keyIDs *keyIDLedger
	// refreshMu serialises refresh-token exchanges, so a token cannot be
	// spent twice by concurrent requests, and the revocation of refresh
	// families.
	refreshMu sync.Mutex
	// tidySchedule says when periodic tidy is due.
	tidySchedule tidySchedule
	// sys is Vault's system view as Vault handed it; b.System() is the
	// framework's (framedView).
	sys logical.SystemView
	// mountTTLs is the mount's lease TTLs as mints read them.
	mountTTLs *mountTTLs
}

// Factory is the plugin's logical.Factory.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend()
	framed := *conf
	b.sys, framed.System = conf.System, &framedView{SystemView: conf.System}
	b.mountTTLs = &mountTTLs{SystemView: conf.System}
	b.roles.off = conf.System.CachingDisabled()
	b.configs.off = b.roles.off
	if err := b.Setup(ctx, &framed); err != nil {
		return nil, fmt.Errorf("setting up keybroker backend: %w", err)
	}
	return b, nil
}

func newBackend() *backend {
	b := &backend{roleLocks: locksutil.CreateLocks(), revocations: &revocationFeed{},
		keyRecords: newKeyRecordFeed(), meters: newMeters(), approvals: newApprovals(),
		roles: newStoredCache(getRole, cloneRole), configs: newStoredCache(storedConfig, cloneConfig), keyIDs: newKeyIDLedger(time.Now())}
	b.revoker = revoker{feed: b.revocations, keys: b.keyRecords}
	b.Backend = &framework.Backend{
		Help:           backendHelp,
		BackendType:    logical.TypeLogical,
		RunningVersion: version.Version,
		PathsSpecial: &logical.Paths{
			// Verifiers fetch keys and discovery without a Vault token, as
			// from any OIDC provider.
			Unauthenticated: []string{"jwks", ".well-known/*"},
			SealWrapStorage: []string{signingKeysPath},
		},
		Paths: framework.PathAppend(
			pathRoles(b),
			pathKeys(b),
			pathJWKS(b),
			pathBudget(b),
			pathTenants(b),
			pathKeyRecords(b),
			pathApprovals(b),
			pathKeyLifecycle(b),
			[]*framework.Path{pathRoleSuspend(b)},
			[]*framework.Path{pathKeyUsage(b)},
			[]*framework.Path{
				pathConfig(b),
				pathRotate(b),
				pathRate(b),
				pathRefresh(b),
				pathExchange(b),
				pathToken(b),
				pathVerify(b),
				pathRevoke(b),
				pathRevocations(b),
				pathTidy(b),
			},
		),
		Secrets:        []*framework.Secret{secretAPIKey(b), secretJWT(b)},
		PeriodicFunc:   b.periodic,
		InitializeFunc: b.initialize,
		// A held feed read must not hold up an unmount or a seal.
		Clean: func(context.Context) {
			b.revocations.wake.wake()
			b.keyRecords.changes.wake.wake()
		},
		Invalidate: b.invalidate,
	}
	b.guardPaths(b.Backend.Paths)
	b.guardSecrets(b.Backend.Secrets)
	return b
}

// initialize creates the first signing key when the mount starts, where
// storage is writable, so the JWKS is there before the first token, and
// starts a new epoch of the revocation feed.
func (b *backend) initialize(ctx context.Context, req *logical.InitializationRequest) error {
	b.keyRecords.changes.forgetIndex() // storage may have been restored
	if !b.writeSafe() {
		return nil
	}
	// This node starts to write now (keyIDLedger).
	b.keyIDs.distrust(time.Now())
	if err := b.revocations.newEpoch(ctx, req.Storage); err != nil {
		return err
	}
	// Roles suspended under an older plugin first: until then their keys
	// would pass.
	if err := b.migrateRoleSuspensions(ctx, req.Storage); err != nil {
		return err
	}
	// Approval requests of an older plugin move under their role now, not
	// at the next tidy: until then no approvals/<role>/ path reaches them.
	if err := b.approvals.tidy(ctx, req.Storage, time.Now(), b.Logger()); err != nil {
		return err
	}
	_, err := b.signer.current(ctx, req.Storage, b.Logger())
	return err
}

// invalidate drops what this node holds in memory of a storage entry
// another node changed (a performance standby, a replicated cluster):
// signing state, the config, a role.
func (b *backend) invalidate(_ context.Context, key string) {
	switch {
	case key == signingKeysPath:
		b.signer.reset()
	case key == configPath:
		b.signer.reset()
		b.configs.forget("")
	case strings.HasPrefix(key, rolePrefix):
		b.roles.forget(strings.TrimPrefix(key, rolePrefix))
	case strings.HasPrefix(key, keyPrefix):
		b.keyIDs.distrust(time.Now()) // another node mints keys
		// and changed this one: its record is read again (keyIndex).
		b.keyRecords.add(strings.TrimPrefix(key, keyPrefix))
	}
}

// writeSafe is the framework's WriteSafeReplicationState asked of Vault
// now, not of the framework's view, which may be a second old
// (framedView): whether this node may write decides whether it does.
func (b *backend) writeSafe() bool {
	s := b.sys
	if s == nil {
		s = b.System()
	}
	state := s.ReplicationState()
	return (s.LocalMount() || !state.HasState(consts.ReplicationPerformanceSecondary)) &&
		!state.HasState(consts.ReplicationDRSecondary) &&
		!state.HasState(consts.ReplicationPerformanceStandby)
}

// periodic rotates the signing key when it is due and runs tidy at most once
// per tidyInterval, only where storage is writable (the active node of the
// primary cluster). What it drops from memory it drops on every node: a
// standby's invalidations fill its record index too.
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	b.keyRecords.dropIdleListing(time.Now())
	if !b.writeSafe() {
		return nil
	}
	if err := b.signer.rotateIfDue(ctx, req.Storage, time.Now(), b.Logger()); err != nil {
		return fmt.Errorf("rotating signing key: %w", err)
	}
	if err := b.revoker.revokeRotated(ctx, req.Storage, time.Now()); err != nil {
		return fmt.Errorf("revoking rotated keys: %w", err)
	}
	due, err := b.tidySchedule.claim(ctx, req.Storage, time.Now())
	if err != nil || !due {
		return err
	}
	b.Logger().Info("periodic tidy running")
	_, err = b.tidy(ctx, req.Storage, time.Now())
	return err
}

// tidySchedule keeps periodic tidy to once per tidyInterval across the
// cluster; when it last ran is in storage (lastTidyPath).
type tidySchedule struct {
	mu       sync.Mutex
	disabled bool // set by tests that drive tidy by hand
}

// claim says whether periodic tidy is due, and if so records that it runs
// now, in storage: a node that becomes active goes on from there instead
// of tidying at once.
func (ts *tidySchedule) claim(ctx context.Context, s logical.Storage, now time.Time) (bool, error) {
	if ts.disabled {
		return false, nil
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	type last struct {
		At time.Time `json:"at"`
	}
	l, err := getJSON[last](ctx, s, lastTidyPath)
	if err != nil || (l != nil && now.Sub(l.At) < tidyInterval) {
		return false, err
	}
	return true, putJSON(ctx, s, lastTidyPath, &last{At: now})
}

const backendHelp = `
The keybroker secrets engine mints short-lived, scoped credentials for services
and AI agents, and verifies them.

An operator defines roles (keybroker/roles/<name>) that fix what a credential
may carry: scopes, audiences, tenant, allowed source CIDRs, lifetime, budgets
and rate limits. Callers allowed by Vault policy mint API keys
(keybroker/keys/<role>) and agent JWTs (keybroker/token/<role>, refreshed at
token/refresh, exchanged to act for another at token/exchange). Keys and
tokens are Vault leases: they expire with their TTL and are revoked with
"vault lease revoke" or with the Vault token that minted them. Only a SHA-256
hash of each key is stored. Every change to a key is under
keybroker/keys/<role>/id/<key_id> (rotate, suspend, resume, delete), a
credential's budget under keybroker/budget/<role>/<id>, and approval
requests for a role's risky scopes under keybroker/approvals/<role>/<id>, so
that a policy can grant one role and no other.

Verifiers check credentials with keybroker/verify, follow revocations and
key records through keybroker/revocations and keybroker/key-records, and
account spend through keybroker/budget/reserve and budget/report.
`
