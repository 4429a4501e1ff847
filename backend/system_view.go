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
// when an operator tunes the mount, and a mint within a second of a tune
// that lowered max_lease_ttl is still bounded by it: Vault caps every
// lease at the mount's max as it registers it, and a credential's lease
// that ends before its exp revokes it (revokeJWTLease, the key's Revoke).
// Only mints read this view; role writes and renewals ask Vault.
type mountTTLs struct {
	logical.SystemView
	mu         sync.Mutex
	at         time.Time
	def, maxTT time.Duration
}

func (v *mountTTLs) read() (def, maxTTL time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if now := time.Now(); v.at.IsZero() || now.Sub(v.at) >= mountTTLEvery {
		v.def, v.maxTT, v.at = v.SystemView.DefaultLeaseTTL(), v.SystemView.MaxLeaseTTL(), now
	}
	return v.def, v.maxTT
}

func (v *mountTTLs) DefaultLeaseTTL() time.Duration { def, _ := v.read(); return def }

func (v *mountTTLs) MaxLeaseTTL() time.Duration { _, m := v.read(); return m }
