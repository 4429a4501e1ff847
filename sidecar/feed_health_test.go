package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/contract"
)

// Until the revocation feed has been read to its end, no credential passes
// (what was revoked is unknown), and with key_replica no API key passes
// until the key-record feed has: 503 with the reason, Retry-After, in proxy,
// middleware, /verify-style decide and gRPC alike. Public routes and the
// challenge for a request without a credential are served meanwhile.
func TestFeedsNotReadRefuseCredentials(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	f, client := grpcFixture(t, []string{"127.0.0.1"}, func(c *Config) { c.Upstream = up.URL })
	sc := f.sc
	tok := f.jwt(t, "any read", time.Hour)
	key, rec := testKey(t, time.Now().Add(-48*time.Hour), "web", "", "any", "read")
	synced(sc, rec)
	modes := map[string]http.Handler{
		"proxy":      sc.proxyHandler(),
		"middleware": sc.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})),
	}
	c := client("127.0.0.1")
	cases := []struct {
		name           string
		revRead, keyRd bool
		target         string
		header         http.Header
		status         int
		reason         string
	}{
		{"jwt, revocations unread", false, true, "/v1/items/1", hdr("Authorization", "Bearer "+tok), 503, contract.ReasonRevocationsUnknown},
		{"api key, revocations unread", false, true, "/v1/items/1", hdr("X-API-Key", key), 503, contract.ReasonRevocationsUnknown},
		{"api key, key records unread", true, false, "/v1/items/1", hdr("X-API-Key", key), 503, contract.ReasonKeyRecordsUnknown},
		{"jwt, key records unread: needs only revocations", true, false, "/v1/items/1", hdr("Authorization", "Bearer "+tok), 200, contract.ReasonOK},
		{"public route, nothing read", false, false, "/public/x", nil, 200, contract.ReasonOK},
		{"no credential, nothing read: the challenge", false, false, "/v1/items/1", nil, 401, contract.ReasonNoCredential},
		{"both read: jwt", true, true, "/v1/items/1", hdr("Authorization", "Bearer "+tok), 200, contract.ReasonOK},
		{"both read: api key", true, true, "/v1/items/1", hdr("X-API-Key", key), 200, contract.ReasonOK},
	}
	for _, tc := range cases {
		sc.revocations.health.read.Store(tc.revRead)
		sc.keyRecords.health.read.Store(tc.keyRd)
		for mode, h := range modes {
			w := send(h, "GET", tc.target, "127.0.0.1:1", tc.header)
			if w.Code != tc.status || (tc.status != 200 && w.Header().Get(contract.HeaderReason) != tc.reason) {
				t.Errorf("%s, %s: %d %s, want %d %s", tc.name, mode, w.Code, w.Header().Get(contract.HeaderReason), tc.status, tc.reason)
			}
			if tc.status == 503 {
				var body map[string]string
				_ = json.Unmarshal(w.Body.Bytes(), &body)
				if w.Header().Get("Retry-After") == "" || body["error"] != "temporarily_unavailable" || body["reason"] != tc.reason {
					t.Errorf("%s, %s: Retry-After %q, body %s", tc.name, mode, w.Header().Get("Retry-After"), w.Body)
				}
			}
		}
		resp := check(t, c, checkRequest("GET", tc.target, "127.0.0.9", tc.header))
		if tc.status == 200 {
			if !resp.Allowed {
				t.Errorf("%s, grpc: %v, want allowed", tc.name, resp)
			}
			continue
		}
		if resp.Allowed || resp.Status != tc.status || !strings.Contains(resp.Body, tc.reason) {
			t.Errorf("%s, grpc: %v, want %d %s", tc.name, resp, tc.status, tc.reason)
		}
	}
	if n := testutil.ToFloat64(sc.m.decisions.WithLabelValues("proxy", "deny", contract.ReasonRevocationsUnknown)); n != 2 {
		t.Errorf("decisions{reason=%s} = %v, want 2", contract.ReasonRevocationsUnknown, n)
	}
	// Without a replica, API keys need only the revocation feed.
	off := false
	g := newFixture(t, func(c *Config) { c.KeyReplica = &off })
	// (no key-record feed is followed, so none can be unread)
	if d := decideKey(g.sc, key, "/x", "127.0.0.1"); d.reason == contract.ReasonKeyRecordsUnknown {
		t.Errorf("key_replica = false: %s", d.reason)
	}
}

// A 403 is the policy, logged once at error level with the path and the
// capability, shown in /healthz and the metric; unreachable is another
// state; a failed login after a 403 is not the policy's doing.
func TestFeedHealth(t *testing.T) {
	f := newFixture(t, nil)
	sc := f.sc
	var logs bytes.Buffer
	sc.log = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info, JSONFormat: true})
	sc.revocations.health.read.Store(false)
	forbidden := fmt.Errorf("keybroker revocations: %w", &api.ResponseError{HTTPMethod: "GET", URL: "http://v/v1/keybroker/revocations", StatusCode: 403, Errors: []string{"permission denied"}})
	for range 3 {
		sc.revocations.health.failed(sc.log, forbidden)
	}
	// A stop cancels a read in flight: neither a state nor a log line.
	sc.revocations.health.failed(sc.log, fmt.Errorf("keybroker revocations: %w", context.Canceled))
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 1 || lines[0]["@level"] != "error" || lines[0]["path"] != "keybroker/revocations" || lines[0]["capability"] != "read" || strings.Contains(lines[0]["@message"].(string), "unreachable") {
		t.Fatalf("logged %v; want one error naming keybroker/revocations and read", lines)
	}
	health := func() (int, map[string]any) {
		w := httptest.NewRecorder()
		sc.authHandler().ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
		var body map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		return w.Code, body
	}
	code, body := health()
	rev := body["feeds"].(map[string]any)["revocations"].(map[string]any)
	if code != 503 || body["status"] != "forbidden" || rev["state"] != feedForbidden || rev["needs"] != "read on keybroker/revocations" || !strings.Contains(rev["error"].(string), "permission denied") {
		t.Fatalf("healthz %d %v", code, body)
	}
	if v := feedGauge(t, sc, "revocations", feedForbidden); v != 1 {
		t.Errorf("feed_state{revocations,forbidden} = %v", v)
	}
	if v := feedGauge(t, sc, "revocations", feedOK); v != 0 {
		t.Errorf("feed_state{revocations,ok} = %v", v)
	}
	if v := feedGauge(t, sc, "key_records", feedStarting); v != 1 {
		t.Errorf("feed_state{key_records,starting} = %v", v)
	}

	for _, c := range []struct {
		err  error
		want string
	}{
		{forbidden, feedForbidden},
		{fmt.Errorf("keybroker revocations: %w", errors.New("dial tcp 127.0.0.1:1: connect: connection refused")), feedUnreachable},
		{&api.ResponseError{StatusCode: 503}, feedUnreachable},
		{&api.ResponseError{StatusCode: 500}, feedError},
		// The token was refused and logging in again failed: the
		// login is the trouble, not the feed's capability.
		{fmt.Errorf("%w (and logging in again failed: %w)", forbidden, &loginError{&api.ResponseError{StatusCode: 400}}), feedError},
		{fmt.Errorf("%w (and logging in again failed: %w)", forbidden, &loginError{errors.New("connection refused")}), feedUnreachable},
	} {
		if got := feedStateOf(c.err); got != c.want {
			t.Errorf("feedStateOf(%v) = %s, want %s", c.err, got, c.want)
		}
	}

	// Refused reads are spaced out (each makes the sidecar log in again),
	// and every retry is spread over [d/2, 3d/2), so that a fleet that
	// failed at once does not retry at once.
	retries := func(what string, d time.Duration) {
		t.Helper()
		seen := map[time.Duration]bool{}
		for range 50 {
			got := sc.revocations.health.retryIn(100 * time.Millisecond)
			if got < d/2 || got >= d*3/2 {
				t.Errorf("%s, retry in %s; want within [%s, %s)", what, got, d/2, d*3/2)
			}
			seen[got] = true
		}
		if len(seen) < 10 {
			t.Errorf("%s, 50 retries took %d distinct waits: not spread", what, len(seen))
		}
	}
	retries("after 3 refusals", 400*time.Millisecond)
	for range 20 {
		sc.revocations.health.failed(sc.log, forbidden)
	}
	retries("after 23 refusals", maxForbiddenRetry)
	sc.revocations.health.succeeded(sc.log, false)
	retries("after a good read", 100*time.Millisecond)
	if sc.revocations.health.known() {
		t.Fatal("a read with more to come counts as read to the end")
	}
	if code, body := health(); code != 503 || body["status"] != "starting" {
		t.Fatalf("healthz %d %v", code, body)
	}
	sc.revocations.health.succeeded(sc.log, true)
	if !sc.revocations.health.known() || !sc.Ready() {
		t.Fatal("read to its end, not known")
	}
	if code, body := health(); code != 200 || body["status"] != "ok" {
		t.Fatalf("healthz %d %v", code, body)
	}
	// A feed Vault cannot be reached for later keeps what it read:
	// decisions go on. One Vault refuses does not (TestFeedForbiddenAfterReadRefuses).
	sc.revocations.health.failed(sc.log, &api.ResponseError{StatusCode: http.StatusServiceUnavailable})
	if !sc.revocations.health.known() {
		t.Fatal("Vault out of reach forgot the feed was read")
	}
	sc.revocations.health.failed(sc.log, forbidden)
	if sc.revocations.health.known() {
		t.Fatal("a feed refused after a read is still relied on")
	}
}

// feedGauge is keybroker_sidecar_feed_state{feed, state} as scraped.
func feedGauge(t *testing.T, sc *Sidecar, feed, state string) float64 {
	t.Helper()
	mfs, err := sc.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keybroker_sidecar_feed_state" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["feed"] == feed && labels["state"] == state {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no keybroker_sidecar_feed_state{feed=%q,state=%q}", feed, state)
	return 0
}

// A feed Vault refuses after it was read (the sidecar's policy lost it)
// stops growing: the sidecar no longer knows what was revoked, so it
// refuses what depends on it and says forbidden in /healthz, until the feed
// is read again. Vault out of reach keeps what was read (from review).
func TestFeedForbiddenAfterReadRefuses(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	f, _ := grpcFixture(t, []string{"127.0.0.1"}, func(c *Config) { c.Upstream = up.URL })
	sc := f.sc
	tok := f.jwt(t, "any read", time.Hour)
	log := hclog.NewNullLogger()
	sc.revocations.health.succeeded(log, true)
	sc.keyRecords.health.succeeded(log, true)
	pass := func() (int, string) {
		w := send(sc.proxyHandler(), "GET", "/v1/items/1", "127.0.0.1:1", hdr("Authorization", "Bearer "+tok))
		return w.Code, w.Header().Get(contract.HeaderReason)
	}
	health := func() (int, string) {
		w := httptest.NewRecorder()
		sc.authHandler().ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
		var body map[string]interface{}
		_ = json.Unmarshal(w.Body.Bytes(), &body)
		s, _ := body["status"].(string)
		return w.Code, s
	}
	if code, _ := pass(); code != 200 {
		t.Fatalf("feeds read: %d", code)
	}
	sc.revocations.health.failed(log, &api.ResponseError{StatusCode: http.StatusServiceUnavailable})
	if code, _ := pass(); code != 200 {
		t.Fatalf("Vault unreachable after a read: %d, want 200 (what was read still holds)", code)
	}
	sc.revocations.health.failed(log, &api.ResponseError{StatusCode: http.StatusForbidden})
	if code, reason := pass(); code != 503 || reason != contract.ReasonRevocationsUnknown {
		t.Fatalf("feed refused after a read: %d %s, want 503 %s", code, reason, contract.ReasonRevocationsUnknown)
	}
	if code, status := health(); code != 503 || status != "forbidden" {
		t.Fatalf("healthz with the feed refused after a read: %d %s", code, status)
	}
	sc.revocations.health.succeeded(log, true)
	if code, _ := pass(); code != 200 {
		t.Fatalf("feed read again: %d", code)
	}
	if code, status := health(); code != 200 || status != "ok" {
		t.Fatalf("healthz once read again: %d %s", code, status)
	}
}
