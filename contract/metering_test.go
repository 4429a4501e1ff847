package contract

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"testing"
)

// Each answer's Data, which the plugin answers with, is the JSON a verifier
// decodes into the answer type: the same fields, left out alike.
func TestAnswerDataIsTheJSON(t *testing.T) {
	units := int64(40)
	for _, tc := range []struct {
		name string
		ans  interface{ Data() map[string]interface{} }
	}{
		{"reservation", &BudgetReservation{Granted: 40, Limit: 100, PeriodEnd: "2030-01-01T00:00:00Z", Remaining: 60, ReservationID: "k:1", Units: 40, ExpiresAt: "2030-01-01T00:00:30Z"}},
		{"reservation exhausted", &BudgetReservation{Exhausted: true, Limit: 100, PeriodEnd: "2030-01-01T00:00:00Z", Reset: "2030-01-01T00:00:00Z"}},
		{"report", &BudgetReportAnswer{Used: 10, Remaining: -1, ExpiresAt: "2030-01-01T00:00:30Z", Units: &units}},
		{"report of an ended reservation", &BudgetReportAnswer{Used: 10, Remaining: 5, Released: true, Capped: true, Ended: EndedExpired}},
		{"rate", &RateAnswer{Limited: true, Granted: 3, Limit: 12, Window: 4, WindowEnd: "2030-01-01T00:00:04Z"}},
		{"rate spent", &RateAnswer{Limited: true, Limit: 12, Window: 4, WindowEnd: "2030-01-01T00:00:04Z"}},
		{"rate unlimited", &RateAnswer{Granted: 7}},
		{"key usage", &KeyUsageAnswer{Recorded: 2, Skipped: 1}},
		{"key usage duplicate", &KeyUsageAnswer{Duplicate: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := roundTrip(t, tc.ans.Data()), roundTrip(t, tc.ans); !reflect.DeepEqual(got, want) {
				t.Fatalf("Data() %v, JSON %v", got, want)
			}
		})
	}
}

// The requests' JSON names are the Field constants the plugin reads.
func TestRequestFields(t *testing.T) {
	for _, tc := range []struct {
		req  any
		want []string
	}{
		{BudgetReserve{ID: "k", ReservationID: "k:1", Units: 1, MinUnits: 1, TTL: 30, Holder: "h"},
			[]string{FieldID, FieldReservationID, FieldUnits, FieldMinUnits, FieldTTL, FieldHolder}},
		{BudgetReport{ReservationID: "k:1", Used: 1, Release: true}, []string{FieldReservationID, FieldUsed, FieldRelease}},
		{RateReserve{ID: "j", Units: 1, Role: "r", Subject: "s"}, []string{FieldID, FieldUnits, FieldRole, FieldSubject}},
		{KeyUsageReport{Usage: "[]", ReportID: "x"}, []string{FieldUsage, FieldReportID}},
	} {
		got := slices.Sorted(maps.Keys(roundTrip(t, tc.req)))
		if want := slices.Sorted(slices.Values(tc.want)); !slices.Equal(got, want) {
			t.Errorf("%T sends %v, want %v", tc.req, got, want)
		}
	}
}

func roundTrip(t *testing.T, v any) map[string]interface{} {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]interface{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}
