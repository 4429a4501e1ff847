package sidecar

import (
	"context"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// A metered allow tells the client what is left (as the proxy's response
// does), never the service; an identity value is handed to the adapter as
// it is, for it to refuse what its protocol cannot carry
// (extauthz.TestGRPCAllowAnswer).
func TestCheckAllowAnswer(t *testing.T) {
	sc := testBudgets(t)
	now := time.Now()
	m := &meter{id: "k", central: 100}
	m.cur = &chunk{granted: 10, periodEnd: now.Add(time.Hour), expiresAt: now.Add(time.Minute)}
	h, _, _ := m.tryLocked(now, 3, false)
	if h == nil {
		t.Fatal("no hold")
	}
	h.b = sc.budgets
	d := decision{status: http.StatusOK, reason: reasonOK, id: &identity{id: "kid", subject: "key:kid", role: "svc", scopes: []string{"read"}}, hold: h, rt: &route{cost: 1}}
	v := sc.allowed(d, http.Header{})
	if len(v.Response) != 1 || v.Response[0].Name != headerRemaining || v.Response[0].Value == "" {
		t.Fatalf("response headers %v, want %s", v.Response, headerRemaining)
	}
	if len(v.Set) != len(identityHeaders) {
		t.Fatalf("set %v, want the %d identity headers", v.Set, len(identityHeaders))
	}
	for i, f := range v.Set {
		if strings.EqualFold(f.Name, headerRemaining) {
			t.Fatalf("X-Budget-Remaining goes to the service: %v", f)
		}
		if f.Name != identityHeaders[i] {
			t.Errorf("set %d is %s, want %s", i, f.Name, identityHeaders[i])
		}
	}
	d.id.subject = "bad\nvalue"
	if v := sc.allowed(d, http.Header{}); v.Set[0].Value != "bad\nvalue" {
		t.Fatalf("subject %q", v.Set[0].Value)
	}
	v.Settle(true)
}

// grpcFixture is the fixture with grpc_listen on and trusted gateways,
// asked through Check as the gRPC adapter (package extauthz, tested there
// over gRPC) asks it.
func grpcFixture(t *testing.T, trusted []string, mutate func(c *Config)) (*fixture, func(gateway string) checkClient) {
	t.Helper()
	f := newFixture(t, func(c *Config) {
		c.TrustedProxies, c.GRPCListen = trusted, "127.0.0.1:0"
		if mutate != nil {
			mutate(c)
		}
	})
	return f, func(gateway string) checkClient { return gatewayAt(f.sc, gateway) }
}

// checkClient asks a sidecar from one gateway's address.
type checkClient struct {
	sc      *Sidecar
	gateway netip.Addr
}

func gatewayAt(sc *Sidecar, addr string) checkClient {
	return checkClient{sc: sc, gateway: netip.MustParseAddr(addr)}
}

// checkRequest is what Envoy reports of a request from source (its
// downstream peer; "" for none), with canonical header keys.
func checkRequest(method, path, source string, h http.Header) CheckRequest {
	req := CheckRequest{Method: method, Target: path, Header: http.Header{}}
	for k, vs := range h {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		req.Header[ck] = append(req.Header[ck], vs...)
	}
	if source != "" {
		req.ClientIP = netip.MustParseAddr(source)
	}
	return req
}

func check(t *testing.T, c checkClient, req CheckRequest) Verdict {
	t.Helper()
	req.Gateway = c.gateway
	return c.sc.Check(context.Background(), req)
}
