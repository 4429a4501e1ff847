package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func usageReport(t *testing.T, entries ...usageEntry) map[string]interface{} {
	b, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]interface{}{"usage": string(b)}
}

func TestKeyUsage(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	used, idle, gone := e.mint("web", nil), e.mint("web", nil), e.mint("web", nil)
	usedID, idleID, goneID := used.Data["key_id"].(string), idle.Data["key_id"].(string), gone.Data["key_id"].(string)
	e.ok(logical.DeleteOperation, e.keyPath(goneID), nil)

	now := time.Now().Unix()
	got := e.ok(logical.UpdateOperation, "key-usage", usageReport(t,
		usageEntry{KeyID: usedID, Last: now - 5, From: "10.0.0.1", Count: 3},
		usageEntry{KeyID: goneID, Last: now, From: "10.0.0.9", Count: 1},
	)).Data
	if got["recorded"] != 1 || got["skipped"] != 1 {
		t.Fatalf("recorded %v skipped %v, want 1 and 1 (the revoked key)", got["recorded"], got["skipped"])
	}
	// A second sidecar's report: counts add up, the latest use wins.
	e.ok(logical.UpdateOperation, "key-usage", usageReport(t, usageEntry{KeyID: usedID, Last: now, From: "10.0.0.2", Count: 4}))
	e.ok(logical.UpdateOperation, "key-usage", usageReport(t, usageEntry{KeyID: usedID, Last: now - 60, From: "10.0.0.3", Count: 1}))
	d := e.ok(logical.ReadOperation, e.keyPath(usedID), nil).Data
	uses := d["uses"].([]map[string]interface{})
	if d["last_used_at"] != time.Unix(now, 0).UTC().Format(time.RFC3339) || d["last_used_from"] != "10.0.0.2" || len(uses) != 1 || uses[0]["count"] != int64(8) {
		t.Fatalf("key read: %#v", d)
	}
	if d := e.ok(logical.ReadOperation, "keys/id/"+idleID, nil).Data; d["last_used_at"] != nil || len(d["uses"].([]map[string]interface{})) != 0 {
		t.Fatalf("unused key read: %#v", d)
	}

	// Stale keys: the idle one (minted now, so unused for 0s only) shows
	// up once the window is short enough; the used one does not.
	time.Sleep(1100 * time.Millisecond)
	list := e.ok(logical.ListOperation, "keys/id/", map[string]interface{}{"unused_for": "1s"})
	keys := list.Data["keys"].([]string)
	if !slices.Contains(keys, idleID) || slices.Contains(keys, goneID) {
		t.Fatalf("unused for 1s: %v (idle %s, revoked %s)", keys, idleID, goneID)
	}
	if keys, _ := e.ok(logical.ListOperation, "keys/id/", map[string]interface{}{"unused_for": "1h"}).Data["keys"].([]string); len(keys) != 0 {
		t.Fatalf("unused for 1h: %v", keys)
	}
	all := e.ok(logical.ListOperation, "keys/id/", nil).Data
	if info := all["key_info"].(map[string]interface{})[usedID].(map[string]interface{}); info["last_used_at"] == "" {
		t.Fatalf("key_info %#v", info)
	}

	// Entries that make no sense are skipped one by one, the rest kept:
	// a report is never refused whole for one of them.
	got = e.ok(logical.UpdateOperation, "key-usage", usageReport(t,
		usageEntry{KeyID: "short", Last: now, Count: 1},
		usageEntry{KeyID: usedID, Last: now, Count: 0},
		usageEntry{KeyID: usedID, Last: now + 3600, Count: 1},
		usageEntry{KeyID: usedID, Last: now, From: "evil", Count: 1},
		usageEntry{KeyID: usedID, Last: 86400, Count: 5}, // 1970: before the key existed
		usageEntry{KeyID: usedID, Last: now, From: "10.0.0.4", Count: 2},
	)).Data
	if got["recorded"] != 1 || got["skipped"] != 5 {
		t.Fatalf("a report with 5 bad entries: %#v", got)
	}
	if d := e.ok(logical.ReadOperation, "keys/id/"+usedID, nil).Data; len(d["uses"].([]map[string]interface{})) != 1 || d["uses"].([]map[string]interface{})[0]["count"] != int64(10) {
		t.Fatalf("uses after bad entries: %#v", d["uses"])
	}
	e.userError(logical.UpdateOperation, "key-usage", map[string]interface{}{"usage": "{"}, "JSON array")
	e.userError(logical.UpdateOperation, "key-usage", map[string]interface{}{"usage": fmt.Sprintf("[%s]", repeatJSON(`{"key_id":"`+usedID+`","last":1,"count":1}`, maxUsageEntries+1))}, "at most")
}

func repeatJSON(s string, n int) string {
	out := make([]byte, 0, (len(s)+1)*n)
	for i := 0; i < n; i++ {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, s...)
	}
	return string(out)
}

// A big report costs at most one write per shard and one for its id,
// writes no key record, and is not held by (nor holds) the lock
// revocations take.
func TestKeyUsageReportCostBounded(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	const n = 3000
	now := time.Now().Unix()
	entries := make([]usageEntry, n)
	for i := range entries {
		entries[i] = usageEntry{KeyID: e.mint("web", nil).Data["key_id"].(string), Last: now, From: "10.0.0.1", Count: 2}
	}
	c := newCountingStorage(e.storage)
	e.storage = c
	report := usageReport(t, entries...)
	report["report_id"] = "r-1"

	// Revocations' lock held throughout: the report does not wait for it.
	e.b.revocations.lock()
	done := make(chan map[string]interface{})
	go func() { done <- e.ok(logical.UpdateOperation, "key-usage", report).Data }()
	var got map[string]interface{}
	select {
	case got = <-done:
	case <-time.After(5 * time.Second):
		e.b.revocations.unlock()
		t.Fatal("a key-usage report waited for the revocation lock")
	}
	e.b.revocations.unlock()
	if got["recorded"] != n || got["skipped"] != 0 {
		t.Fatalf("report: %#v", got)
	}
	if w := c.n("put") + c.n("delete"); w > usageShards+1 || c.n("put", keyPrefix) > 0 {
		t.Fatalf("a %d-key report made %d writes (%d of keys/); want at most %d and none of keys/: %v", n, w, c.n("put", keyPrefix), usageShards+1, c.calls)
	}
	t.Logf("a %d-key report: %d writes, %d reads", n, c.n("put"), c.n("get"))
	for _, i := range []int{0, n / 2, n - 1} {
		d := e.ok(logical.ReadOperation, "keys/id/"+entries[i].KeyID, nil).Data
		if d["last_used_at"] != time.Unix(now, 0).UTC().Format(time.RFC3339) || d["last_used_from"] != "10.0.0.1" || d["uses"].([]map[string]interface{})[0]["count"] != int64(2) {
			t.Fatalf("key %d read: %#v", i, d)
		}
	}
	if keys := e.ok(logical.ListOperation, "keys/id/", map[string]interface{}{"unused_for": "1h"}).Data["keys"]; keys != nil && len(keys.([]string)) != 0 {
		t.Fatalf("keys just used listed as unused: %d", len(keys.([]string)))
	}
}

// failingPut fails the nth Put below prefix, once.
type failingPut struct {
	logical.Storage
	prefix string
	n      int
	seen   int
}

func (f *failingPut) Put(ctx context.Context, en *logical.StorageEntry) error {
	if strings.HasPrefix(en.Key, f.prefix) {
		if f.seen++; f.seen == f.n {
			return errors.New("storage unavailable")
		}
	}
	return f.Storage.Put(ctx, en)
}

// A report sent again with its report_id counts once: after a lost answer,
// and after a failure half-way through its shards.
func TestKeyUsageReportIDCountsOnce(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	now := time.Now().Unix()
	var entries []usageEntry
	for i := 0; i < 40; i++ { // over several shards
		entries = append(entries, usageEntry{KeyID: e.mint("web", nil).Data["key_id"].(string), Last: now, Count: 1})
	}
	count := func(id string) int64 {
		uses := e.ok(logical.ReadOperation, "keys/id/"+id, nil).Data["uses"].([]map[string]interface{})
		if len(uses) == 0 {
			return 0
		}
		return uses[0]["count"].(int64)
	}
	report := usageReport(t, entries...)
	report["report_id"] = "a"
	if d := e.ok(logical.UpdateOperation, "key-usage", report).Data; d["recorded"] != 40 || d["duplicate"] != false {
		t.Fatalf("first: %#v", d)
	}
	if d := e.ok(logical.UpdateOperation, "key-usage", report).Data; d["recorded"] != 0 || d["duplicate"] != true {
		t.Fatalf("sent again: %#v", d)
	}
	for _, en := range entries {
		if c := count(en.KeyID); c != 1 {
			t.Fatalf("a report sent twice with its report_id counted %d", c)
		}
	}
	// Half-way: the third shard write fails; the retry writes the rest.
	e.storage = &failingPut{Storage: e.storage, prefix: usageShardPrefix, n: 3}
	report["report_id"] = "b"
	if resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "key-usage", Data: report, Storage: e.storage, EntityID: e.entityID, MountPoint: "keybroker/"}); err == nil && !resp.IsError() {
		t.Fatal("a report whose storage failed half-way succeeded")
	}
	e.ok(logical.UpdateOperation, "key-usage", report)
	e.ok(logical.UpdateOperation, "key-usage", report)
	for _, en := range entries {
		if c := count(en.KeyID); c != 2 {
			t.Fatalf("a report retried after a failure half-way: count %d, want 2", c)
		}
	}
	// Without a report_id a retry counts again, as before.
	delete(report, "report_id")
	e.ok(logical.UpdateOperation, "key-usage", report)
	e.ok(logical.UpdateOperation, "key-usage", report)
	if c := count(entries[0].KeyID); c != 4 {
		t.Fatalf("without report_id: count %d, want 4", c)
	}
	for _, bad := range []string{"a/b", "../x", strings.Repeat("x", maxReportIDLength+1), "sp ace", "é"} {
		report["report_id"] = bad
		e.userError(logical.UpdateOperation, "key-usage", report, "report_id")
	}
	if n := len(e.storageKeys(usageReportPrefix)); n != 2 {
		t.Fatalf("%d report ids stored, want 2", n)
	}
	// Another verifier's report with the same id is its own: counted
	// (from review: ids were one namespace for every verifier).
	report["report_id"] = "a"
	if d := e.as("other-sidecar", logical.UpdateOperation, "key-usage", report).Data; d["duplicate"] != false || d["recorded"] != 40 {
		t.Fatalf("another verifier's report with a known id: %#v", d)
	}
	// A report that records nothing leaves no mark.
	report["usage"], report["report_id"] = "[]", "empty"
	e.ok(logical.UpdateOperation, "key-usage", report)
	if n := len(e.storageKeys(usageReportPrefix)); n != 3 {
		t.Fatalf("%d report ids stored after an empty report, want 3", n)
	}
}

// Tidy drops the use of keys it deleted and report ids past the window;
// uses kept on key records by older versions still count.
func TestKeyUsageTidyAndOlderRecords(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	e.createRole("web", map[string]interface{}{"scopes": "read", "ttl": "10h", "max_ttl": "10h"})
	kept, gone := e.mint("web", nil).Data["key_id"].(string), e.mint("web", nil).Data["key_id"].(string)
	now := time.Now()
	report := usageReport(t, usageEntry{KeyID: kept, Last: now.Unix(), From: "10.0.0.1", Count: 3}, usageEntry{KeyID: gone, Last: now.Unix(), Count: 1})
	report["report_id"] = "old"
	e.ok(logical.UpdateOperation, "key-usage", report)

	// An older version's uses, on the record itself.
	k, err := getKey(ctx, e.storage, kept)
	if err != nil {
		t.Fatal(err)
	}
	yesterday := now.UTC().Add(-24 * time.Hour)
	k.LastUsedAt, k.LastUsedFrom = yesterday.Truncate(time.Second), "10.9.9.9"
	k.Uses = []keyUse{{Day: yesterday.Format(time.DateOnly), Count: 5}, {Day: now.UTC().Format(time.DateOnly), Count: 1}}
	if err := putKey(ctx, e.storage, k); err != nil {
		t.Fatal(err)
	}
	d := e.ok(logical.ReadOperation, "keys/id/"+kept, nil).Data
	uses := d["uses"].([]map[string]interface{})
	if d["last_used_from"] != "10.0.0.1" || len(uses) != 2 || uses[0]["count"] != int64(5) || uses[1]["count"] != int64(4) {
		t.Fatalf("older record's uses and the shard's: %#v", d)
	}

	if err := e.storage.Delete(ctx, keyPrefix+gone); err != nil { // as tidy deletes it
		t.Fatal(err)
	}
	if _, err := e.b.tidy(ctx, e.storage, now.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	u, err := usageOf(ctx, e.storage, []string{kept, gone})
	if err != nil {
		t.Fatal(err)
	}
	if u[gone] != nil || u[kept] == nil {
		t.Fatalf("after tidy: kept %v, gone %v", u[kept], u[gone])
	}
	if n := len(e.storageKeys(usageReportPrefix)); n != 0 {
		t.Fatalf("%d report ids past the window stayed", n)
	}
}

// A shard whose keys' histories outgrow the storage's entry limit keeps
// every key's last use and drops the oldest daily counts, rather than fail.
func TestUsageShardWithinEntryLimit(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	st := &sizedStorage{Storage: e.storage, limit: raftEntryLimit, largest: map[string]int{}}
	const keys = 3000 // about 770,000 keys in use across the shards
	sh := &usageShard{Keys: map[string]*keyUsage{}}
	now := time.Now()
	day := now.Unix() / secondsPerDay
	for i := 0; i < keys; i++ {
		u := &keyUsage{Last: now.Unix() - int64(i) - 10, From: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"}
		for d := int64(0); d < usageDays; d++ {
			u.Days = append(u.Days, [2]int64{day - usageDays + d, maxUsageCount * 30})
		}
		sh.Keys[fmt.Sprintf("k%011d", i)] = u
	}
	const shard = usageShardPrefix + "00"
	if err := putJSON(ctx, e.storage, shard, sh); err != nil { // beside the limit
		t.Fatal(err)
	}
	if err := e.b.meters.addUsage(ctx, st, shard, []usageEntry{{KeyID: "k00000000000", Last: now.Unix(), From: "10.0.0.1", Count: 1}}, now.UTC(), e.b.Logger()); err != nil {
		t.Fatalf("a report to a full shard: %v", err)
	}
	got, err := getJSON[usageShard](ctx, e.storage, shard)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Keys) != keys || got.Keys["k00000000000"].From != "10.0.0.1" || got.Keys[fmt.Sprintf("k%011d", keys-1)].Last != now.Unix()-keys+1-10 {
		t.Fatalf("after trimming: %d keys, first %+v", len(got.Keys), got.Keys["k00000000000"])
	}
	if n := len(got.Keys["k00000000001"].Days); n == 0 || n >= usageDays {
		t.Fatalf("kept %d days of counts", n)
	}
}

// A report's client address is an address as Go writes it: no zone (which
// could be any length, control characters included), nothing else (from
// review).
func TestKeyUsageFromIsAnAddress(t *testing.T) {
	now := time.Now()
	for from, want := range map[string]bool{
		"":             true,
		"10.0.0.1":     true,
		"2001:db8::1":  true,
		"fe80::1%eth0": false,
		"fe80::1%" + strings.Repeat("\x1b", 1000): false,
		"2001:DB8::1":     false,
		"::ffff:10.0.0.1": true,
		"10.0.0.1 ":       false,
	} {
		e := usageEntry{KeyID: "AAAAAAAAAAAA", Count: 1, Last: now.Unix(), From: from}
		if got := validUse(e, now); got != want {
			t.Errorf("from %q: valid %v, want %v", from, got, want)
		}
	}
}
