package backend

import (
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
