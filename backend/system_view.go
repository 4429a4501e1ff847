package backend

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// replicationStateEvery is how long the framework's view of the
// replication state may be old.
const replicationStateEvery = time.Second

// framedView is the system view the framework is handed. The framework
// asks ReplicationState on every request, a gRPC round trip to Vault from
// a plugin, only to honour an operation's ForwardPerformanceStandby and
// ForwardPerformanceSecondary, which no keybroker operation sets: the
// answer is unused, and a mint paid one round trip of four for it. Here it
// is asked at most once per replicationStateEvery; everything else goes to
// Vault's view as it is. Where the state decides a write (initialize,
// periodic), the backend asks Vault itself (backend.writeSafe).
type framedView struct {
	logical.SystemView
	state   atomic.Uint32
	fetched atomic.Int64 // unix nanoseconds; 0: never
}

func (v *framedView) ReplicationState() consts.ReplicationState {
	now := time.Now().UnixNano()
	if at := v.fetched.Load(); at != 0 && now-at < int64(replicationStateEvery) {
		return consts.ReplicationState(v.state.Load())
	}
	s := v.SystemView.ReplicationState()
	v.state.Store(uint32(s))
	v.fetched.Store(now)
	return s
}

// mountTTLEvery is how long a mint may use the mount's lease TTLs it read.
const mountTTLEvery = time.Second

// mountTTLs answers the mount's default and max lease TTL from a read at
// most mountTTLEvery old: a mint's lifetime (mintTTL) asked Vault for the
// max on every mint, one round trip of three for a key. They change only
// when an operator tunes the mount, and a leased credential minted within
// a second of a tune that lowered max_lease_ttl is still bounded by it:
// Vault caps every lease at the mount's max as it registers it, and a
// credential's lease that ends before its exp revokes it (revokeJWTLease,
// the key's Revoke). A key of an orphan role has no lease for Vault to
// cap, so its mint asks Vault itself (mintTTL). Only mints read this view;
// role writes and renewals ask Vault.
//
// Vault's view in a plugin answers 0 when its call to Vault fails (the
// SDK's gRPC client swallows the error): a 0 is never kept. The last good
// read answers instead, and the next mint asks again; with none, the 0 is
// answered and the mint refuses it (mintTTL).
type mountTTLs struct {
	logical.SystemView
	mu sync.Mutex
	// at is when def and maxTT were last both read good; zero: never.
	at         time.Time
	def, maxTT time.Duration
	// reading: a read of Vault is under way; meanwhile the others answer
	// the last good one rather than ask too.
	reading bool
}

func (v *mountTTLs) read() (def, maxTTL time.Duration) {
	v.mu.Lock()
	if !v.at.IsZero() && (v.reading || time.Since(v.at) < mountTTLEvery) {
		def, maxTTL = v.def, v.maxTT
		v.mu.Unlock()
		return def, maxTTL
	}
	v.reading = true
	v.mu.Unlock()
	// Not under the lock: a slow Vault holds up only the mints that have
	// nothing good to answer.
	d, m := v.SystemView.DefaultLeaseTTL(), v.SystemView.MaxLeaseTTL()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reading = false
	if d > 0 {
		v.def = d
	}
	if m > 0 {
		v.maxTT = m
	}
	if d > 0 && m > 0 {
		v.at = time.Now()
	}
	return v.def, v.maxTT
}

func (v *mountTTLs) DefaultLeaseTTL() time.Duration { def, _ := v.read(); return def }

func (v *mountTTLs) MaxLeaseTTL() time.Duration { _, m := v.read(); return m }
