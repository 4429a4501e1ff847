package sidecar

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/contract"
)

// scriptedKeyRecords stands in for Vault's key-record feed: each read,
// snapshot or changes, gets the next answer, noting what was asked and the
// replica's state then; with none left it ends the follow.
type scriptedKeyRecords struct {
	feed    *keyRecordFeed
	answers []scriptedKeyAnswer
	reads   []scriptedKeyRead
	done    context.CancelFunc
}

type scriptedKeyAnswer struct {
	page *contract.KeyRecordsPage
	err  error
}

type scriptedKeyRead struct {
	snapshot       bool
	after          string // after_id, or the cursor
	wait           time.Duration
	records        int
	synced, known  bool
	failing, wrong bool // wrong: the filter was not passed
}

func (s *scriptedKeyRecords) next(ctx context.Context, r scriptedKeyRead, f keyFilter) (*contract.KeyRecordsPage, error) {
	r.records, r.synced, r.known, r.failing = s.feed.replica.size(), s.feed.replica.synced.Load(), s.feed.known(), s.feed.replica.failing.Load()
	r.wrong = !f.passes("web", "") || f.passes("other", "")
	s.reads = append(s.reads, r)
	if len(s.answers) == 0 {
		s.done()
		return nil, ctx.Err()
	}
	a := s.answers[0]
	s.answers = s.answers[1:]
	return a.page, a.err
}

func (s *scriptedKeyRecords) keyRecordsSnapshot(ctx context.Context, afterID string, f keyFilter) (*contract.KeyRecordsPage, error) {
	return s.next(ctx, scriptedKeyRead{snapshot: true, after: afterID}, f)
}

func (s *scriptedKeyRecords) keyRecordChanges(ctx context.Context, after uint64, epoch string, wait time.Duration, f keyFilter) (*contract.KeyRecordsPage, error) {
	return s.next(ctx, scriptedKeyRead{after: epoch + "/" + strconv.FormatUint(after, 10), wait: wait}, f)
}

// The key-record feed is a component: handed a source, it reads the
// snapshot page by page, then the changes after its cursor, at once until
// one answers and long-polled after; a failed read marks the replica
// failing, and a resync reads the snapshot again. No Sidecar, no Vault.
func TestKeyRecordFeedFollowsItsSource(t *testing.T) {
	_, rec1 := testKey(t, time.Now(), "web", "")
	_, rec2 := testKey(t, time.Now(), "web", "")
	const wait = 40 * time.Millisecond
	src := &scriptedKeyRecords{answers: []scriptedKeyAnswer{
		{page: &contract.KeyRecordsPage{Epoch: "e1", Cursor: 5, Records: []contract.KeyRecord{rec1}, More: true, NextID: rec1.KeyID}},
		{page: &contract.KeyRecordsPage{Epoch: "e1"}},
		{err: &api.ResponseError{StatusCode: http.StatusServiceUnavailable}},
		{page: &contract.KeyRecordsPage{Epoch: "e1", Next: 6, Records: []contract.KeyRecord{rec2}}},
		{page: &contract.KeyRecordsPage{Epoch: "e1", Resync: true}},
	}}
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls"}, []string{"op", "result"})
	resyncs := prometheus.NewCounter(prometheus.CounterOpts{Name: "resyncs"})
	f := newKeyRecordFeed(keyRecordOptions{mount: "keybroker", filter: keyFilter{roles: []string{"web"}}, wait: wait, poll: time.Millisecond}, src,
		keyRecordMetrics{vaultCalls: calls, syncSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sync"}), resyncs: resyncs}, hclog.NewNullLogger())
	src.feed = f
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src.done = cancel
	f.follow(ctx)

	want := []scriptedKeyRead{
		{snapshot: true, after: ""},
		{snapshot: true, after: rec1.KeyID, records: 1},
		{after: "e1/5", records: 1},                // the changes since the snapshot, at once
		{after: "e1/5", records: 1, failing: true}, // at once again after a failure
		{after: "e1/6", wait: wait, records: 2, synced: true, known: true},
		{snapshot: true, after: "", records: 2, synced: true, known: true}, // resync: the records held keep serving
	}
	if len(src.reads) != len(want) {
		t.Fatalf("reads %+v, want %+v", src.reads, want)
	}
	for i := range want {
		if src.reads[i] != want[i] {
			t.Errorf("read %d: %+v, want %+v", i, src.reads[i], want[i])
		}
	}
	if n := testutil.ToFloat64(resyncs); n != 1 {
		t.Errorf("resyncs = %v, want 1", n)
	}
	if n := testutil.ToFloat64(calls.WithLabelValues("key_records", "error")); n != 1 {
		t.Errorf("failed change reads = %v, want 1", n)
	}
	if f.replica.pollUntil.Load() != 0 {
		t.Error("a poll still vouches for the replica after the follow ended")
	}
}
