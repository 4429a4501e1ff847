package sidecar

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// packRecords is a packed snapshot page of recs, as the plugin makes one:
// each shape listed once, the records in key_id order.
func packRecords(tb testing.TB, recs []contract.KeyRecord) string {
	tb.Helper()
	recs = slices.Clone(recs)
	slices.SortFunc(recs, func(a, b contract.KeyRecord) int { return strings.Compare(a.KeyID, b.KeyID) })
	var p contract.KeyRecordPacker
	shapes := map[string]int{}
	for _, r := range recs {
		sh, ok := shapes[shapeKey(&r)]
		if !ok {
			sh = p.AddShape(&contract.KeyShape{Role: r.Role, Tenant: r.Tenant, Scopes: r.Scopes, BoundCIDRs: r.BoundCIDRs,
				JKT: r.JKT, Budget: r.Budget, RateLimit: r.RateLimit})
			shapes[shapeKey(&r)] = sh
		}
		pr := contract.PackedKeyRecord{KeyID: r.KeyID, Revoked: r.Revoked, Suspended: r.Suspended, ReplacedBy: r.ReplacedBy, Shape: sh}
		if _, err := hex.Decode(pr.Hash[:], []byte(r.Hash)); err != nil {
			tb.Fatal(err)
		}
		exp, err := time.Parse(time.RFC3339, r.ExpiresAt)
		if err != nil {
			tb.Fatal(err)
		}
		pr.ExpiresAt = exp.Unix()
		if err := p.AddRecord(&pr); err != nil {
			tb.Fatal(err)
		}
	}
	return base64.StdEncoding.EncodeToString(p.Bytes())
}

// variedRecords are records of every kind a replica tells apart.
func variedRecords(tb testing.TB) []contract.KeyRecord {
	now := time.Now()
	var recs []contract.KeyRecord
	for i := 0; i < 8; i++ {
		_, r := testKey(tb, now.Add(time.Duration(-i)*time.Second), "web", "acme", "read")
		recs = append(recs, r)
	}
	recs[1].BoundCIDRs = []string{"10.0.0.0/8", "fd00::/8"}
	recs[2].Revoked = true
	recs[3].Suspended, recs[3].ReplacedBy = true, recs[4].KeyID
	recs[4].RateLimit = &jwtverify.RateLimit{PerSecond: 2.5, Burst: 3}
	recs[5].JKT = strings.Repeat("A", 43)
	recs[6].Budget = &jwtverify.Budget{Units: 7, Period: 60, MaxCost: 2}
	recs[7].Role, recs[7].Tenant, recs[7].Scopes = "other", "", nil
	return recs
}

// A packed page leaves the replica as the same records in JSON do, and its
// shapes are shared with the records the changes bring in JSON.
func TestReplicaAppliesPackedPages(t *testing.T) {
	recs := variedRecords(t)
	fromJSON, fromPacked := newKeyReplica(), newKeyReplica()
	if bad := fromJSON.apply(recs, 1); bad != 0 {
		t.Fatalf("JSON: %d bad", bad)
	}
	if bad, err := fromPacked.applyPacked(packRecords(t, recs), 1); bad != 0 || err != nil {
		t.Fatalf("packed: %d bad, %v", bad, err)
	}
	if fromJSON.size() != len(recs) || fromPacked.size() != len(recs) || len(fromPacked.shapes) != len(fromJSON.shapes) {
		t.Fatalf("%d and %d records, %d and %d shapes", fromJSON.size(), fromPacked.size(), len(fromJSON.shapes), len(fromPacked.shapes))
	}
	for _, r := range recs {
		a, am, as := fromJSON.lookup(r.KeyID)
		b, bm, bs := fromPacked.lookup(r.KeyID)
		if !reflect.DeepEqual(a, b) || am != bm || as != bs {
			t.Fatalf("record %s:\nJSON   %+v %+v\npacked %+v %+v", r.KeyID, a, a.shape, b, b.shape)
		}
	}
	// A change to one key, in JSON, shares the packed page's shape.
	shapes := len(fromPacked.shapes)
	fromPacked.apply(recs[:1], 1)
	if len(fromPacked.shapes) != shapes {
		t.Fatalf("a JSON change made a shape of its own: %d shapes, was %d", len(fromPacked.shapes), shapes)
	}
}

// A record the sidecar cannot read, or of a shape it cannot, removes the
// key it names, as in JSON.
func TestReplicaPackedBadRecords(t *testing.T) {
	recs := variedRecords(t)
	r := newKeyReplica()
	r.apply(recs, 1)
	bad := append([]contract.KeyRecord{}, recs[:3]...)
	bad[0].BoundCIDRs = []string{"not a prefix"}
	bad[1].JKT = "short"
	if n, err := r.applyPacked(packRecords(t, bad), 1); n != 2 || err != nil {
		t.Fatalf("%d bad, %v; want 2", n, err)
	}
	for i, want := range []bool{false, false, true} {
		if rec, _, _ := r.lookup(recs[i].KeyID); (rec != nil) != want {
			t.Errorf("record %d held = %v, want %v", i, rec != nil, want)
		}
	}
}

// A snapshot page the sidecar cannot read (damaged, or of a format it
// does not know) fails the sync: the replica is not used, keys go to
// Vault, and the snapshot is read again.
func TestKeyRecordSyncRefusesUnreadablePages(t *testing.T) {
	recs := variedRecords(t)
	good := packRecords(t, recs)
	raw, _ := base64.StdEncoding.DecodeString(good)
	for name, page := range map[string]*contract.KeyRecordsPage{
		"not base64":      {Format: contract.FormatPacked1, Packed: "!!"},
		"cut short":       {Format: contract.FormatPacked1, Packed: base64.StdEncoding.EncodeToString(raw[:len(raw)-1])},
		"another version": {Format: contract.FormatPacked1, Packed: base64.StdEncoding.EncodeToString(append([]byte{9}, raw[1:]...))},
		"unknown format":  {Format: "packed2", Packed: good},
	} {
		t.Run(name, func(t *testing.T) {
			page.Epoch = "e1"
			src := &scriptedKeyRecords{answers: []scriptedKeyAnswer{{page: page}}}
			f := newKeyRecordFeed(keyRecordOptions{mount: "keybroker", poll: time.Millisecond}, src, keyRecordMetrics{
				vaultCalls:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls"}, []string{"op", "result"}),
				syncSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sync"}), resyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "resyncs"}),
			}, hclog.NewNullLogger())
			src.feed = f
			if _, _, err := f.sync(context.Background()); err == nil {
				t.Fatal("a sync of an unreadable page succeeded")
			}
			if f.replica.synced.Load() || f.replica.usable(time.Now(), time.Hour) {
				t.Fatal("the replica is usable after a failed sync")
			}
		})
	}
	// And the same records, readable, sync.
	src := &scriptedKeyRecords{answers: []scriptedKeyAnswer{{page: &contract.KeyRecordsPage{Epoch: "e1", Format: contract.FormatPacked1, Packed: good}}}}
	f := newKeyRecordFeed(keyRecordOptions{mount: "keybroker", poll: time.Millisecond}, src, keyRecordMetrics{
		vaultCalls:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls"}, []string{"op", "result"}),
		syncSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sync"}), resyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "resyncs"}),
	}, hclog.NewNullLogger())
	src.feed = f
	if _, _, err := f.sync(context.Background()); err != nil || f.replica.size() != len(recs) {
		t.Fatalf("a readable packed page: %v, %d records", err, f.replica.size())
	}
}
