package extauthz

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keybroker/keybroker/sidecar"
)

// stubChecker stands in for the sidecar, as the Checker the service is
// handed: it answers every request with verdict and keeps what it was
// asked. A test of it sees how the adapter reads Envoy's request and
// renders the answer, and nothing of the decision (package sidecar tests
// that, through Check).
type stubChecker struct {
	verdict sidecar.Verdict

	mu  sync.Mutex
	got []sidecar.CheckRequest
}

func (s *stubChecker) Check(_ context.Context, req sidecar.CheckRequest) sidecar.Verdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, req)
	return s.verdict
}

func (s *stubChecker) Limits() sidecar.Limits {
	return sidecar.Limits{MaxHeaderBytes: 1 << 20, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
}

// last is the request the stub was asked last.
func (s *stubChecker) last(t *testing.T) sidecar.CheckRequest {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.got) == 0 {
		t.Fatal("the checker was never asked")
	}
	return s.got[len(s.got)-1]
}

// fixtureRoutes: a public prefix, a catch-all, nested prefixes with their
// own scopes, and a GET-only route.
var fixtureRoutes = []sidecar.RouteConfig{
	{PathPrefix: "/public", Public: true},
	{PathPrefix: "/", Scopes: []string{"any"}},
	{PathPrefix: "/v1/", Scopes: []string{"read"}},
	{PathPrefix: "/v1/admin", Scopes: []string{"admin"}},
	{PathPrefix: "/v1/items", Methods: []string{"GET"}, Scopes: []string{"read"}},
}

// newSidecar is a real sidecar as sidecar.New builds it, not started: it
// has asked Vault nothing (nothing listens at its address). Until its
// feeds are read it answers a credential 503 revocations_unknown, a
// request without one 401 and a public route with an allow; what it
// decides before it looks at a credential (the gateway, the request's
// form, the path, the method) it decides as it always does. Decisions on
// a valid credential are package sidecar's tests (Check) and
// e2e.TestEnvoyGRPCExtAuthz's (a real Vault).
func newSidecar(t *testing.T, mutate func(c *sidecar.Config)) *sidecar.Sidecar {
	t.Helper()
	c := &sidecar.Config{
		Audiences: []string{"svc"},
		Issuer:    "https://iss",
		LogLevel:  "off",
		Vault:     &sidecar.VaultConfig{Address: "http://127.0.0.1:1", RoleID: "r", SecretIDFile: "/nonexistent"},
		Routes:    fixtureRoutes,
	}
	if mutate != nil {
		mutate(c)
	}
	sc, err := sidecar.New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Stop)
	return sc
}

// decisions is keybroker_sidecar_decisions_total{mode, outcome, reason}
// as the sidecar's /metrics shows it.
func decisions(t *testing.T, sc *sidecar.Sidecar, mode, outcome, reason string) float64 {
	t.Helper()
	w := httptest.NewRecorder()
	sc.AuthHandler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	want := fmt.Sprintf(`keybroker_sidecar_decisions_total{mode=%q,outcome=%q,reason=%q} `, mode, outcome, reason)
	for s := bufio.NewScanner(w.Body); s.Scan(); {
		if v, ok := strings.CutPrefix(s.Text(), want); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}

// serve serves ext_authz for c on a loopback listener and returns a client
// that connects from local (an address in 127.0.0.0/8), as Envoy at that
// address would.
func serve(t *testing.T, c Checker) func(local string) authv3.AuthorizationClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(c, l)
	go func() { _ = srv.Serve() }()
	t.Cleanup(srv.srv.Stop)
	return func(local string) authv3.AuthorizationClient {
		dial := func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
			return d.DialContext(ctx, "tcp", addr)
		}
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return authv3.NewAuthorizationClient(conn)
	}
}

// hdr builds a header from name, value pairs, repeating a name as given.
func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// send asks handler about method target from peer, as a client would.
func send(h http.Handler, method, target, peer string, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/", nil)
	r.Method, r.RequestURI, r.RemoteAddr = method, target, peer
	for k, vs := range header {
		r.Header[k] = vs
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func ptr[T any](v T) *T { return &v }
