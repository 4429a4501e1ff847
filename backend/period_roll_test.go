package backend

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A pool or an account rolled to a time before its period (a clock read
// before another request rolled it on) stays in its period: going back
// would wipe the period's use and holds.
func TestRollNeverGoesBackAPeriod(t *testing.T) {
	start := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		now       time.Time
		wantStart time.Time
		wantUsed  int64
	}{
		{"a moment before", start.Add(-time.Millisecond), start, 7},
		{"a period before", start.Add(-time.Hour), start, 7},
		{"in the period", start.Add(time.Minute), start, 7},
		{"the next period", start.Add(time.Hour), start.Add(time.Hour), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pool{PeriodStart: start, Used: 7, Held: map[int64]int64{start.Add(30 * time.Minute).Unix(): 3}}
			p.roll(tt.now, time.Hour)
			if !p.PeriodStart.Equal(tt.wantStart) || p.Used != tt.wantUsed {
				t.Errorf("pool rolled to %s: period %s used %d, want %s and %d", tt.now, p.PeriodStart, p.Used, tt.wantStart, tt.wantUsed)
			}
			if tt.wantUsed != 0 && p.reserved() != 3 {
				t.Errorf("pool rolled to %s holds %d, want 3", tt.now, p.reserved())
			}
			a := account{PeriodStart: start, Used: 7}
			a.roll(tt.now, time.Hour)
			if !a.PeriodStart.Equal(tt.wantStart) || a.Used != tt.wantUsed {
				t.Errorf("account rolled to %s: period %s used %d, want %s and %d", tt.now, a.PeriodStart, a.Used, tt.wantStart, tt.wantUsed)
			}
		})
	}
}

// Changing a tenant's budget_period starts a new period, whether it
// starts after the current one (a shorter period) or before it (a longer
// one): roll refuses only a now before the current period, not a period
// that starts before it.
func TestChangingTenantPeriodStartsANewPeriod(t *testing.T) {
	tests := []struct{ name, from, to string }{
		{"longer", "1s", "86400s"},
		{"shorter", "86400s", "1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 100, "budget_period": tt.from})
			e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme"})
			id := e.mint("r", nil).Data["key_id"].(string)
			if resp, err := e.reserveAs("a", id, 60); err != nil || resp.IsError() {
				t.Fatalf("reserve: %v %v", err, resp)
			}
			e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget_period": tt.to})
			if got := e.spend("tenants/acme"); got != [4]int64{100, 0, 0, 100} {
				t.Fatalf("tenant after budget_period %s -> %s: %v, want a new period", tt.from, tt.to, got)
			}
		})
	}
}

// readGate holds the next read of one storage path until released.
type readGate struct {
	logical.Storage
	mu            sync.Mutex
	path          string
	held, release chan struct{}
}

func (g *readGate) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	g.mu.Lock()
	var held, release chan struct{}
	if key == g.path && g.release != nil {
		held, release = g.held, g.release
		g.held, g.release = nil, nil
	}
	g.mu.Unlock()
	if release != nil {
		close(held)
		<-release
	}
	return g.Storage.Get(ctx, key)
}

// A reserve held reading its meter while another meter of the tenant
// rolls the tenant into a new period does not roll the tenant back to
// the period it began in: the new period's holds stay, and its ceiling
// is granted once.
func TestSlowReserveDoesNotRollTheTenantBack(t *testing.T) {
	// A machine so loaded that the last reserve falls in the period
	// after tries again: there, its grant is due.
	for try := 0; try < 3; try++ {
		if bGranted, cGranted, ok := reserveAcrossARoll(t); ok {
			if bGranted+cGranted > 100 {
				t.Fatalf("in one tenant period of ceiling 100, %d and %d were granted (%d)", bGranted, cGranted, bGranted+cGranted)
			}
			return
		}
	}
	t.Skip("three tries each outlasted a 2s period")
}

// reserveAcrossARoll holds a reserve reading its meter across the start
// of a tenant's period, reserves on another meter of the tenant in the
// new period before and after letting it go, and returns the two grants,
// and whether both fell in that period.
func reserveAcrossARoll(t *testing.T) (bGranted, cGranted int64, ok bool) {
	e := newTestEnv(t)
	g := &readGate{Storage: e.storage}
	e.storage = g
	e.ok(logical.UpdateOperation, "tenants/acme", map[string]interface{}{"budget": 100, "budget_period": "2s"})
	e.createRole("r", map[string]interface{}{"scopes": "read", "tenant": "acme"})
	a := e.mint("r", nil).Data["key_id"].(string)
	b := e.mint("r", nil).Data["key_id"].(string)
	reserveAs := func(who, id string) int64 {
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "budget/reserve", Storage: e.storage,
			EntityID: who, MountPoint: "keybroker/", Data: map[string]interface{}{"id": id, "units": 60, "min_units": 60, "ttl": 60}})
		if err != nil || resp.IsError() {
			t.Errorf("reserve %s on %s: %v %v", who, id, err, resp)
			return 0
		}
		return resp.Data["granted"].(int64)
	}
	// Start early in a period.
	for time.Now().UnixMilli()%2000 > 200 {
		time.Sleep(5 * time.Millisecond)
	}
	p1 := time.Now().Truncate(2 * time.Second).Add(2 * time.Second)
	g.mu.Lock()
	g.path, g.held, g.release = meterPath(a), make(chan struct{}), make(chan struct{})
	held, release := g.held, g.release
	g.mu.Unlock()
	aGranted := make(chan int64)
	go func() { aGranted <- reserveAs("x", a) }() // begun in this period, then held reading its meter
	<-held
	time.Sleep(time.Until(p1) + 100*time.Millisecond)
	bGranted = reserveAs("y", b) // the next period: the tenant rolled, 60 held
	close(release)
	<-aGranted
	cGranted = reserveAs("z", b)
	return bGranted, cGranted, time.Now().Before(p1.Add(2 * time.Second))
}
