package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

// fleetWaiters is how many held reads the fan-out tests hold on a feed at
// once, as that many verifiers up to date would.
const fleetWaiters = 300

// holdReads sends n held reads of path (each with data and wait 20s) on
// storage s, and returns their answers once they all answered.
func (e *testEnv) holdReads(s logical.Storage, n int, path string, data map[string]interface{}) (wait func() []map[string]interface{}) {
	// Pages are shared for a minute, not a second: a loaded machine may
	// start the n goroutines over more than a second.
	held := &e.b.revocations.wake.held
	e.b.revocations.reads.maxAge = time.Minute
	if path == "key-records" {
		held = &e.b.keyRecords.changes.wake.held
		e.b.keyRecords.changeReads.maxAge = time.Minute
	}
	answers := make([]map[string]interface{}, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := map[string]interface{}{"wait": "20s"}
			for k, v := range data {
				d[k] = v
			}
			resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
				Operation: logical.ReadOperation, Path: path, Storage: s, MountPoint: "keybroker/", Data: d,
			})
			if err != nil || resp == nil || resp.IsError() {
				e.t.Errorf("held read of %s: %v %v", path, err, resp)
				return
			}
			answers[i] = resp.Data
		}()
	}
	// Every read has read its page and waits: counted, not slept on, so
	// that a loaded machine cannot make a straggler's late first read
	// look like a second storage read of the wake.
	for deadline := time.Now().Add(time.Minute); held.Load() < int64(n); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d of %d reads of %s held after a minute", held.Load(), n, path)
		}
	}
	return func() []map[string]interface{} {
		wg.Wait()
		return answers
	}
}

// A revocation wakes every held read of the feed into one storage read,
// and each of them gets the revocation.
func TestRevocationFeedWakesAFleetIntoOneRead(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	e.ok(logical.DeleteOperation, e.keyPath(e.mint("web", nil).Data["key_id"].(string)), nil)
	id := e.mint("web", nil).Data["key_id"].(string)
	_, cursor, _ := e.feed(0)
	s := newCountingStorage(e.storage)
	wait := e.holdReads(s, fleetWaiters, "revocations", map[string]interface{}{"after": cursor})
	if n := s.n("get", "revocations/"); n != 1 {
		t.Errorf("%d held reads at the same cursor read the counter %d times; want once", fleetWaiters, n)
	}
	if n := s.n("list"); n != 0 {
		t.Errorf("held reads of a verifier up to date listed storage %d times; want none", n)
	}
	s.reset()
	e.ok(logical.DeleteOperation, e.keyPath(id), nil)
	for i, a := range wait() {
		revs, _ := a["revocations"].([]map[string]interface{})
		if len(revs) != 1 || revs[0]["id"] != id {
			t.Fatalf("held read %d answered %v; want the revocation of %s", i, a, id)
		}
	}
	// One page after the wake: the counter, the listing, the entry.
	if get, list := s.n("get", "revocations/"), s.n("list"); get != 2 || list != 1 {
		t.Errorf("a revocation woke %d held reads into %d gets and %d lists; want 2 and 1", fleetWaiters, get, list)
	}
}

// A change wakes every held read of the key-record changes into one
// storage read of the page, and each of them gets the change.
func TestKeyRecordChangesWakeAFleetIntoOneRead(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	_, cursor, epoch := e.snapshotAll(nil)
	s := newCountingStorage(e.storage)
	wait := e.holdReads(s, fleetWaiters, "key-records", map[string]interface{}{"after": cursor, "epoch": epoch})
	if n := s.n("list", "tenants/"); n != 1 {
		t.Errorf("%d held reads at the same cursor listed tenants %d times; want once", fleetWaiters, n)
	}
	s.reset()
	id := e.mint("web", nil).Data["key_id"].(string)
	for i, a := range wait() {
		var p contract.KeyRecordsPage
		b, _ := json.Marshal(a)
		_ = json.Unmarshal(b, &p)
		if len(p.Records) != 1 || p.Records[0].KeyID != id {
			t.Fatalf("held read %d answered %+v; want the record of %s", i, p.Records, id)
		}
	}
	// The lists did not change: the ones read before the mint still hold.
	if get, list := s.n("get", "keys/"), s.n("list", "tenants/"); get != 1 || list > 1 {
		t.Errorf("a mint woke %d held reads into %d key reads and %d tenant listings; want 1 and at most 1", fleetWaiters, get, list)
	}
}

// Verifiers catching up on a burst of mints, each from its own cursor,
// read each key from storage once between them; a key changed after it
// was read is read again by the pages that hold that change.
func TestKeyRecordCatchUpReadsEachKeyOnce(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	_, start, epoch := e.snapshotAll(nil)
	const burst = 40
	var ids []string
	for range burst {
		ids = append(ids, e.mint("web", nil).Data["key_id"].(string))
	}
	s := newCountingStorage(e.storage)
	read := func(after uint64) *contract.KeyRecordsPage {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.ReadOperation, Path: "key-records", Storage: s, MountPoint: "keybroker/",
			Data: map[string]interface{}{"after": after, "epoch": epoch},
		})
		if err != nil || resp.IsError() {
			t.Fatalf("read: %v %v", err, resp)
		}
		var p contract.KeyRecordsPage
		b, _ := json.Marshal(resp.Data)
		_ = json.Unmarshal(b, &p)
		return &p
	}
	for i := range uint64(burst) { // one verifier at each cursor of the burst
		if p := read(start + i); len(p.Records) != burst-int(i) || p.Records[0].KeyID != ids[i] {
			t.Fatalf("after %d: %d records from %s; want %d from %s", start+i, len(p.Records), p.Records[0].KeyID, burst-int(i), ids[i])
		}
	}
	if n := s.n("get", "keys/"); n != burst {
		t.Errorf("%d verifiers catching up on %d mints read keys %d times; want %d", burst, burst, n, burst)
	}
	// Revoked after it was read: a page holding the revocation says so.
	e.ok(logical.DeleteOperation, e.keyPath(ids[0]), nil)
	p := read(start)
	var revoked bool
	for _, r := range p.Records {
		if r.KeyID == ids[0] {
			revoked = r.Revoked
		}
	}
	if !revoked {
		t.Fatalf("a page after the revocation of %s, read before it, answered it unrevoked", ids[0])
	}
}

// Reads that come back one after another at the same cursor, with no
// change between them, as held reads that timed out do, share the page;
// a change between them is seen at once.
func TestFeedReadsShareUntilTheNextChange(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	e.ok(logical.DeleteOperation, e.keyPath(e.mint("web", nil).Data["key_id"].(string)), nil)
	_, cursor, _ := e.feed(0)
	s := newCountingStorage(e.storage)
	read := func() map[string]interface{} {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.ReadOperation, Path: "revocations", Storage: s, Data: map[string]interface{}{"after": cursor},
		})
		if err != nil || resp.IsError() {
			t.Fatalf("read: %v %v", err, resp)
		}
		return resp.Data
	}
	for range 50 {
		read()
	}
	if n := s.n("get", "revocations/"); n != 1 {
		t.Errorf("50 reads at one cursor with no change read the counter %d times; want once", n)
	}
	id := e.mint("web", nil).Data["key_id"].(string)
	e.ok(logical.DeleteOperation, e.keyPath(id), nil)
	if revs := read()["revocations"].([]map[string]interface{}); len(revs) != 1 || revs[0]["id"] != id {
		t.Fatalf("a read after a revocation answered %v: a page of before the revocation was shared", revs)
	}
	// Kept at most feedShareMaxAge, should a change wake no reader.
	s.reset()
	time.Sleep(feedShareMaxAge)
	read()
	if n := s.n("get", "revocations/"); n == 0 {
		t.Errorf("a read %s after the last did not read storage", feedShareMaxAge)
	}
}

// A held read with a filter waits on past changes it would get nothing
// of, answering with its cursor moved past them when its wait ends, and
// answers at once for a change it keeps or a change of the lists.
func TestKeyRecordFilteredReadWaitsPastOtherRoles(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	e.createRole("batch", nil)
	_, cursor, epoch := e.snapshotAll(nil)
	type answer struct {
		p    *contract.KeyRecordsPage
		took time.Duration
	}
	hold := func(wait string) <-chan answer {
		done := make(chan answer, 1)
		go func() {
			start := time.Now()
			p := e.keyRecords("key-records", map[string]interface{}{"after": cursor, "epoch": epoch, "wait": wait, "roles": "batch"})
			done <- answer{p, time.Since(start)}
		}()
		time.Sleep(200 * time.Millisecond)
		return done
	}
	done := hold("2s")
	for range 3 {
		e.mint("web", nil)
	}
	a := <-done
	if a.took < 2*time.Second || len(a.p.Records) != 0 || a.p.Next != cursor+3 {
		t.Fatalf("a read of batch's keys, after 3 web mints: %d records, next %d (cursor %d) after %s; want none, next past them, after its wait",
			len(a.p.Records), a.p.Next, cursor, a.took.Round(time.Millisecond))
	}
	cursor = a.p.Next
	done = hold("20s")
	e.mint("web", nil)
	id := e.mint("batch", nil).Data["key_id"].(string)
	if a = <-done; len(a.p.Records) != 1 || a.p.Records[0].KeyID != id || a.took > 5*time.Second {
		t.Fatalf("a read of batch's keys answered %+v after %s; want the batch key at once", a.p.Records, a.took)
	}
	cursor = a.p.Next
	done = hold("20s")
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 10})
	if a = <-done; len(a.p.MeteredTenants) != 1 || a.took > 5*time.Second {
		t.Fatalf("after a tenant ceiling: metered_tenants %v after %s; want it at once", a.p.MeteredTenants, a.took)
	}
}

// Changes close together wake the held key-record reads once per
// keyChangesWakeGap, not once each, and the last change is always woken for.
func TestKeyRecordChangesShareAWake(t *testing.T) {
	e := newTestEnv(t)
	c := e.b.keyRecords.changes
	var wakes atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a held read, waiting again after each wake
		for {
			ch, _ := c.wake.next()
			select {
			case <-ch:
				wakes.Add(1)
			case <-stop:
				return
			}
		}
	}()
	time.Sleep(2 * keyChangesWakeGap)
	start := time.Now()
	for i := range 20 { // a stream of mints, the read waiting again between them
		c.add(fmt.Sprintf("k%011d", i), nil)
		time.Sleep(5 * time.Millisecond)
	}
	within := time.Since(start)
	time.Sleep(2 * keyChangesWakeGap)
	if n, most := wakes.Load(), int64(within/keyChangesWakeGap)+2; n > most || n == 0 {
		t.Errorf("20 changes in %s woke a held read %d times; want 1 to %d", within, n, most)
	}
	// The last change is seen by a read woken after it.
	if p := e.keyRecords("key-records", map[string]interface{}{"after": c.lastSeq() - 1, "epoch": c.epoch}); p.Next != c.lastSeq() {
		t.Errorf("a read after the wake ends at %d; want %d", p.Next, c.lastSeq())
	}
}
