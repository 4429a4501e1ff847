package contract

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/jwtverify"
)

func packedSample(t *testing.T) ([]KeyShape, []PackedKeyRecord, []byte) {
	t.Helper()
	shapes := []KeyShape{
		{Role: "web", Tenant: "acme", Scopes: []string{"read", "write"}, BoundCIDRs: []string{"10.0.0.0/8", "fd00::/8"},
			Budget: &jwtverify.Budget{Units: 100, Period: 3600, MaxCost: 5}, RateLimit: &jwtverify.RateLimit{PerSecond: 2.5, Burst: 10}},
		{Role: "plain"},
		{Role: strings.Repeat("é", 300), JKT: strings.Repeat("A", 43), Budget: &jwtverify.Budget{Period: 86400}},
	}
	var h [32]byte
	for i := range h {
		h[i] = byte(i)
	}
	recs := []PackedKeyRecord{
		{KeyID: "xai0000000aa", Hash: h, ExpiresAt: 1_800_000_000, Shape: 0},
		{KeyID: "xai0000000bb", ExpiresAt: -5, Revoked: true, Suspended: true, ReplacedBy: "xai0000000cc", Shape: 2},
		{KeyID: "xai0000000cc", Hash: h, ExpiresAt: 0, Shape: 1},
	}
	var p KeyRecordPacker
	for i := range shapes {
		if got := p.AddShape(&shapes[i]); got != i {
			t.Fatalf("shape %d got index %d", i, got)
		}
	}
	for i := range recs {
		if err := p.AddRecord(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	b := p.Bytes()
	if len(b) > p.Len() {
		t.Fatalf("Len %d under the %d bytes packed", p.Len(), len(b))
	}
	return shapes, recs, b
}

func TestPackedKeyRecordsRoundTrip(t *testing.T) {
	shapes, recs, b := packedSample(t)
	gotShapes, gotRecs, err := UnpackKeyRecords(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotShapes, shapes) || !reflect.DeepEqual(gotRecs, recs) {
		t.Fatalf("round trip:\n%+v\n%+v", gotShapes, gotRecs)
	}
	var empty KeyRecordPacker
	if s, r, err := UnpackKeyRecords(empty.Bytes()); err != nil || len(s) != 0 || len(r) != 0 {
		t.Fatalf("an empty page: %v %v %v", s, r, err)
	}
}

// Every prefix of a page, every page with a byte changed, another version
// and trailing bytes are refused or read without a panic; a count larger
// than the page allocates nothing.
func TestPackedKeyRecordsDamaged(t *testing.T) {
	_, _, b := packedSample(t)
	for n := 0; n < len(b); n++ {
		if _, _, err := UnpackKeyRecords(b[:n]); !errors.Is(err, ErrPacked) {
			t.Fatalf("the first %d of %d bytes: %v", n, len(b), err)
		}
	}
	for i := range b {
		for _, v := range []byte{0, 0x7f, 0x80, 0xff} {
			c := bytes.Clone(b)
			c[i] = v
			_, _, _ = UnpackKeyRecords(c) // must not panic
		}
	}
	for what, c := range map[string][]byte{
		"version 2":         append([]byte{2}, b[1:]...),
		"trailing bytes":    append(bytes.Clone(b), 0),
		"a forged count":    {1, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"a shape it lacks":  append([]byte{1, 0, 1}, make([]byte, 50)...),
		"unknown flags":     {1, 1, 0, 0, 0, 0, 0, 0, 1, 48 + 3: 0x80, 49 + 3: 0}, // one empty shape, one record
		"no version at all": nil,
	} {
		if _, _, err := UnpackKeyRecords(c); !errors.Is(err, ErrPacked) {
			t.Errorf("%s: %v", what, err)
		}
	}
}

func TestPackedKeyRecordRefused(t *testing.T) {
	var p KeyRecordPacker
	p.AddShape(&KeyShape{})
	for _, r := range []PackedKeyRecord{{KeyID: "short"}, {KeyID: "xai0000000aa", ReplacedBy: "x"}, {KeyID: "xai0000000aa", Shape: 1}} {
		if err := p.AddRecord(&r); err == nil {
			t.Errorf("packed %+v", r)
		}
	}
}

func FuzzUnpackKeyRecords(f *testing.F) {
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		shapes, recs, err := UnpackKeyRecords(b)
		if err != nil {
			return
		}
		for _, r := range recs {
			if r.Shape >= len(shapes) || len(r.KeyID) != packedIDLen {
				t.Fatalf("read a bad record %+v", r)
			}
		}
	})
}

// A page's claimed count of shapes is bounded by the page's length over a
// shape's least size (6 bytes), and a KeyShape in memory is some twenty
// times that: a 3 MB page (a plugin's largest packed page is about that)
// claiming 500,000 empty shapes must not make UnpackKeyRecords allocate
// tens of MB before it fails. A real page never has more shapes than
// records (MaxPackedKeyRecordPage).
func TestUnpackAllocatesNoMoreThanThePageHolds(t *testing.T) {
	for _, n := range []int{500_000, MaxPackedKeyRecordPage} {
		raw := binary.AppendUvarint([]byte{packedVersion1}, uint64(n))
		raw = append(raw, make([]byte, 6*n)...) // n empty shapes, then no record count
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, _, err := UnpackKeyRecords(raw)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatal("a page without records was read")
		}
		if n > MaxPackedKeyRecordPage {
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4*uint64(len(raw)) {
				t.Fatalf("unpacking a %d-byte page allocated %d bytes (%.1fx)", len(raw), alloc, float64(alloc)/float64(len(raw)))
			}
		}
	}
}

// JSON cannot carry a non-finite rate limit; the packed form can, and a
// sidecar's limiter takes +Inf as no limit at all. Nor is a negative rate
// or budget one a plugin sends.
func TestUnpackRefusesBadLimits(t *testing.T) {
	var shapes []KeyShape
	for _, v := range []float64{math.Inf(1), math.Inf(-1), math.NaN(), -1} {
		shapes = append(shapes, KeyShape{Role: "r", RateLimit: &jwtverify.RateLimit{PerSecond: v, Burst: 1}})
	}
	for _, bu := range []jwtverify.Budget{{Units: -1, Period: 60}, {Units: 1, Period: -60}, {Units: 1, Period: 60, MaxCost: -1}} {
		shapes = append(shapes, KeyShape{Role: "r", Budget: &bu})
	}
	for _, sh := range shapes {
		var p KeyRecordPacker
		i := p.AddShape(&sh)
		if err := p.AddRecord(&PackedKeyRecord{KeyID: "xai000000001", ExpiresAt: 1 << 40, Shape: i}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := UnpackKeyRecords(p.Bytes()); !errors.Is(err, ErrPacked) {
			t.Errorf("a page with rate limit %+v and budget %+v was read", sh.RateLimit, sh.Budget)
		}
	}
}

// A plugin sends a page's records in ascending key_id order: a page
// holding one key twice (read as it is, the last record wins: a revoked
// record followed by a live one) or out of order is damaged.
func TestUnpackRefusesKeyIDsOutOfOrder(t *testing.T) {
	for _, ids := range [][]string{{"xai000000001", "xai000000001"}, {"xai000000002", "xai000000001"}, {"xai000000001", "xai000000003", "xai000000002"}} {
		var p KeyRecordPacker
		sh := p.AddShape(&KeyShape{Role: "r"})
		for i, id := range ids {
			if err := p.AddRecord(&PackedKeyRecord{KeyID: id, ExpiresAt: 1 << 40, Revoked: i == 0, Shape: sh}); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := UnpackKeyRecords(p.Bytes()); !errors.Is(err, ErrPacked) {
			t.Errorf("a page of key_ids %v was read", ids)
		}
	}
}
