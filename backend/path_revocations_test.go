package backend

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

func (e *testEnv) feed(after int64) (ids []string, next uint64, more bool) {
	e.t.Helper()
	resp := e.ok(logical.ReadOperation, "revocations", map[string]interface{}{"after": after})
	for _, r := range resp.Data["revocations"].([]map[string]interface{}) {
		ids = append(ids, r["id"].(string))
	}
	return ids, resp.Data["next"].(uint64), resp.Data["more"].(bool)
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRevocationFeed(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	e.createRole("batch", map[string]interface{}{"orphan": true})

	if ids, next, _ := e.feed(0); len(ids) != 0 || next != 0 {
		t.Fatalf("empty feed = %v next %d", ids, next)
	}

	var ids []string
	var secrets []*logical.Secret
	for i := 0; i < 3; i++ {
		resp := e.mint("web", nil)
		ids = append(ids, resp.Data["key_id"].(string))
		secrets = append(secrets, resp.Secret)
	}
	orphan := e.mint("batch", nil).Data["key_id"].(string)

	// Revocation by every route lands in the feed, in order.
	if _, err := e.lease(logical.RevokeOperation, secrets[1]); err != nil { // vault lease revoke / token revocation
		t.Fatal(err)
	}
	e.ok(logical.DeleteOperation, e.keyPath(ids[0]), nil)
	e.ok(logical.DeleteOperation, e.keyPath(orphan), nil)
	// Revoking twice, by either route, adds nothing.
	e.ok(logical.DeleteOperation, e.keyPath(ids[1]), nil)
	if _, err := e.lease(logical.RevokeOperation, secrets[0]); err != nil {
		t.Fatal(err)
	}

	got, next, more := e.feed(0)
	if want := []string{ids[1], ids[0], orphan}; !equalStrings(got, want) || next != 3 || more {
		t.Fatalf("feed = %v next %d more %v, want %v next 3", got, next, more, want)
	}
	got, next, _ = e.feed(2)
	if !equalStrings(got, []string{orphan}) || next != 3 {
		t.Fatalf("feed after 2 = %v next %d", got, next)
	}
	got, next, _ = e.feed(3)
	if len(got) != 0 || next != 3 {
		t.Fatalf("feed after 3 = %v next %d, want empty, next 3", got, next)
	}

	for _, id := range []string{ids[0], ids[1], orphan} {
		if r := e.ok(logical.ReadOperation, "keys/id/"+id, nil).Data; r["revoked"] != true || r["revoked_at"] == nil {
			t.Fatalf("key %s read after revocation = %#v", id, r)
		}
	}
	if r := e.ok(logical.ReadOperation, "keys/id/"+ids[2], nil).Data; r["revoked"] != false {
		t.Fatalf("unrevoked key read = %#v", r)
	}
	e.userError(logical.ReadOperation, "revocations", map[string]interface{}{"after": -1}, "must not be negative")
	e.userError(logical.ReadOperation, "revocations", map[string]interface{}{"after": "x"}, "after")
}

// When a lease ends because its TTL ran out, Vault calls Revoke too; that is
// expiry, not revocation, and must not fill the feed.
func TestLeaseExpiryIsNotARevocation(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	resp := e.mint("web", nil)
	id := resp.Data["key_id"].(string)
	k, _ := getKey(context.Background(), e.storage, id)
	k.ExpiresAt = time.Now().Add(-time.Second)
	if err := putKey(context.Background(), e.storage, k); err != nil {
		t.Fatal(err)
	}
	if _, err := e.lease(logical.RevokeOperation, resp.Secret); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := e.feed(0); len(got) != 0 {
		t.Fatalf("feed after natural expiry = %v, want empty", got)
	}
	if v := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"key": resp.Data["key"]}); v.Data["reason"] != contract.ReasonExpired {
		t.Fatalf("verify after expiry = %#v", v.Data)
	}
}

// Entries drop out of the feed once their credential would have expired,
// before tidy deletes them and after.
func TestRevocationFeedDropsExpired(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	short := e.mint("web", nil).Data["key_id"].(string)
	long := e.mint("web", nil).Data["key_id"].(string)
	e.ok(logical.DeleteOperation, e.keyPath(short), nil)
	e.ok(logical.DeleteOperation, e.keyPath(long), nil)

	// Age the first entry as if its key expired.
	r, err := getRevocation(context.Background(), e.storage, revocationPath(1)[len(revocationEntryPrefix):])
	if err != nil || r == nil {
		t.Fatalf("revocation 1: %v %v", r, err)
	}
	r.ExpiresAt = time.Now().Add(-time.Minute)
	if err := putJSON(context.Background(), e.storage, revocationPath(1), r); err != nil {
		t.Fatal(err)
	}
	if got, next, _ := e.feed(0); !equalStrings(got, []string{long}) || next != 2 {
		t.Fatalf("feed = %v next %d, want only %s, next 2", got, next, long)
	}

	st, err := e.b.tidy(context.Background(), e.storage, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.RevocationsDeleted != 1 || st.KeysDeleted != 0 {
		t.Fatalf("tidy = %+v, want 1 revocation deleted, no keys", st)
	}
	// The sequence carries on after tidy: a reader's cursor stays valid.
	third := e.mint("web", nil).Data["key_id"].(string)
	e.ok(logical.DeleteOperation, e.keyPath(third), nil)
	if got, next, _ := e.feed(2); !equalStrings(got, []string{third}) || next != 3 {
		t.Fatalf("feed after tidy = %v next %d, want [%s] next 3", got, next, third)
	}
}

func TestRevocationFeedPages(t *testing.T) {
	e := newTestEnv(t)
	for i := 0; i < contract.MaxRevocationPage+5; i++ {
		e.b.revocations.lock()
		err := e.b.revocations.appendLocked(context.Background(), e.storage, revocation{
			ID: "id", Type: secretTypeAPIKey, RevokedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour),
		})
		e.b.revocations.unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	got, next, more := e.feed(0)
	if len(got) != contract.MaxRevocationPage || next != contract.MaxRevocationPage || !more {
		t.Fatalf("first page: %d entries next %d more %v", len(got), next, more)
	}
	got, next, more = e.feed(int64(next))
	if len(got) != 5 || next != contract.MaxRevocationPage+5 || more {
		t.Fatalf("second page: %d entries next %d more %v", len(got), next, more)
	}
}

func TestTidyKeys(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	ids := map[string]time.Duration{}
	for _, age := range []time.Duration{-time.Hour, time.Minute, 2 * expiredKeyRetention} {
		id := e.mint("web", nil).Data["key_id"].(string)
		k, _ := getKey(context.Background(), e.storage, id)
		k.ExpiresAt = time.Now().Add(-age)
		if err := putKey(context.Background(), e.storage, k); err != nil {
			t.Fatal(err)
		}
		ids[id] = age
	}
	resp := e.ok(logical.UpdateOperation, "tidy", nil)
	if resp.Data["keys_deleted"] != 1 {
		t.Fatalf("tidy = %#v, want 1 key deleted", resp.Data)
	}
	for id, age := range ids {
		k, _ := getKey(context.Background(), e.storage, id)
		if gone := k == nil; gone != (age > expiredKeyRetention) {
			t.Fatalf("key expired %s ago: deleted=%v", age, gone)
		}
	}
}

// The feed says its epoch and last sequence number; each start of the mount
// on an active node begins a new epoch and keeps the sequence.
func TestRevocationFeedEpoch(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	if err := e.b.initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	page := func() (string, uint64) {
		d := e.ok(logical.ReadOperation, "revocations", nil).Data
		return d["epoch"].(string), d["last"].(uint64)
	}
	first, last := page()
	if first == "" || last != 0 {
		t.Fatalf("a new mount's feed: epoch %q last %d", first, last)
	}
	for i := 0; i < 2; i++ {
		e.ok(logical.DeleteOperation, e.keyPath(e.mint("web", nil).Data["key_id"].(string)), nil)
	}
	if ep, last := page(); ep != first || last != 2 {
		t.Fatalf("after two revocations: epoch %q (was %q) last %d", ep, first, last)
	}
	if err := e.b.initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if ep, last := page(); ep == first || ep == "" || last != 2 {
		t.Fatalf("after the mount started again: epoch %q (was %q) last %d, want a new epoch and last 2", ep, first, last)
	}
}

// A long-polling read at the end of the feed answers as soon as a
// revocation is added, and after its wait when none is.
func TestRevocationFeedLongPoll(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", nil)
	read := func(after int64, wait string) (*logical.Response, time.Duration) {
		start := time.Now()
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.ReadOperation, Path: "revocations", Storage: e.storage,
			Data: map[string]interface{}{"after": after, "wait": wait},
		})
		if err != nil || resp.IsError() {
			t.Errorf("read: %v %v", err, resp)
		}
		return resp, time.Since(start)
	}
	if _, took := read(0, "1s"); took < time.Second {
		t.Fatalf("a read with nothing new answered after %s, not its wait", took)
	}
	done := make(chan *logical.Response)
	var took time.Duration
	go func() {
		resp, d := read(0, "20s")
		took = d
		done <- resp
	}()
	time.Sleep(200 * time.Millisecond)
	id := e.mint("web", nil).Data["key_id"].(string)
	e.ok(logical.DeleteOperation, e.keyPath(id), nil)
	resp := <-done
	revs := resp.Data["revocations"].([]map[string]interface{})
	if len(revs) != 1 || revs[0]["id"] != id || took > 5*time.Second {
		t.Fatalf("long poll answered %v after %s; want the new revocation at once", revs, took)
	}
	// Bad waits are refused.
	e.userError(logical.ReadOperation, "revocations", map[string]interface{}{"wait": "31s"}, "wait must be between")
}

// A revocation outlives its credential by contract.RevocationGrace, the most
// leeway a verifier may allow past a JWT's exp: until then a verifier may
// still take the token for valid, and one that starts reading the feed then
// must learn of it. Tidy, the feed and verify all keep it that long.
func TestRevocationsOutliveExpiryByTheLeeway(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.createRole("web", nil)
	tok := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"ttl": "1s"})
	token, jti := tok.Data["token"].(string), tok.Data["jti"].(string)
	key := e.mint("web", nil)
	keyID := key.Data["key_id"].(string)
	e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"keys": token + "," + key.Data["key"].(string)})

	exp, err := time.Parse(time.RFC3339, tok.Data["expires_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(exp) + 50*time.Millisecond) // at most a second
	// The key's revocation as if the key had expired when the token did.
	e.setRevocationExpiry(keyID, exp)

	if _, err := e.b.tidy(context.Background(), e.storage, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := e.verifyReason(token, "10.0.0.1", nil); got != contract.ReasonRevoked {
		t.Fatalf("a revoked token past exp, within the leeway, after tidy: verify says %s", got)
	}
	if ids, _, _ := e.feed(0); !slices.Contains(ids, jti) || !slices.Contains(ids, keyID) {
		t.Fatalf("feed past exp, within the grace: %v, want %s and %s", ids, jti, keyID)
	}

	for _, tc := range []struct {
		at   time.Duration // after exp
		kept bool
	}{
		{contract.RevocationGrace - time.Second, true},
		{contract.RevocationGrace, false},
	} {
		st, err := e.b.tidy(context.Background(), e.storage, exp.Add(tc.at))
		if err != nil {
			t.Fatal(err)
		}
		left := len(e.storageKeys(revokedJTIPrefix))
		if kept := left == 1 && len(e.storageKeys(revocationEntryPrefix)) == 2; kept != tc.kept {
			t.Fatalf("tidy at exp+%s: %+v, %d revoked jtis left; want kept=%v", tc.at, st, left, tc.kept)
		}
	}
}

// setRevocationExpiry sets the expires_at of id's feed entries.
func (e *testEnv) setRevocationExpiry(id string, exp time.Time) {
	e.t.Helper()
	ctx := context.Background()
	names, err := e.storage.List(ctx, revocationEntryPrefix)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, n := range names {
		r, err := getRevocation(ctx, e.storage, n)
		if err != nil {
			e.t.Fatal(err)
		}
		if r != nil && r.ID == id {
			r.ExpiresAt = exp
			if err := putJSON(ctx, e.storage, revocationEntryPrefix+n, r); err != nil {
				e.t.Fatal(err)
			}
		}
	}
}
