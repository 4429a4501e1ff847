package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

// The decision core is handed its components, so a test can hand it
// stand-ins: no Sidecar, no Vault, no feed.
type (
	oneRoute  struct{ rt *route }
	feedRead  bool
	revokedOf map[string]bool
	refuseAll struct{ wait time.Duration }
	noBudget  struct{}
	credOf    struct{ id *identity }
	records   struct{ modes []string }
)

func (o oneRoute) match(string, string) (*route, *routeGroup) { return o.rt, nil }
func (f feedRead) known() bool                                { return bool(f) }
func (r revokedOf) has(id string) bool                        { return r[id] }
func (l refuseAll) allow(context.Context, *identity) (time.Duration, bool) {
	return l.wait, l.wait == 0
}
func (noBudget) acquire(context.Context, *identity, int64) (*hold, decision) {
	return nil, deny(http.StatusTooManyRequests, contract.ReasonBudgetExhausted)
}
func (c credOf) check(context.Context, presentation) (*identity, decision) { return c.id, decision{} }
func (r *records) decided(mode string, _ time.Time, _ request, d decision) {
	r.modes = append(r.modes, mode+" "+d.reason)
}

func TestDeciderWithStandIns(t *testing.T) {
	id := &identity{id: "k1", scopes: []string{"read"}, expiresAt: time.Now().Add(time.Hour),
		rate: &jwtverify.RateLimit{PerSecond: 1, Burst: 1}, budget: &jwtverify.Budget{Units: 10, MaxCost: 1}}
	core := func(rt *route, revoked revokedOf, wait time.Duration) (*decider, *records) {
		rec := &records{}
		kind := credOf{id}
		return &decider{
			routes: oneRoute{rt}, revocationFeed: feedRead(true),
			authn:   authenticators{bearerKey: bearer{kind}, bearerJWT: bearer{kind}, dpopKey: bearer{kind}, dpopJWT: bearer{kind}},
			revoked: revoked, rate: refuseAll{wait}, budgets: noBudget{}, rec: rec,
		}, rec
	}
	req := request{method: "GET", target: "/v1/x?a=1", header: http.Header{"X-Api-Key": {"kb_anything"}}, clientIP: netip.MustParseAddr("127.0.0.1")}
	metered := &route{prefix: "/v1", scopes: []string{"read"}, cost: 1, openaiUsage: true}

	for _, tc := range []struct {
		name    string
		rt      *route
		revoked revokedOf
		wait    time.Duration
		status  int
		reason  string
	}{
		{"public", &route{prefix: "/", public: true}, nil, time.Second, http.StatusOK, contract.ReasonOK},
		{"revoked", metered, revokedOf{"k1": true}, time.Second, http.StatusUnauthorized, contract.ReasonRevoked},
		{"scope", &route{prefix: "/v1", scopes: []string{"admin"}}, nil, time.Second, http.StatusForbidden, contract.ReasonInsufficientScope},
		{"rate", metered, nil, time.Second, http.StatusTooManyRequests, contract.ReasonRateLimited},
		{"budget", metered, nil, 0, http.StatusTooManyRequests, contract.ReasonBudgetExhausted},
		{"unmetered", &route{prefix: "/v1", scopes: []string{"read"}}, nil, 0, http.StatusOK, contract.ReasonOK},
	} {
		c, rec := core(tc.rt, tc.revoked, tc.wait)
		d := c.decideAs(context.Background(), "test", req)
		if d.status != tc.status || d.reason != tc.reason {
			t.Errorf("%s: %d %s, want %d %s", tc.name, d.status, d.reason, tc.status, tc.reason)
		}
		if d.path != "/v1/x" || d.rt != tc.rt {
			t.Errorf("%s: decided on %q route %v", tc.name, d.path, d.rt)
		}
		if !tc.rt.public && d.id != id {
			t.Errorf("%s: the decision does not say whose it is", tc.name)
		}
		if d.status == http.StatusTooManyRequests && !d.openai {
			t.Errorf("%s: a 429 on an OpenAI route does not speak its format", tc.name)
		}
		if len(rec.modes) != 1 || rec.modes[0] != "test "+tc.reason {
			t.Errorf("%s: recorded %v", tc.name, rec.modes)
		}
	}
}
