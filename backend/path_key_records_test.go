package backend

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

// page reads key-records (or its snapshot) and decodes the answer as a
// verifier would, through JSON.
func (e *testEnv) keyRecords(path string, data map[string]interface{}) *contract.KeyRecordsPage {
	e.t.Helper()
	resp := e.ok(logical.ReadOperation, path, data)
	b, err := json.Marshal(resp.Data)
	if err != nil {
		e.t.Fatal(err)
	}
	var p contract.KeyRecordsPage
	if err := json.Unmarshal(b, &p); err != nil {
		e.t.Fatal(err)
	}
	return &p
}

// snapshotAll reads every snapshot page; it returns the records by key_id
// and the first page's cursor and epoch.
func (e *testEnv) snapshotAll(filter map[string]interface{}) (map[string]contract.KeyRecord, uint64, string) {
	e.t.Helper()
	recs := map[string]contract.KeyRecord{}
	var cursor uint64
	var epoch string
	after := ""
	for pages := 0; ; pages++ {
		data := map[string]interface{}{"after_id": after}
		for k, v := range filter {
			data[k] = v
		}
		p := e.keyRecords("key-records/snapshot", data)
		if pages == 0 {
			cursor, epoch = p.Cursor, p.Epoch
		}
		for _, r := range p.Records {
			if _, dup := recs[r.KeyID]; dup {
				e.t.Fatalf("snapshot gave %s twice", r.KeyID)
			}
			recs[r.KeyID] = r
		}
		if !p.More {
			return recs, cursor, epoch
		}
		after = p.NextID
	}
}

func TestKeyRecordSnapshot(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{
		"scopes": "read,write", "default_scopes": "read", "bound_cidrs": "10.0.0.0/8", "tenant": "acme",
		"metadata": map[string]interface{}{"team": "payments"}, "budget": 100, "rate_limit": 5,
	})
	e.createRole("other", nil)
	resp := e.mint("web", map[string]interface{}{"name": "ci", "scopes": "read,write"})
	key, id := resp.Data["key"].(string), resp.Data["key_id"].(string)
	e.mint("other", nil)

	recs, _, epoch := e.snapshotAll(nil)
	if len(recs) != 2 || epoch == "" {
		t.Fatalf("snapshot has %d records, epoch %q; want 2 and an epoch", len(recs), epoch)
	}
	r := recs[id]
	sum := sha256.Sum256([]byte(key))
	if r.Hash != hex.EncodeToString(sum[:]) {
		t.Fatalf("record hash %q is not the SHA-256 of the key", r.Hash)
	}
	if r.Role != "web" || r.Tenant != "acme" || strings.Join(r.Scopes, ",") != "read,write" ||
		strings.Join(r.BoundCIDRs, ",") != "10.0.0.0/8" || r.Revoked {
		t.Fatalf("record = %+v", r)
	}
	if r.Budget == nil || r.Budget.Units != 100 || r.RateLimit == nil || r.RateLimit.PerSecond != 5 {
		t.Fatalf("record limits = %+v %+v", r.Budget, r.RateLimit)
	}
	if exp, err := time.Parse(time.RFC3339, r.ExpiresAt); err != nil || time.Until(exp) < time.Minute {
		t.Fatalf("expires_at %q", r.ExpiresAt)
	}
	// The key itself is never in an answer; nor are name and metadata,
	// which a verifier does not decide on and a minter sizes.
	raw := e.ok(logical.ReadOperation, "key-records/snapshot", nil)
	b, _ := json.Marshal(raw.Data)
	for what, s := range map[string]string{"the plaintext key": key, "the name": `"ci"`, "the metadata": "payments"} {
		if strings.Contains(string(b), s) {
			t.Fatalf("the snapshot holds %s", what)
		}
	}

	// Filters.
	if recs, _, _ := e.snapshotAll(map[string]interface{}{"roles": "other"}); len(recs) != 1 || recs[id].KeyID != "" {
		t.Fatalf("roles=other gave %v", recs)
	}
	if recs, _, _ := e.snapshotAll(map[string]interface{}{"tenants": "acme"}); len(recs) != 1 || recs[id].KeyID != id {
		t.Fatalf("tenants=acme gave %v", recs)
	}
	e.userError(logical.ReadOperation, "key-records/snapshot", map[string]interface{}{"after_id": "../keys"}, "is not a key_id")
	e.userError(logical.ReadOperation, "key-records/snapshot", map[string]interface{}{"roles": strings.Repeat("r,", 101)}, "at most 100")
	e.userError(logical.ReadOperation, "key-records", map[string]interface{}{"tenants": "a\x00b"}, "is not a name")
	e.userError(logical.ReadOperation, "key-records", map[string]interface{}{"after": -1}, "must not be negative")
	e.userError(logical.ReadOperation, "key-records", map[string]interface{}{"wait": "31s"}, "wait must be between")
	e.userError(logical.ReadOperation, "key-records", map[string]interface{}{"after": 1}, "epoch is required")
}

func TestKeyRecordSnapshotPages(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	e.createRole("rare", nil)
	const n = 2*contract.MaxKeyRecordPage + 10
	for i := 0; i < n; i++ {
		e.mint("web", nil)
	}
	rare := e.mint("rare", nil).Data["key_id"].(string)
	recs, _, _ := e.snapshotAll(nil)
	if len(recs) != n+1 {
		t.Fatalf("snapshot has %d records, want %d", len(recs), n+1)
	}
	// A filter that passes few keys still ends, scanning a bounded number
	// of ids a page.
	if recs, _, _ := e.snapshotAll(map[string]interface{}{"roles": "rare"}); len(recs) != 1 || recs[rare].KeyID != rare {
		t.Fatalf("roles=rare gave %d records", len(recs))
	}
}

// A verifier that reads the snapshot and then the changes from its cursor
// ends with every key as it is, whatever happened while it read.
func TestKeyRecordChangesAfterSnapshot(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"tenant": "acme", "ttl": "1h", "max_ttl": "4h"})
	before := e.mint("web", nil)
	revokedLater := e.mint("web", nil).Data["key_id"].(string)
	budgetLater := e.mint("web", map[string]interface{}{"budget": 50}).Data["key_id"].(string)

	recs, cursor, epoch := e.snapshotAll(nil)
	if len(recs) != 3 {
		t.Fatalf("snapshot has %d records", len(recs))
	}
	// After the snapshot: a mint, a revocation, a renewal, a budget
	// change, a tenant ceiling.
	minted := e.mint("web", nil).Data["key_id"].(string)
	e.ok(logical.DeleteOperation, e.keyPath(revokedLater), nil)
	sec := before.Secret
	sec.IssueTime = time.Now()
	sec.Increment = 3 * time.Hour
	if resp, err := e.lease(logical.RenewOperation, sec); err != nil || resp.IsError() {
		t.Fatalf("renew: %v %v", err, resp)
	}
	e.ok(logical.UpdateOperation, "budget/web/"+budgetLater, map[string]interface{}{"budget": 20})
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 1000})

	p := e.keyRecords("key-records", map[string]interface{}{"after": cursor, "epoch": epoch})
	if p.Resync || p.Epoch != epoch || p.More || p.Next != p.Last || p.Next != cursor+5 {
		t.Fatalf("changes page: resync=%v epoch=%q more=%v next=%d last=%d (cursor %d)", p.Resync, p.Epoch, p.More, p.Next, p.Last, cursor)
	}
	for _, r := range p.Records {
		recs[r.KeyID] = r
	}
	if _, ok := recs[minted]; !ok {
		t.Fatal("the key minted after the snapshot is not among the changes")
	}
	if !recs[revokedLater].Revoked {
		t.Fatal("the revocation is not among the changes")
	}
	if exp, _ := time.Parse(time.RFC3339, recs[before.Data["key_id"].(string)].ExpiresAt); time.Until(exp) < 2*time.Hour {
		t.Fatalf("the renewal is not among the changes: expires_at %s", exp)
	}
	if recs[budgetLater].Budget.Units != 20 {
		t.Fatalf("the budget change is not among the changes: %+v", recs[budgetLater].Budget)
	}
	if strings.Join(p.MeteredTenants, ",") != "acme" {
		t.Fatalf("metered_tenants = %v", p.MeteredTenants)
	}
	// Nothing new: the same cursor.
	if p2 := e.keyRecords("key-records", map[string]interface{}{"after": p.Next, "epoch": epoch}); p2.Next != p.Next || len(p2.Records) != 0 {
		t.Fatalf("an up-to-date read gave %d records, next %d", len(p2.Records), p2.Next)
	}
	// A key gone from storage (tidied) is given as gone.
	if err := e.storage.Delete(context.Background(), keyPrefix+minted); err != nil {
		t.Fatal(err)
	}
	e.b.keyRecords.add(minted)
	p3 := e.keyRecords("key-records", map[string]interface{}{"after": p.Next, "epoch": epoch})
	if len(p3.Records) != 1 || !p3.Records[0].Gone || p3.Records[0].KeyID != minted || p3.Records[0].Hash != "" {
		t.Fatalf("a deleted key's change = %+v", p3.Records)
	}
}

// A cursor the node no longer holds, or of another epoch, is answered with
// resync; a new backend (a restart, another node) has a new epoch.
func TestKeyRecordChangesResync(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	e.mint("web", nil)
	_, cursor, epoch := e.snapshotAll(nil)
	for _, c := range []struct {
		name  string
		data  map[string]interface{}
		wants bool
	}{
		{"current", map[string]interface{}{"after": cursor, "epoch": epoch}, false},
		{"another epoch", map[string]interface{}{"after": cursor, "epoch": "not-this-one"}, true},
		{"ahead of the last change", map[string]interface{}{"after": cursor + 10, "epoch": epoch}, true},
	} {
		if p := e.keyRecords("key-records", c.data); p.Resync != c.wants {
			t.Errorf("%s: resync = %v, want %v", c.name, p.Resync, c.wants)
		}
	}
	for i := 0; i <= keyChangesHeld; i++ {
		e.b.keyRecords.add("")
	}
	if p := e.keyRecords("key-records", map[string]interface{}{"after": cursor, "epoch": epoch}); !p.Resync {
		t.Fatalf("a cursor %d changes behind was not told to resync", keyChangesHeld+1)
	}
	if other := newKeyChanges(); other.epoch == e.b.keyRecords.changes.epoch {
		t.Fatal("two backends share an epoch")
	}
	// Long pages: at most MaxKeyRecordPage changes at a time, with more.
	last := e.b.keyRecords.changes.lastSeq()
	p := e.keyRecords("key-records", map[string]interface{}{"after": last - 2*contract.MaxKeyRecordPage, "epoch": epoch})
	if p.Resync || !p.More || p.Next != last-contract.MaxKeyRecordPage {
		t.Fatalf("a long way behind: resync=%v more=%v next=%d", p.Resync, p.More, p.Next)
	}
}

// A long-polling read answers as soon as a key changes, and after its wait
// when none does.
func TestKeyRecordChangesLongPoll(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	_, cursor, epoch := e.snapshotAll(nil)
	read := func(wait string) (*contract.KeyRecordsPage, time.Duration) {
		start := time.Now()
		p := e.keyRecords("key-records", map[string]interface{}{"after": cursor, "epoch": epoch, "wait": wait})
		return p, time.Since(start)
	}
	if _, took := read("1s"); took < time.Second {
		t.Fatalf("a read with nothing new answered after %s, not its wait", took)
	}
	type answer struct {
		p    *contract.KeyRecordsPage
		took time.Duration
	}
	done := make(chan answer)
	go func() {
		p, took := read("20s")
		done <- answer{p, took}
	}()
	time.Sleep(200 * time.Millisecond)
	id := e.mint("web", nil).Data["key_id"].(string)
	a := <-done
	if len(a.p.Records) != 1 || a.p.Records[0].KeyID != id || a.took > 5*time.Second {
		t.Fatalf("long poll answered %+v after %s; want the new key at once", a.p.Records, a.took)
	}
	// A tenant ceiling wakes it too.
	cursor = a.p.Next
	go func() {
		p, took := read("20s")
		done <- answer{p, took}
	}()
	time.Sleep(200 * time.Millisecond)
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 10})
	if a = <-done; len(a.p.MeteredTenants) != 1 || a.took > 5*time.Second {
		t.Fatalf("after a tenant ceiling: metered_tenants %v after %s", a.p.MeteredTenants, a.took)
	}
}

// Records of keys long expired are not in the snapshot; recently expired
// ones are, so a verifier answers "expired" for them.
func TestKeyRecordSnapshotExpired(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	for _, c := range []struct {
		name    string
		expired time.Duration
		want    bool
	}{
		{"live", -time.Hour, true},
		{"expired a minute ago", time.Minute, true},
		{"expired an hour ago", time.Hour, false},
	} {
		id := e.mint("web", nil).Data["key_id"].(string)
		k, err := getKey(context.Background(), e.storage, id)
		if err != nil {
			t.Fatal(err)
		}
		k.ExpiresAt = time.Now().Add(-c.expired)
		if err := putKey(context.Background(), e.storage, k); err != nil {
			t.Fatal(err)
		}
		e.b.keyRecords.add(id) // as every write of a key does: the index reads it again
		e.b.keyRecords.list = nil
		recs, _, _ := e.snapshotAll(nil)
		if _, ok := recs[id]; ok != c.want {
			t.Errorf("%s: in the snapshot = %v, want %v", c.name, ok, c.want)
		}
	}
}

// Pages are bounded in bytes as well as in records: keys at the scope
// limits (64 scopes of 128 characters that JSON escapes six-fold) still come
// in pages of at most MaxKeyRecordPageBytes, every one of them, through the
// snapshot and through the changes.
func TestKeyRecordPagesBoundedInBytes(t *testing.T) {
	e := newTestEnv(t)
	var scopes []string
	for i := 0; i < 64; i++ {
		scopes = append(scopes, fmt.Sprintf("%03d", i)+strings.Repeat("<", 125))
	}
	e.createRole("fat", map[string]interface{}{"scopes": strings.Join(scopes, ","), "default_scopes": strings.Join(scopes, ",")})
	const n = 200
	for i := 0; i < n; i++ {
		e.mint("fat", nil)
	}
	check := func(what string, data map[string]interface{}) *contract.KeyRecordsPage {
		t.Helper()
		resp := e.ok(logical.ReadOperation, what, data)
		b, err := json.Marshal(map[string]interface{}{"data": resp.Data}) // HTML-escaped, as Vault sends it
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > contract.MaxKeyRecordPageBytes {
			t.Fatalf("a %s page is %d bytes, over %d", what, len(b), contract.MaxKeyRecordPageBytes)
		}
		return e.keyRecords(what, data)
	}
	got, pages := map[string]bool{}, 0
	for after := ""; ; pages++ {
		p := check("key-records/snapshot", map[string]interface{}{"after_id": after})
		for _, r := range p.Records {
			got[r.KeyID] = true
		}
		if !p.More {
			break
		}
		after = p.NextID
	}
	if len(got) != n || pages < 2 {
		t.Fatalf("the snapshot gave %d of %d keys in %d pages", len(got), n, pages+1)
	}
	epoch := e.b.keyRecords.changes.epoch
	got = map[string]bool{}
	for after := uint64(0); ; {
		p := check("key-records", map[string]interface{}{"after": after, "epoch": epoch})
		for _, r := range p.Records {
			got[r.KeyID] = true
		}
		if p.Next <= after && p.More {
			t.Fatal("a changes page made no progress")
		}
		after = p.Next
		if !p.More {
			break
		}
	}
	if len(got) != n {
		t.Fatalf("the changes gave %d of %d keys", len(got), n)
	}
}

// gateStorage holds the first List of tenants/ (the end of a page read)
// until release is closed.
type gateStorage struct {
	logical.Storage
	once             sync.Once
	entered, release chan struct{}
}

func (g *gateStorage) List(ctx context.Context, p string) ([]string, error) {
	if p == tenantPrefix {
		first := false
		g.once.Do(func() { first = true })
		if first {
			close(g.entered)
			<-g.release
		}
	}
	return g.Storage.List(ctx, p)
}

// A long poll sent after a change, arriving while another reader's read of
// the same cursor (begun before the change) is under way, must not share
// that read and then sleep through the change.
func TestKeyRecordLongPollDoesNotShareAnOlderRead(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	_, cursor, epoch := e.snapshotAll(nil)
	g := &gateStorage{Storage: e.storage, entered: make(chan struct{}), release: make(chan struct{})}
	read := func(wait string) *contract.KeyRecordsPage {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.ReadOperation, Path: "key-records", Storage: g, MountPoint: "keybroker/",
			Data: map[string]interface{}{"after": cursor, "epoch": epoch, "wait": wait},
		})
		if err != nil {
			t.Error(err)
			return &contract.KeyRecordsPage{}
		}
		b, _ := json.Marshal(resp.Data)
		var p contract.KeyRecordsPage
		_ = json.Unmarshal(b, &p)
		return &p
	}
	go read("0") // its read is held at the end
	<-g.entered
	e.mint("web", nil) // a change no waiter is woken for
	done := make(chan *contract.KeyRecordsPage)
	start := time.Now()
	go func() { done <- read("5") }()
	time.Sleep(200 * time.Millisecond)
	close(g.release)
	if p := <-done; len(p.Records) != 1 || time.Since(start) > 3*time.Second {
		t.Fatalf("a long poll sent after a change answered %d records after %s", len(p.Records), time.Since(start).Round(time.Millisecond))
	}
}
