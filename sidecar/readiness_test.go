package sidecar

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// healthzOf reads the sidecar's /healthz.
func healthzOf(t *testing.T, sc *Sidecar) (int, map[string]any) {
	t.Helper()
	w := httptest.NewRecorder()
	sc.authHandler().ServeHTTP(w, httptest.NewRequest("GET", "/healthz", nil))
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("healthz body %q: %v", w.Body, err)
	}
	return w.Code, body
}

func component(body map[string]any, name string) map[string]any {
	c, _ := body["feeds"].(map[string]any)[name].(map[string]any)
	return c
}

// An API-key-only sidecar (credential_kinds = ["api_key"], no audiences)
// is ready once its feeds are read, with no issuer and no JWKS at all;
// /healthz says the JWKS is not used. A JWT it is shown is refused for
// its kind, not as unavailable.
func TestReadinessWithoutJWTs(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.CredentialKinds, c.Audiences = []string{"api_key"}, nil })
	sc := f.sc
	sc.jwks.verifier.Store(nil) // no issuer was ever read
	sc.jwks.set.Store(nil)
	if !sc.Ready() {
		t.Fatal("an API-key-only sidecar waits for the JWKS")
	}
	code, body := healthzOf(t, sc)
	jw := component(body, "jwks")
	if code != 200 || body["status"] != "ok" || jw["state"] != stateNotUsed || jw["required"] != false || len(body["waiting_for"].([]any)) != 0 {
		t.Fatalf("healthz %d %v", code, body)
	}
	d := decideWith(sc, "GET", "/v1/items/1", hdr("Authorization", "Bearer "+f.jwt(t, "read", time.Hour)))
	if d.status != http.StatusUnauthorized || d.reason != contract.ReasonKindNotAccepted {
		t.Fatalf("a JWT to an API-key-only sidecar: %d %s", d.status, d.reason)
	}
	// Until the revocations are read it still waits, and says for what.
	sc.revocations.health.read.Store(false)
	code, body = healthzOf(t, sc)
	if code != 503 || body["status"] != "starting" || strings.Join(anyStrings(body["waiting_for"]), ",") != "revocations" {
		t.Fatalf("healthz before the revocations were read: %d %v", code, body)
	}
}

// A sidecar that takes JWTs waits for the JWKS, and /healthz names it with
// why it is not there yet; once the issuer and keys are read it is ready.
func TestReadinessWaitsForJWKSWhenJWTsAreAccepted(t *testing.T) {
	f := newFixture(t, nil)
	sc := f.sc
	v, set := sc.jwks.verifier.Load(), sc.jwks.set.Load()
	sc.jwks.verifier.Store(nil)
	sc.jwks.set.Store(nil)
	msg := "Get http://v/v1/keybroker/.well-known/openid-configuration: connection refused"
	sc.jwksFeed.lastErr.Store(&msg)
	if sc.Ready() {
		t.Fatal("ready without the JWKS")
	}
	code, body := healthzOf(t, sc)
	jw := component(body, "jwks")
	if code != 503 || body["status"] != "starting" || jw["state"] != feedStarting || jw["required"] != true || jw["error"] != msg ||
		strings.Join(anyStrings(body["waiting_for"]), ",") != "jwks" {
		t.Fatalf("healthz %d %v", code, body)
	}
	if rev := component(body, "revocations"); rev["state"] == nil || rev["required"] != true {
		t.Fatalf("revocations not listed: %v", body)
	}
	sc.jwks.verifier.Store(v)
	sc.jwks.set.Store(set)
	if code, body := healthzOf(t, sc); code != 200 || component(body, "jwks")["state"] != feedOK {
		t.Fatalf("healthz once the JWKS is read: %d %v", code, body)
	}
}

// A JWT-only sidecar (credential_kinds = ["jwt"]) keeps no key replica:
// it neither copies the records nor waits for them, and an API key is
// refused for its kind, not as records unknown.
func TestReadinessWithoutAPIKeys(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.CredentialKinds = []string{"jwt"} })
	sc := f.sc
	if sc.keyRecords != nil {
		t.Fatal("a JWT-only sidecar follows the key-record feed")
	}
	code, body := healthzOf(t, sc)
	kr := component(body, "key_records")
	if code != 200 || kr["state"] != stateNotUsed || kr["required"] != false || len(body["waiting_for"].([]any)) != 0 {
		t.Fatalf("healthz %d %v", code, body)
	}
	key, _, _ := apikey.Generate(nil, "kb")
	d := decideWith(sc, "GET", "/v1/items/1", hdr("X-API-Key", key))
	if d.status != http.StatusUnauthorized || d.reason != contract.ReasonKindNotAccepted {
		t.Fatalf("an API key to a JWT-only sidecar: %d %s", d.status, d.reason)
	}
}

func TestCredentialKinds(t *testing.T) {
	for name, tc := range map[string]struct {
		kinds       []string
		audiences   []string
		keys, jwts  bool
		wantProblem string
	}{
		"unset: both":            {nil, []string{"svc"}, true, true, ""},
		"api keys, no audiences": {[]string{"api_key"}, nil, true, false, ""},
		"jwt needs audiences":    {[]string{"jwt"}, nil, false, true, "audiences: name the aud values"},
		"both":                   {[]string{"jwt", "api_key"}, []string{"svc"}, true, true, ""},
		"unknown kind":           {[]string{"api_key", "jwts"}, nil, true, false, `credential_kinds: "jwts" is not a kind`},
		"empty":                  {[]string{}, []string{"svc"}, false, false, "name at least one"},
	} {
		t.Run(name, func(t *testing.T) {
			c := validConfig()
			c.CredentialKinds, c.Audiences = tc.kinds, tc.audiences
			var s settings
			errs := validateTokens(c, &s)
			got := ""
			for _, e := range errs {
				got += e.Error() + "\n"
			}
			if (tc.wantProblem == "") != (got == "") || !strings.Contains(got, tc.wantProblem) {
				t.Fatalf("problems %q, want %q", got, tc.wantProblem)
			}
			if tc.wantProblem == "" && (s.acceptKeys != tc.keys || s.acceptJWTs != tc.jwts) {
				t.Fatalf("keys %v jwts %v", s.acceptKeys, s.acceptJWTs)
			}
		})
	}
}

func anyStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}
