package backend

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// stuckStorage answers reads of one path only when the caller's context
// ends, as a gRPC storage call to a Vault whose storage is stuck does.
type stuckStorage struct {
	logical.Storage
	path string
}

func (s *stuckStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if key == s.path {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Storage.Get(ctx, key)
}

// Reserves whose requests have a deadline (Vault's max_request_duration)
// end by it when storage does not answer, the one leading the meter's
// batch and the one queued behind it alike: a batch's storage calls end
// when every request in it has, and a queued request leaves the queue.
func TestStuckStorageEndsReservesByTheirDeadline(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100})
	id := e.mint("r", nil).Data["key_id"].(string)
	e.storage = &stuckStorage{Storage: e.storage, path: meterPath(id)}
	done := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
				EntityID: "x", MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 1}})
			done <- err
		}()
	}
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("a reserve whose meter could not be read succeeded")
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("reserve %d still waiting 3s after its 200ms deadline", i)
		}
	}
}

// A reserve whose request ends while it waits in a meter's queue leaves
// the queue: it is answered with its context's error at once, not when
// the batch ahead of it is done, and is granted nothing.
func TestQueuedReserveWithdrawsWhenItsRequestEnds(t *testing.T) {
	e := newTestEnv(t)
	g := &gatedStorage{Storage: e.storage}
	e.storage = g
	e.createRole("r", map[string]interface{}{"scopes": "read", "budget": 100})
	id := e.mint("r", nil).Data["key_id"].(string)
	held, release := g.hold()
	first := make(chan *logical.Response)
	go func() {
		resp, _ := e.reserveAs("first", id, 10)
		first <- resp
	}()
	<-held
	ctx, cancel := context.WithCancel(context.Background())
	queued := make(chan error)
	go func() {
		_, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
			EntityID: "late", MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 20}})
		queued <- err
	}()
	for deadline := time.Now().Add(5 * time.Second); e.b.meters.queued(meterPath(id)) < 1; time.Sleep(200 * time.Microsecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second reserve never queued")
		}
	}
	cancel()
	select {
	case err := <-queued:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("withdrawn reserve: %v, want its context's error", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a reserve whose request ended still waits behind the held batch")
	}
	if n := e.b.meters.queued(meterPath(id)); n != 0 {
		t.Fatalf("%d ops left queued", n)
	}
	close(release)
	if resp := <-first; resp == nil || resp.IsError() {
		t.Fatalf("first: %v", resp)
	}
	if got := e.spend("budget/" + id); got != [4]int64{100, 0, 10, 90} {
		t.Fatalf("spend: %v, want only the first's 10 held", got)
	}
	if len(e.b.meters.queues.byPath) != 0 {
		t.Fatalf("queues left: %v", e.b.meters.queues.byPath)
	}
}
