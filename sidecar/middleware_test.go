package sidecar

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// What an embedding service's handler sees of an allowed request: the path
// decided on, no credential, the identity from the sidecar only.
func TestMiddlewarePassesIdentityNotCredential(t *testing.T) {
	f := newFixture(t, nil)
	type seen struct {
		path, rawPath, query, uri string
		header                    http.Header
		id                        Identity
		hasID                     bool
	}
	var got *seen
	h := f.sc.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := IdentityFrom(r.Context())
		got = &seen{r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.RequestURI, r.Header.Clone(), id, ok}
	}))
	tok := f.jwt(t, "any read", time.Hour)

	for _, tc := range []struct {
		name, target string
		header       http.Header
		wantPath     string
		wantQuery    string
		wantID       bool
	}{
		{"bearer JWT", "/v1/items/1?x=1", hdr("Authorization", "Bearer "+tok), "/v1/items/1", "x=1", true},
		// Decoded once, re-encoded minimally: next routes on /v1/items.
		{"encoded letters", "/v1/%69tems/2", hdr("Authorization", "Bearer "+tok), "/v1/items/2", "", true},
		{"forged identity headers removed", "/v1/items/3", hdr("Authorization", "Bearer "+tok, "X-Keybroker-Role", "admin", "x-keybroker-scopes", "admin", "X-Keybroker-Anything", "1", "DPoP", "x", "X_Keybroker_Role", "admin", "X_API_Key", "kb_x"), "/v1/items/3", "", true},
		{"public route: no caller", "/public/x", hdr("X-Keybroker-Subject", "root"), "/public/x", "", false},
		// A proxy in next would drop what Connection names.
		{"connection header dropped", "/v1/items/4", hdr("Authorization", "Bearer "+tok, "Connection", "X-Keybroker-Subject, X-Keybroker-Scopes"), "/v1/items/4", "", true},
	} {
		got = nil
		w := send(h, "GET", tc.target, "127.0.0.1:1", tc.header)
		if w.Code != http.StatusOK || got == nil {
			t.Fatalf("%s: %d %s, next called %v", tc.name, w.Code, w.Header().Get(contract.HeaderReason), got != nil)
		}
		if got.path != tc.wantPath || got.rawPath != "" || got.query != tc.wantQuery || got.uri != tc.target && !strings.HasPrefix(got.uri, tc.wantPath) {
			t.Errorf("%s: next saw path %q raw %q query %q uri %q", tc.name, got.path, got.rawPath, got.query, got.uri)
		}
		for _, name := range []string{"Authorization", "X-Api-Key", "Dpop", "X-Keybroker-Anything", "X_keybroker_role", "X_api_key", "Connection"} {
			if v := got.header.Get(name); v != "" {
				t.Errorf("%s: next saw %s: %q", tc.name, name, v)
			}
		}
		if got.hasID != tc.wantID {
			t.Errorf("%s: IdentityFrom ok = %v, want %v", tc.name, got.hasID, tc.wantID)
		}
		if tc.wantID {
			if got.id.Subject != "agent" || got.id.JTI == "" || got.id.KeyID != "" || strings.Join(got.id.Scopes, " ") != "any read" {
				t.Errorf("%s: identity %+v", tc.name, got.id)
			}
			if got.header.Get(contract.IdentityHeaders()[0]) != "agent" || got.header.Get("X-Keybroker-Role") != "" && got.header.Get("X-Keybroker-Role") == "admin" {
				t.Errorf("%s: identity headers %v", tc.name, got.header)
			}
		} else {
			for _, name := range contract.IdentityHeaders() {
				if _, ok := got.header[name]; ok {
					t.Errorf("%s: public route passed %s", tc.name, name)
				}
			}
		}
	}

	// Denials never reach next, and answer as the proxy does.
	for _, tc := range []struct {
		target string
		header http.Header
		status int
		reason string
	}{
		{"/v1/items/1", nil, 401, contract.ReasonNoCredential},
		{"/v1/admin/x", hdr("Authorization", "Bearer "+tok), 403, contract.ReasonInsufficientScope},
		{"/v1/items/1", hdr("Authorization", "Bearer "+f.jwt(t, "any read", -time.Hour)), 401, contract.ReasonExpired},
		{"/v1/items/1", hdr("Authorization", "Bearer "+tok, "Authorization", "Bearer "+tok), 400, contract.ReasonBadRequest},
	} {
		got = nil
		w := send(h, "GET", tc.target, "127.0.0.1:1", tc.header)
		if w.Code != tc.status || w.Header().Get(contract.HeaderReason) != tc.reason || got != nil {
			t.Errorf("%s: %d %q (next called %v), want %d %q", tc.target, w.Code, w.Header().Get(contract.HeaderReason), got != nil, tc.status, tc.reason)
		}
		if tc.status == 401 && !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: 401 without a Bearer challenge", tc.target)
		}
	}

	// A handler in front that rewrites r.URL does not change what is
	// checked: the decision is on the target the client sent.
	strip := http.StripPrefix("/v1", h)
	got = nil
	r := httptest.NewRequest("GET", "/v1/admin/x", nil)
	r.RemoteAddr = "127.0.0.1:1"
	r.Header.Set("Authorization", "Bearer "+tok)
	w := httptest.NewRecorder()
	strip.ServeHTTP(w, r)
	if w.Code != 403 || got != nil {
		t.Errorf("behind StripPrefix: /v1/admin/x answered %d %s", w.Code, w.Header().Get(contract.HeaderReason))
	}
}

// A request made in process (no RequestURI) is decided on its URL.
func TestMiddlewareInProcessRequest(t *testing.T) {
	f := newFixture(t, nil)
	called := false
	h := f.sc.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called = true }))
	r := httptest.NewRequest("GET", "/v1/admin/x", nil)
	r.RequestURI, r.RemoteAddr = "", "127.0.0.1:1"
	r.Header.Set("Authorization", "Bearer "+f.jwt(t, "any read", time.Hour))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 403 || called {
		t.Fatalf("in-process request to admin with a reader: %d, next called %v", w.Code, called)
	}
}

// What the service must never get, in every spelling a server might read
// as the same name; and what it keeps.
func TestStrippedHeaders(t *testing.T) {
	for name, want := range map[string]bool{
		"Authorization": true, "authorization": true, "X-Api-Key": true, "X_API_KEY": true, "x_api-key": true,
		"Dpop": true, "DPOP": true, "X-Keybroker-Subject": true, "X_Keybroker_Subject": true, "x-keybroker_role": true,
		"X-Keybroker-": true, "X-Keybrokers": false, "X-Api-Keys": false, "Authorizations": false, "X-Request-Id": false,
		"Content-Type": false, "X-Keybroke": false, "": false,
	} {
		if got := strippedHeader(name); got != want {
			t.Errorf("strippedHeader(%q) = %v, want %v", name, got, want)
		}
	}
}
