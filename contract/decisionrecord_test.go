package contract

import (
	"encoding/json"
	"testing"
	"time"
)

// A record's time reads back as the instant it was written at, and a
// record survives the trip through JSON whole: the sidecar writes what
// keybroker-audit reads.
func TestDecisionRecordRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 1, 22, 21, 2, 5000, time.FixedZone("CET", 3600))
	s := DecisionTime(at)
	if s != "2026-12-01T21:21:02.000005000Z" {
		t.Fatalf("DecisionTime = %q", s)
	}
	if got, err := ParseDecisionTime(s); err != nil || !got.Equal(at) {
		t.Fatalf("ParseDecisionTime(%q) = %v, %v", s, got, err)
	}
	if got, err := ParseDecisionTime(""); err != nil || !got.IsZero() {
		t.Fatalf("an absent time: %v, %v", got, err)
	}
	if _, err := ParseDecisionTime("yesterday"); err == nil {
		t.Fatal("a time that is not RFC 3339 was read")
	}
	cost := int64(3)
	in := DecisionRecord{Time: s, Type: DecisionType, Mode: "proxy", Outcome: DecisionAllow, Status: 200, Reason: ReasonOK,
		Kind: DecisionKindAPIKey, KeyID: "k", Cost: &cost, Actors: []string{"a"}, Sidecar: "sc-1"}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out DecisionRecord
	if err := json.Unmarshal(b, &out); err != nil || out.KeyID != "k" || *out.Cost != 3 || out.Actors[0] != "a" || out.Outcome != DecisionAllow {
		t.Fatalf("round trip: %s -> %+v, %v", b, out, err)
	}
}
