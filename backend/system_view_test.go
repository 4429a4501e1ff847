package backend

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// The mount's TTLs and the replication state are asked of Vault at most
// once per their period, and a change is seen once it is over.
func TestSystemViewReadsAtMostOncePerPeriod(t *testing.T) {
	static := &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 2 * time.Hour}
	sys := &countingSystemView{SystemView: static, calls: map[string]int{}}
	ttls := &mountTTLs{SystemView: sys}
	for range 3 {
		if ttls.MaxLeaseTTL() != 2*time.Hour || ttls.DefaultLeaseTTL() != time.Hour {
			t.Fatal("mount TTLs")
		}
	}
	if sys.calls["MaxLeaseTTL"] != 1 || sys.calls["DefaultLeaseTTL"] != 1 {
		t.Fatalf("three reads: %v; want one of each", sys.calls)
	}
	static.MaxLeaseTTLVal = time.Hour // a tune
	ttls.at = ttls.at.Add(-mountTTLEvery)
	if ttls.MaxLeaseTTL() != time.Hour {
		t.Fatal("a tune not seen once the period is over")
	}

	framed := &framedView{SystemView: sys}
	for range 3 {
		framed.ReplicationState()
	}
	if sys.calls["ReplicationState"] != 1 {
		t.Fatalf("three reads of the replication state: %v; want one", sys.calls)
	}
	static.ReplicationStateVal = consts.ReplicationPerformanceStandby
	framed.fetched.Store(time.Now().Add(-replicationStateEvery).UnixNano())
	if !framed.ReplicationState().HasState(consts.ReplicationPerformanceStandby) {
		t.Fatal("a new replication state not seen once the period is over")
	}
}

// failingSystemView answers the mount's max (or default) lease TTL 0 while
// told to, as Vault's view in a plugin does when its call to Vault fails
// (the gRPC client swallows the error).
type failingSystemView struct {
	logical.SystemView
	failMax, failDef atomic.Bool
}

func (v *failingSystemView) MaxLeaseTTL() time.Duration {
	if v.failMax.Load() {
		return 0
	}
	return v.SystemView.MaxLeaseTTL()
}

func (v *failingSystemView) DefaultLeaseTTL() time.Duration {
	if v.failDef.Load() {
		return 0
	}
	return v.SystemView.DefaultLeaseTTL()
}

// A failed read of the mount's TTLs (0) fails the one mint that made it,
// as an internal error rather than a key that is expired as answered, and
// is not kept: the next mint asks Vault again.
func TestMountTTLsFailedReadNotKept(t *testing.T) {
	for _, which := range []string{"max", "default"} {
		t.Run(which, func(t *testing.T) {
			e := newTestEnv(t)
			e.createRole("web", map[string]interface{}{"scopes": "read"})
			failing := &failingSystemView{SystemView: e.b.mountTTLs.SystemView}
			failing.failMax.Store(which == "max")
			failing.failDef.Store(which == "default")
			e.b.mountTTLs = &mountTTLs{SystemView: failing}
			if resp, err := e.req("e", logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"}); err == nil {
				t.Fatalf("the mint whose read of the mount failed: %v; want an internal error", resp)
			}
			failing.failMax.Store(false)
			failing.failDef.Store(false)
			resp, err := e.req("e", logical.UpdateOperation, "keys/web", map[string]interface{}{"name": "k"})
			if err != nil || resp.IsError() {
				t.Fatalf("a mint after Vault answered again: %v %v: the failed read was kept", resp, err)
			}
			if resp.Secret.TTL <= 0 {
				t.Fatalf("a mint after Vault answered again: lease ttl %s", resp.Secret.TTL)
			}
		})
	}
}

// Once a read was good, a failed one answers the last good read, and the
// next asks Vault again.
func TestMountTTLsFailedReadAnswersLastGood(t *testing.T) {
	static := &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 2 * time.Hour}
	sys := &countingSystemView{SystemView: static, calls: map[string]int{}}
	ttls := &mountTTLs{SystemView: sys}
	ttls.MaxLeaseTTL()
	static.MaxLeaseTTLVal, static.DefaultLeaseTTLVal = 0, 0 // the calls fail
	ttls.at = ttls.at.Add(-mountTTLEvery)
	if ttls.MaxLeaseTTL() != 2*time.Hour || ttls.DefaultLeaseTTL() != time.Hour {
		t.Fatalf("after a failed read: %s %s; want the last good read", ttls.MaxLeaseTTL(), ttls.DefaultLeaseTTL())
	}
	if sys.calls["MaxLeaseTTL"] != 3 {
		t.Fatalf("reads after a failed one: %v; want each to ask Vault again", sys.calls)
	}
}

// A key of an orphan role has no lease for Vault to cap at the mount's
// max_lease_ttl: its mint reads the max from Vault, so a key minted right
// after a tune that lowered it does not outlive it.
func TestOrphanKeyCappedAtMountMaxJustTuned(t *testing.T) {
	sys := logical.TestSystemView()
	sys.MaxLeaseTTLVal = 4 * time.Hour
	e := newTestEnvWith(t, sys)
	e.createRole("web", map[string]interface{}{"scopes": "read", "orphan": true, "max_ttl": "4h"})
	e.createRole("leased", map[string]interface{}{"scopes": "read", "max_ttl": "4h"})
	e.mint("leased", nil)          // the mount's TTLs read, and kept
	sys.MaxLeaseTTLVal = time.Hour // an operator tunes the mount down
	resp := e.mint("web", map[string]interface{}{"ttl": "4h"})
	exp, err := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Secret != nil || time.Until(exp) > time.Hour+time.Minute {
		t.Fatalf("an orphan key minted right after the tune expires in %s (lease %v); want at most the mount's max_lease_ttl (1h)", time.Until(exp).Round(time.Minute), resp.Secret)
	}
}
