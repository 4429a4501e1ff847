package sidecar

import (
	"context"
	"sync"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// recordingMeter stands in for the vault client behind the two narrow
// interfaces budgets and clusterRate are handed (budgetVault, rateVault):
// it grants what is asked and records every request, as contract types.
// What the real client sends to a real Vault is tested in e2e.
type recordingMeter struct {
	mu       sync.Mutex
	reserves []contract.BudgetReserve
	reports  []contract.BudgetReport
	rates    []contract.RateReserve
}

func (f *recordingMeter) reserve(_ context.Context, req contract.BudgetReserve) (*contract.BudgetReservation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserves = append(f.reserves, req)
	now := time.Now()
	return &contract.BudgetReservation{Granted: req.Units, Remaining: -1, ReservationID: req.ID + ":1", Units: req.Units,
		PeriodEnd: now.Add(time.Hour).Format(time.RFC3339Nano), ExpiresAt: now.Add(time.Minute).Format(time.RFC3339Nano)}, nil
}

func (f *recordingMeter) report(_ context.Context, req contract.BudgetReport) (*contract.BudgetReportAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, req)
	return &contract.BudgetReportAnswer{Used: req.Used, Remaining: -1, Released: req.Release}, nil
}

func (f *recordingMeter) rateReserve(_ context.Context, req contract.RateReserve) (*contract.RateAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rates = append(f.rates, req)
	return &contract.RateAnswer{Limited: true, Granted: 1, Limit: 4, Window: 4, WindowEnd: time.Now().Add(time.Hour).Format(time.RFC3339Nano)}, nil
}

func testVaultCalls() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "calls"}, []string{"op", "result"})
}

// budgets need nothing of the sidecar: handed a recordingMeter, they reserve
// a chunk for ten requests, charge what a request cost, and report it, then
// release what is left on a final report.
func TestBudgetsOverARecordingMeter(t *testing.T) {
	f := &recordingMeter{}
	calls := testVaultCalls()
	b := newBudgets(f, budgetOptions{reserveRequests: 10, reportInterval: time.Second, reservationTTL: 30 * time.Second, idleRelease: time.Minute, holder: "test"},
		hclog.NewNullLogger(), budgetCounters{spent: prometheus.NewCounter(prometheus.CounterOpts{Name: "spent"}),
			costOverHold: prometheus.NewCounter(prometheus.CounterOpts{Name: "over"}), fallbacks: testVaultCalls(), vaultCalls: calls})
	id := &identity{id: "k", expiresAt: time.Now().Add(time.Hour), budget: &jwtverify.Budget{Units: 1000, MaxCost: 5}}
	h, d := b.acquire(context.Background(), id, 5)
	if h == nil {
		t.Fatalf("acquire: %+v", d)
	}
	h.settle(3)
	want := contract.BudgetReserve{ID: "k", Units: 50, MinUnits: 5, TTL: 30, Holder: "test"}
	if len(f.reserves) != 1 || f.reserves[0] != want {
		t.Fatalf("reserved %+v, want one %+v", f.reserves, want)
	}
	b.report(context.Background(), false)
	b.report(context.Background(), true)
	wantReports := []contract.BudgetReport{{ReservationID: "k:1", Used: 3}, {ReservationID: "k:1", Used: 3, Release: true}}
	if len(f.reports) != 2 || f.reports[0] != wantReports[0] || f.reports[1] != wantReports[1] {
		t.Fatalf("reported %+v, want %+v", f.reports, wantReports)
	}
	if n := testutil.ToFloat64(calls.WithLabelValues("report", "ok")); n != 2 {
		t.Fatalf("%v reports counted ok, want 2", n)
	}
}

// clusterRate asks its rateVault for a JWT's lineage by role and subject.
func TestClusterRateAsksByLineage(t *testing.T) {
	f := &recordingMeter{}
	cr, err := newClusterRate(f, 16, hclog.NewNullLogger(), testVaultCalls())
	if err != nil {
		t.Fatal(err)
	}
	id := &identity{jwt: true, id: "jti-1", role: "agent", subject: "entity-1", rate: &jwtverify.RateLimit{PerSecond: 1, Burst: 4}}
	if _, ok := cr.allow(context.Background(), id); !ok {
		t.Fatal("refused the first request")
	}
	want := contract.RateReserve{ID: "jti-1", Units: 1, Role: "agent", Subject: "entity-1"}
	if len(f.rates) != 1 || f.rates[0] != want {
		t.Fatalf("asked %+v, want %+v", f.rates, want)
	}
}
