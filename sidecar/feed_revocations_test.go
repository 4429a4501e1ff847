package sidecar

import (
	"context"
	"net/http"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/contract"
)

// scriptedRevocations stands in for Vault: it answers each read with the
// next of its answers, noting what was asked and what the feed knew then,
// and ends the follow when it has none left.
type scriptedRevocations struct {
	feed    *revocationFeed
	answers []scriptedAnswer
	reads   []scriptedRead
	done    context.CancelFunc
}

type scriptedAnswer struct {
	page *contract.FeedPage
	err  error
}

type scriptedRead struct {
	after  uint64
	wait   time.Duration
	known  bool
	a, b   bool // whether the feed held ids a and b as revoked
	status string
}

func (s *scriptedRevocations) revocations(ctx context.Context, after uint64, wait time.Duration) (*contract.FeedPage, error) {
	state, _ := s.feed.health.status()
	s.reads = append(s.reads, scriptedRead{after, wait, s.feed.known(), s.feed.has("a"), s.feed.has("b"), state})
	if len(s.answers) == 0 {
		s.done()
		return nil, ctx.Err()
	}
	a := s.answers[0]
	s.answers = s.answers[1:]
	return a.page, a.err
}

// The revocation feed is a component: handed a source, it reads from 0 at
// once, then long-polls after its cursor; a 403 after a read makes it
// unknown until it is read again, and a new epoch reads it again from 0
// while what it held stays revoked. No Sidecar, no Vault.
func TestRevocationFeedFollowsItsSource(t *testing.T) {
	exp := time.Now().Add(time.Hour).Format(time.RFC3339)
	const wait = 40 * time.Millisecond
	src := &scriptedRevocations{answers: []scriptedAnswer{
		{page: &contract.FeedPage{Epoch: "e1", Revocations: []contract.FeedEntry{{ID: "a", ExpiresAt: exp}}, Next: 1, Last: 1}},
		{err: &api.ResponseError{StatusCode: http.StatusForbidden}},
		{page: &contract.FeedPage{Epoch: "e1", Next: 1, Last: 1}},
		{page: &contract.FeedPage{Epoch: "e2"}}, // storage went back
		{page: &contract.FeedPage{Epoch: "e2", Revocations: []contract.FeedEntry{{ID: "b", ExpiresAt: exp}}, Next: 1, Last: 1}},
	}}
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls"}, []string{"op", "result"})
	restarts := prometheus.NewCounter(prometheus.CounterOpts{Name: "restarts"})
	f := newRevocationFeed(revocationOptions{mount: "keybroker", wait: wait, poll: time.Millisecond}, src,
		revocationMetrics{vaultCalls: calls, restarts: restarts}, hclog.NewNullLogger())
	src.feed = f
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src.done = cancel
	f.follow(ctx)

	want := []scriptedRead{
		{0, 0, false, false, false, feedStarting},    // the first read answers at once
		{1, wait, true, true, false, feedOK},         // then long polls after the cursor
		{1, wait, false, true, false, feedForbidden}, // refused after a read: unknown again
		{1, wait, true, true, false, feedOK},         // read again
		{0, wait, true, true, false, feedOK},         // a new epoch: from 0, a still revoked
		{1, wait, true, true, true, feedOK},
	}
	if len(src.reads) != len(want) {
		t.Fatalf("reads %+v, want %+v", src.reads, want)
	}
	for i := range want {
		if src.reads[i] != want[i] {
			t.Errorf("read %d: %+v, want %+v", i, src.reads[i], want[i])
		}
	}
	if n := testutil.ToFloat64(restarts); n != 1 {
		t.Errorf("restarts = %v, want 1", n)
	}
	if n := testutil.ToFloat64(calls.WithLabelValues("revocations", "ok")); n != 4 {
		t.Errorf("ok reads = %v, want 4", n)
	}
	if f.readAt.Load() == 0 {
		t.Error("the time of the last good read was not kept")
	}
}
