package backend

import (
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
