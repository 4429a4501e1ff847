package contract

import (
	"encoding/binary"
	"math"
	"runtime"
	"testing"

	"github.com/keybroker/keybroker/jwtverify"
)

// A page's claimed count of shapes is bounded only by len/6, and a
// KeyShape is 112 bytes: a 3 MB page (a plugin's largest packed page is
// about that) claiming 500,000 empty shapes makes UnpackKeyRecords
// allocate some 56 MB before it fails. A real page never has more
// shapes than records (MaxPackedKeyRecordPage).
func TestReviewUnpackAllocationBounded(t *testing.T) {
	const n = 500_000
	raw := binary.AppendUvarint([]byte{packedVersion1}, n)
	raw = append(raw, make([]byte, 6*n)...) // n empty shapes, then no record count
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, _, err := UnpackKeyRecords(raw)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a page without records was read")
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4*uint64(len(raw)) {
		t.Fatalf("unpacking a %d-byte page allocated %d bytes (%.1fx)", len(raw), alloc, float64(alloc)/float64(len(raw)))
	}
}

// JSON cannot carry a non-finite rate limit; the packed form can, and a
// sidecar's limiter takes +Inf as no limit at all.
func TestReviewUnpackRefusesNonFiniteRate(t *testing.T) {
	for _, v := range []float64{math.Inf(1), math.NaN(), -1} {
		var p KeyRecordPacker
		sh := p.AddShape(&KeyShape{Role: "r", RateLimit: &jwtverify.RateLimit{PerSecond: v, Burst: 1}})
		if err := p.AddRecord(&PackedKeyRecord{KeyID: "xai000000001", ExpiresAt: 1 << 40, Shape: sh}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := UnpackKeyRecords(p.Bytes()); err == nil {
			t.Errorf("a page with per_second %v was read", v)
		}
	}
}

// A page holding one key twice is not one a plugin sends; read as it is,
// the last record wins (a revoked record followed by a live one).
func TestReviewUnpackRefusesDuplicateKeyIDs(t *testing.T) {
	var p KeyRecordPacker
	sh := p.AddShape(&KeyShape{Role: "r"})
	for _, revoked := range []bool{true, false} {
		if err := p.AddRecord(&PackedKeyRecord{KeyID: "xai000000001", ExpiresAt: 1 << 40, Revoked: revoked, Shape: sh}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := UnpackKeyRecords(p.Bytes()); err == nil {
		t.Error("a page holding one key_id twice was read")
	}
}
