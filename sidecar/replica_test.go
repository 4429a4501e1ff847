package sidecar

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// testKey mints a key stamped at minted and the record the plugin would
// publish for it.
func testKey(tb testing.TB, minted time.Time, role, tenant string, scopes ...string) (string, contract.KeyRecord) {
	tb.Helper()
	key, id, err := apikey.GenerateAt(nil, "kb", minted)
	if err != nil {
		tb.Fatal(err)
	}
	sum := sha256.Sum256([]byte(key))
	return key, contract.KeyRecord{
		KeyID: id, Hash: hex.EncodeToString(sum[:]), Role: role, Tenant: tenant, Scopes: scopes,
		ExpiresAt: time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		Budget:    &jwtverify.Budget{Period: 3600, MaxCost: 1},
	}
}

// synced marks the fixture's replica as read and current, as the feed
// does after a snapshot and its first changes.
func synced(sc *Sidecar, recs ...contract.KeyRecord) {
	sc.keyRecords.replica.apply(recs, sc.keyRecords.replica.gen)
	sc.keyRecords.replica.synced.Store(true)
	sc.keyRecords.replica.currentAt.Store(time.Now().UnixNano())
}

func decideKey(sc *Sidecar, key, path, ip string) decision {
	return sc.core.decide(context.Background(), request{method: "GET", target: path, header: http.Header{"X-Api-Key": {key}}, clientIP: netip.MustParseAddr(ip)})
}

func TestReplicaDecides(t *testing.T) {
	f := newFixture(t, nil)
	sc := f.sc
	now := time.Now()
	old := now.Add(-48 * time.Hour) // minted long ago: its record must be held

	good, goodRec := testKey(t, old, "web", "acme", "any", "read")
	goodRec.RateLimit = &jwtverify.RateLimit{PerSecond: 100, Burst: 100}
	revoked, revokedRec := testKey(t, old, "web", "acme", "any")
	revokedRec.Revoked = true
	expired, expiredRec := testKey(t, old, "web", "", "any")
	expiredRec.ExpiresAt = now.Add(-time.Minute).UTC().Format(time.RFC3339)
	bound, boundRec := testKey(t, old, "web", "", "any")
	boundRec.BoundCIDRs = []string{"10.0.0.0/8"}
	unreadable, unreadableRec := testKey(t, old, "web", "", "any")
	unreadableRec.BoundCIDRs = []string{"10.0.0.0/33"} // must not become no bound
	metered, meteredRec := testKey(t, old, "web", "billed", "any")
	forgedOld, _ := testKey(t, old, "web", "", "any")
	forgedNew, _ := testKey(t, now, "web", "", "any")
	// The same key_id with another secret.
	block := make([]byte, 64)
	twin, twinRec := keyWithIDOf(t, old, block), contract.KeyRecord{}
	otherSecret := keyWithIDOf(t, old, block)
	if k1, _ := apikey.Parse(twin); k1.ID != mustParse(t, otherSecret).ID || twin == otherSecret {
		t.Fatal("the twin keys do not share a key_id")
	}
	sum := sha256.Sum256([]byte(twin))
	twinRec = goodRec
	twinRec.KeyID, twinRec.Hash = mustParse(t, twin).ID, hex.EncodeToString(sum[:])

	synced(sc, goodRec, revokedRec, expiredRec, boundRec, unreadableRec, meteredRec, twinRec)
	sc.keyRecords.replica.setMetered([]string{"billed"})

	for _, c := range []struct {
		name, key, path, ip string
		status              int
		reason              string
	}{
		{"twin held", twin, "/v1/x", "127.0.0.1", http.StatusOK, contract.ReasonOK},
		{"held key", good, "/v1/x", "127.0.0.1", http.StatusOK, contract.ReasonOK},
		{"held key, missing scope", good, "/v1/admin", "127.0.0.1", http.StatusForbidden, contract.ReasonInsufficientScope},
		{"revoked", revoked, "/x", "127.0.0.1", http.StatusUnauthorized, contract.ReasonRevoked},
		{"expired", expired, "/x", "127.0.0.1", http.StatusUnauthorized, contract.ReasonExpired},
		{"bound, outside", bound, "/x", "127.0.0.1", http.StatusUnauthorized, contract.ReasonCIDRDenied},
		{"bound, inside", bound, "/x", "10.1.2.3", http.StatusOK, contract.ReasonOK},
		// A record the sidecar cannot read is dropped: the key is refused,
		// never let in without its bound.
		{"unreadable bound", unreadable, "/x", "10.1.2.3", http.StatusUnauthorized, contract.ReasonInvalid},
		{"known id, other secret", otherSecret, "/x", "127.0.0.1", http.StatusUnauthorized, contract.ReasonInvalid},
		{"unknown id minted long ago", forgedOld, "/x", "127.0.0.1", http.StatusUnauthorized, contract.ReasonInvalid},
		// The fixture's Vault is down: the fallback for a key minted
		// moments ago fails closed.
		{"unknown id minted moments ago", forgedNew, "/x", "127.0.0.1", http.StatusServiceUnavailable, contract.ReasonUnavailable},
	} {
		d := decideKey(sc, c.key, c.path, c.ip)
		if d.status != c.status || d.reason != c.reason {
			t.Errorf("%s: %d %s, want %d %s", c.name, d.status, d.reason, c.status, c.reason)
		}
	}
	if n := testutil.ToFloat64(sc.m.replicaFallback); n != 1 {
		t.Errorf("%v fallbacks to Vault, want 1 (the key minted moments ago)", n)
	}
	if n := testutil.ToFloat64(sc.m.replicaRefused); n != 2 {
		t.Errorf("%v refused offline, want 2 (the unknown id and the unreadable record)", n)
	}

	// What the record says reaches the identity.
	d := decideKey(sc, good, "/v1/x", "127.0.0.1")
	if id := d.id; id.id != goodRec.KeyID || id.subject != "key:"+goodRec.KeyID || id.role != "web" || id.tenant != "acme" ||
		id.budget != nil || id.rate == nil || id.rate.PerSecond != 100 || id.lineageKey == "" {
		t.Fatalf("identity = %+v", id)
	}
	if id, _ := sc.apiKeys.check(context.Background(), presentation{cred: metered, clientIP: netip.MustParseAddr("127.0.0.1")}); id == nil || id.budget == nil {
		t.Fatalf("a key of a metered tenant is not metered: %+v", id)
	}
	// A ceiling removed: no longer metered.
	sc.keyRecords.replica.setMetered(nil)
	if id, _ := sc.apiKeys.check(context.Background(), presentation{cred: metered, clientIP: netip.MustParseAddr("127.0.0.1")}); id == nil || id.budget != nil {
		t.Fatalf("a key whose tenant lost its ceiling is still metered: %+v", id)
	}
}

// keyWithIDOf mints another key with key's key_id and its own secret:
// the id's random part is the first block the generator reads.
func keyWithIDOf(tb testing.TB, minted time.Time, block []byte) string {
	tb.Helper()
	key, _, err := apikey.GenerateAt(io.MultiReader(bytes.NewReader(block), crand.Reader), "kb", minted)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

// A replica never read refuses keys (key_records_unknown); one read once but
// not confirmed within max_stale, or turned off, sends keys to Vault.
func TestReplicaNotUsable(t *testing.T) {
	now := time.Now()
	key, rec := testKey(t, now.Add(-48*time.Hour), "web", "", "any")
	for _, c := range []struct {
		name  string
		setup func(sc *Sidecar)
		want  string
	}{
		// Not read to its end yet: what was revoked or suspended is
		// unknown, and the key is refused without asking Vault.
		{"not read yet", func(sc *Sidecar) {
			sc.keyRecords.health.read.Store(false)
			sc.keyRecords.replica.apply([]contract.KeyRecord{rec}, 0)
		}, contract.ReasonKeyRecordsUnknown},
		{"stale", func(sc *Sidecar) {
			synced(sc, rec)
			sc.keyRecords.replica.currentAt.Store(now.Add(-sc.s.maxStale).UnixNano())
		}, contract.ReasonUnavailable},
	} {
		f := newFixture(t, nil)
		c.setup(f.sc)
		if d := decideKey(f.sc, key, "/x", "127.0.0.1"); d.reason != c.want {
			t.Errorf("%s: %d %s; want %s (the Vault path is down here: unavailable)", c.name, d.status, d.reason, c.want)
		}
	}
	off := false
	f := newFixture(t, func(c *Config) { c.KeyReplica = &off })
	if f.sc.keyRecords != nil {
		t.Fatal("key_replica = false still keeps a replica")
	}
}

// An unanswered long poll vouches for the replica until its wait ends.
func TestReplicaCurrentWhileLongPolling(t *testing.T) {
	r := newKeyReplica()
	r.synced.Store(true)
	now := time.Now()
	r.currentAt.Store(now.Add(-time.Minute).UnixNano())
	if r.usable(now, 30*time.Second) {
		t.Fatal("a replica last confirmed a minute ago is usable")
	}
	r.pollUntil.Store(now.Add(10 * time.Second).UnixNano())
	if !r.usable(now, 30*time.Second) {
		t.Fatal("a replica with a long poll out is not usable")
	}
	if r.usable(now.Add(45*time.Second), 30*time.Second) {
		t.Fatal("a long poll unanswered 35s past its wait still vouches")
	}
}

// A snapshot read again keeps what it sees and drops what it no longer
// has; gone records and expired ones go.
func TestReplicaSweepAndPrune(t *testing.T) {
	r := newKeyReplica()
	now := time.Now()
	_, a := testKey(t, now, "web", "", "read")
	_, b := testKey(t, now, "web", "", "read")
	_, c := testKey(t, now, "other", "", "read")
	r.apply([]contract.KeyRecord{a, b, c}, r.newGen())
	if r.size() != 3 || len(r.shapes) != 2 {
		t.Fatalf("%d records, %d shapes; want 3 and 2 (a and b share one)", r.size(), len(r.shapes))
	}
	gen := r.newGen()
	r.apply([]contract.KeyRecord{a}, gen)
	r.sweep(gen)
	if rec, _, _ := r.lookup(a.KeyID); rec == nil || r.size() != 1 || len(r.shapes) != 1 {
		t.Fatalf("after a snapshot with only a: %d records, %d shapes", r.size(), len(r.shapes))
	}
	r.apply([]contract.KeyRecord{{KeyID: a.KeyID, Gone: true}}, gen)
	if r.size() != 0 || len(r.shapes) != 0 {
		t.Fatalf("a gone record: %d records, %d shapes stayed", r.size(), len(r.shapes))
	}
	b.ExpiresAt = now.Add(-expiredRecordGrace - time.Minute).UTC().Format(time.RFC3339)
	c.ExpiresAt = now.Add(-time.Minute).UTC().Format(time.RFC3339)
	r.apply([]contract.KeyRecord{b, c}, gen)
	r.prune(now)
	if rec, _, _ := r.lookup(b.KeyID); rec != nil {
		t.Fatal("a record expired past the grace stayed")
	}
	if rec, _, _ := r.lookup(c.KeyID); rec == nil {
		t.Fatal("a record expired within the grace went")
	}
	if len(r.shapes) != 1 {
		t.Fatalf("%d shapes for one record", len(r.shapes))
	}
	// A record replaced by one of another shape lets the old shape go.
	c.Role = "third"
	r.apply([]contract.KeyRecord{c}, gen)
	if len(r.shapes) != 1 || r.shapes[shapeKey(&c)] == nil {
		t.Fatalf("after a record changed shape: %d shapes", len(r.shapes))
	}
	// Records that cannot be read are dropped, and counted.
	bad := []contract.KeyRecord{{KeyID: c.KeyID, Hash: "zz"}, {KeyID: "../etc", Hash: c.Hash}}
	if n := r.apply(bad, gen); n != 2 {
		t.Fatalf("%d bad records counted, want 2", n)
	}
	if rec, _, _ := r.lookup(c.KeyID); rec != nil {
		t.Fatal("a record replaced by an unreadable one stayed")
	}
}

// BenchmarkCheckKeyReplica is an API key verified from the replica, a
// different key each request: every key is as cold as every other.
func BenchmarkCheckKeyReplica(b *testing.B) {
	f := newFixture(b, nil)
	old := time.Now().Add(-48 * time.Hour)
	const n = 4096
	keys := make([]string, n)
	recs := make([]contract.KeyRecord, n)
	for i := range keys {
		keys[i], recs[i] = testKey(b, old, "web", "acme", "read")
	}
	synced(f.sc, recs...)
	ip := netip.MustParseAddr("127.0.0.1")
	ctx := context.Background()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if id, _ := f.sc.apiKeys.check(ctx, presentation{cred: keys[i%n], clientIP: ip}); id == nil {
			b.Fatal("denied")
		}
		i++
	}
}

// BenchmarkReplicaRecordBytes measures the heap one record takes: 100,000
// records of 10 roles, as a fleet's keys share roles.
func BenchmarkReplicaRecordBytes(b *testing.B) {
	const n = 100_000
	old := time.Now().Add(-48 * time.Hour)
	recs := make([]contract.KeyRecord, n)
	for i := range recs {
		_, recs[i] = testKey(b, old.Add(time.Duration(i)*time.Second), "role-"+strconv.Itoa(i%10), "tenant", "read", "write")
		recs[i].BoundCIDRs = []string{"10.0.0.0/8"}
	}
	var perRecord float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		r := newKeyReplica()
		for i := 0; i < n; i += 1000 {
			r.apply(recs[i:i+1000], 0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perRecord = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(r)
	}
	b.ReportMetric(perRecord, "B/record")
}

func mustParse(tb testing.TB, key string) apikey.Key {
	tb.Helper()
	k, err := apikey.Parse(key)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// BenchmarkReplica1M is the sidecar's side of a key-record sync at a
// million keys: each page of 1000 records as the plugin sends it (JSON),
// decoded and applied, with what the process holds at the end. Run it once:
//
//	go test -run '^$' -bench 'Replica1M$' -benchtime 1x ./sidecar
//
// It reports the time per record (decode and apply), heap bytes per record
// held, and the process's peak RSS (VmHWM) holding a million records.
func BenchmarkReplica1M(b *testing.B) {
	const pages, per = 1000, contract.MaxKeyRecordPage
	old := time.Now().Add(-48 * time.Hour)
	page := make([]contract.KeyRecord, per)
	var work, cpu time.Duration
	var r *keyReplica
	for b.Loop() {
		r = newKeyReplica()
		gen := r.newGen()
		for p := 0; p < pages; p++ {
			for i := range page {
				// A second apart: ids stamped with one second would
				// collide (7 random characters), as the plugin never lets them.
				_, page[i] = testKey(b, old.Add(time.Duration(p*per+i)*time.Second), "role-"+strconv.Itoa(i%10), "tenant", "read", "write")
				page[i].BoundCIDRs = []string{"10.0.0.0/8"}
			}
			body, err := json.Marshal(map[string]any{"data": contract.KeyRecordsPage{Records: page}})
			if err != nil {
				b.Fatal(err)
			}
			start, startCPU := time.Now(), cpuTime()
			var got struct {
				Data contract.KeyRecordsPage `json:"data"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				b.Fatal(err)
			}
			r.apply(got.Data.Records, gen)
			work += time.Since(start)
			cpu += cpuTime() - startCPU
		}
		r.sweep(gen)
	}
	reportReplicaSync(b, r, pages*per, work, cpu)
}

// BenchmarkReplica1MPacked is BenchmarkReplica1M with the pages packed
// (contract.FormatPacked1, 10,000 records a page, as the plugin sends
// them to a sidecar that asks): base64 and the packed form decoded, and
// applied. Run it alone, for its VmHWM:
//
//	go test -run '^$' -bench 'Replica1MPacked$' -benchtime 1x ./sidecar
func BenchmarkReplica1MPacked(b *testing.B) {
	const pages, per = 100, contract.MaxPackedKeyRecordPage
	old := time.Now().Add(-48 * time.Hour)
	page := make([]contract.KeyRecord, per)
	var work, cpu time.Duration
	var r *keyReplica
	for b.Loop() {
		r = newKeyReplica()
		gen := r.newGen()
		for p := 0; p < pages; p++ {
			for i := range page {
				_, page[i] = testKey(b, old.Add(time.Duration(p*per+i)*time.Second), "role-"+strconv.Itoa(i%10), "tenant", "read", "write")
				page[i].BoundCIDRs = []string{"10.0.0.0/8"}
			}
			body, err := json.Marshal(map[string]any{"data": contract.KeyRecordsPage{Format: contract.FormatPacked1, Packed: packRecords(b, page)}})
			if err != nil {
				b.Fatal(err)
			}
			start, startCPU := time.Now(), cpuTime()
			var got struct {
				Data contract.KeyRecordsPage `json:"data"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				b.Fatal(err)
			}
			if _, err := r.applyPacked(got.Data.Packed, gen); err != nil {
				b.Fatal(err)
			}
			work += time.Since(start)
			cpu += cpuTime() - startCPU
		}
		r.sweep(gen)
	}
	reportReplicaSync(b, r, pages*per, work, cpu)
}

// reportReplicaSync reports what applying n records a run cost: elapsed
// and CPU time a record, heap a record held, and the process's VmHWM.
func reportReplicaSync(b *testing.B, r *keyReplica, n int, work, cpu time.Duration) {
	if r.size() != n {
		b.Fatalf("holds %d records", r.size())
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(work.Nanoseconds())/float64(n)/float64(b.N), "ns/record")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(n)/float64(b.N), "cpu-ns/record")
	b.ReportMetric(float64(ms.HeapAlloc)/float64(n), "heap-B/record")
	if hwm, err := vmHWM(); err == nil {
		b.ReportMetric(float64(hwm)/(1<<20), "VmHWM-MiB")
	}
	runtime.KeepAlive(r)
}

// cpuTime is the CPU time this process used so far (user and system, its
// garbage collector's too): on a shared machine a truer cost than the
// time that passed.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// vmHWM is this process's peak resident set, in bytes.
func vmHWM() (int64, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM")
}

// A key minted since the replica was last confirmed may be missing from it:
// the window in which an unknown key_id goes to Vault grows by that age.
func TestReplicaFallbackWindowFollowsLag(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxStale = "60s" })
	now := time.Now()
	synced(f.sc)
	f.sc.keyRecords.replica.currentAt.Store(now.Add(-40 * time.Second).UnixNano())
	mintedSince, _ := testKey(t, now.Add(-50*time.Second), "web", "", "any")
	mintedBefore, _ := testKey(t, now.Add(-80*time.Second), "web", "", "any")
	if d := decideKey(f.sc, mintedSince, "/x", "127.0.0.1"); d.reason != contract.ReasonUnavailable {
		t.Errorf("a key minted 50s ago, replica confirmed 40s ago: %s; want the Vault path (down here)", d.reason)
	}
	if d := decideKey(f.sc, mintedBefore, "/x", "127.0.0.1"); d.reason != contract.ReasonInvalid {
		t.Errorf("a key minted 80s ago, replica confirmed 40s ago: %s; want refused offline", d.reason)
	}
}

// A role's suspension comes as a list in each page, not in the records: a
// key of a suspended role is refused whatever its record says, and its own
// suspension outlasts the role's.
func TestReplicaRoleSuspension(t *testing.T) {
	f := newFixture(t, nil)
	sc := f.sc
	old := time.Now().Add(-48 * time.Hour)
	web, webRec := testKey(t, old, "web", "", "any")
	own, ownRec := testKey(t, old, "web", "", "any")
	ownRec.Suspended = true
	other, otherRec := testKey(t, old, "other", "", "any")
	synced(sc, webRec, ownRec, otherRec)

	check := func(when string, want map[string]string) {
		t.Helper()
		for key, reason := range want {
			if d := decideKey(sc, key, "/x", "127.0.0.1"); d.reason != reason {
				t.Errorf("%s: %s, want %s", when, d.reason, reason)
			}
		}
	}
	check("before", map[string]string{web: contract.ReasonOK, own: contract.ReasonSuspended, other: contract.ReasonOK})
	sc.keyRecords.replica.setSuspendedRoles([]string{"web"})
	check("role suspended", map[string]string{web: contract.ReasonSuspended, own: contract.ReasonSuspended, other: contract.ReasonOK})
	sc.keyRecords.replica.setSuspendedRoles([]string{})
	check("role resumed", map[string]string{web: contract.ReasonOK, own: contract.ReasonSuspended, other: contract.ReasonOK})
}
