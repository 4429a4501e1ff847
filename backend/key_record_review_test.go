package backend

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// On a node that may not write (a performance standby or secondary),
// invalidations add an index entry per key written elsewhere, and the
// periodic function returns before pruning: the entries are never
// dropped.
func TestReviewStandbyIndexNeverPruned(t *testing.T) {
	sys := logical.TestSystemView()
	sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
	e := newTestEnvWith(t, sys)
	for i := 0; i < 1000; i++ {
		e.b.invalidate(context.Background(), keyPrefix+fmt.Sprintf("xai%09d", i))
	}
	c := e.b.keyRecords.changes
	c.mu.Lock()
	// As if a prune had already passed these changes, long ago: the
	// next prune drops them.
	c.index.horizon, c.index.pruned = c.last, time.Now().Add(-time.Hour)
	c.mu.Unlock()
	if err := e.b.periodic(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	n := len(c.index.recs)
	c.mu.Unlock()
	if n != 0 {
		t.Fatalf("after the periodic function the standby's index still holds %d entries of keys written elsewhere", n)
	}
}
