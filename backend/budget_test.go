package backend

import (
	"testing"
	"time"
)

func TestPeriodStartsAtFixedBoundaries(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	tests := []struct {
		now    time.Time
		period time.Duration
		want   time.Time
	}{
		{time.Date(2026, 11, 23, 23, 59, 59, 0, time.UTC), 24 * time.Hour, time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)},
		{time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), 24 * time.Hour, time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)},
		// 00:30 in Berlin is still the 23rd in UTC: periods are UTC.
		{time.Date(2026, 11, 24, 0, 30, 0, 0, berlin), 24 * time.Hour, time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)},
		{time.Date(2026, 11, 23, 10, 59, 59, 999, time.UTC), time.Hour, time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)},
		{time.Date(2026, 11, 23, 10, 0, 7, 0, time.UTC), 5 * time.Second, time.Date(2026, 11, 23, 10, 0, 5, 0, time.UTC)},
		// A week starts on Monday (0001-01-01 was a Monday); 2026-11-23 is one.
		{time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC), 7 * 24 * time.Hour, time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		if got := periodStart(tt.now, tt.period); !got.Equal(tt.want) {
			t.Errorf("periodStart(%s, %s) = %s, want %s", tt.now, tt.period, got, tt.want)
		}
	}
}

func TestAccountAcrossPeriodBoundary(t *testing.T) {
	period := time.Hour
	t0 := time.Date(2026, 11, 23, 10, 59, 0, 0, time.UTC)
	a := &account{}
	a.roll(t0, period)
	a.addReservation("old", &reservation{PeriodStart: a.PeriodStart, Units: 40, TTL: 10 * time.Minute, ExpiresAt: t0.Add(10 * time.Minute)})
	if err := a.report("old", 25, t0); err != nil {
		t.Fatal(err)
	}
	if a.Used != 25 || a.reserved() != 15 || a.remaining(100) != 60 {
		t.Fatalf("before the boundary: used %d reserved %d remaining %d, want 25 15 60", a.Used, a.reserved(), a.remaining(100))
	}

	// The new period starts empty; the old reservation no longer counts.
	t1 := time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)
	a.roll(t1, period)
	if a.Used != 0 || a.reserved() != 0 || a.remaining(100) != 100 {
		t.Fatalf("after the boundary: used %d reserved %d remaining %d, want 0 0 100", a.Used, a.reserved(), a.remaining(100))
	}
	// Use reported late on the old reservation belongs to the old period.
	if err := a.report("old", 30, t1); err != nil {
		t.Fatal(err)
	}
	if a.Used != 0 {
		t.Fatalf("late use of the last period counted in the new one: used %d", a.Used)
	}
}

func TestAccountReportRules(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	a := &account{}
	a.roll(now, time.Hour)
	a.addReservation("r", &reservation{PeriodStart: a.PeriodStart, Units: 10, TTL: time.Minute, ExpiresAt: now.Add(time.Minute)})

	// A retried report counts once.
	for range 2 {
		if err := a.report("r", 4, now); err != nil {
			t.Fatal(err)
		}
	}
	if a.Used != 4 {
		t.Fatalf("used %d after the same report twice, want 4", a.Used)
	}
	if err := a.report("r", 3, now); err == nil || a.Used != 4 {
		t.Fatalf("a report going down: err %v, used %d; want an error and used 4", err, a.Used)
	}
	if err := a.report("nope", 3, now); err != errUnknownReservation || a.Used != 4 {
		t.Fatalf("unknown reservation: err %v, used %d", err, a.Used)
	}
	// Use beyond the reservation is recorded as it is; reserved never goes negative.
	if err := a.report("r", 12, now); err != nil || a.Used != 12 || a.reserved() != 0 {
		t.Fatalf("overrun: err %v used %d reserved %d, want nil 12 0", err, a.Used, a.reserved())
	}
	// A report renews the reservation; without one it expires and its unused units come back.
	later := now.Add(50 * time.Second)
	if err := a.report("r", 12, later); err != nil {
		t.Fatal(err)
	}
	a.roll(later.Add(59*time.Second), time.Hour)
	if a.Reservations["r"] == nil {
		t.Fatal("a renewed reservation expired early")
	}
	a.roll(later.Add(time.Minute), time.Hour)
	if a.Reservations["r"] != nil {
		t.Fatal("an unrenewed reservation did not expire")
	}
	if a.remaining(0) != -1 || a.remaining(5) != 0 {
		t.Fatalf("remaining(0) = %d (want -1, unlimited), remaining(5) = %d (want 0)", a.remaining(0), a.remaining(5))
	}
}
