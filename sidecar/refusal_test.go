package sidecar

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	hclog "github.com/hashicorp/go-hclog"

	"github.com/keybroker/keybroker/contract"
)

// Each check a JWT fails is its own reason, on the wire and in the
// challenge's description: a token minted for another service does not
// read as a forged one, and an audience mismatch names what this service
// accepts, never what the token held.
func TestJWTRefusalReasons(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Audiences = []string{"svc", "svc-2"} })
	with := func(change func(c *jwt.RegisteredClaims), header map[string]string) string {
		c := f.claims("read", time.Hour)
		change(&c.RegisteredClaims)
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
		tok.Header["kid"], tok.Header["typ"] = "k1", "at+jwt"
		for k, v := range header {
			tok.Header[k] = v
		}
		s, err := tok.SignedString(f.priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	same := func(*jwt.RegisteredClaims) {}
	good := with(same, nil)
	cases := []struct {
		name, token, reason, description string
	}{
		{"audience", with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"other-aud"} }, nil),
			contract.ReasonAudienceMismatch, "the token's aud names none of the audiences this service accepts: mint it for this service (audience=)"},
		{"several audiences, none ours", with(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"a", "b", "c"} }, nil),
			contract.ReasonAudienceMismatch, "none of the audiences"},
		{"issuer", with(func(c *jwt.RegisteredClaims) { c.Issuer = "https://other-vault" }, nil),
			contract.ReasonIssuerMismatch, "is not this service's issuer https://iss"},
		{"expired", with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour)) }, nil),
			contract.ReasonExpired, "expired"},
		{"not yet valid", with(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour)) }, nil),
			contract.ReasonNotYetValid, "not valid yet"},
		{"typ JWT", with(same, map[string]string{"typ": "JWT"}), contract.ReasonWrongTokenType, "not at+jwt"},
		{"unknown kid", with(same, map[string]string{"kid": "k9"}), contract.ReasonUnknownKey, "JWKS"},
		{"tampered", good[:strings.LastIndexByte(good, '.')+1] + "AAAA" + good[strings.LastIndexByte(good, '.')+5:], contract.ReasonInvalidSignature, "signature"},
		{"no jti", with(func(c *jwt.RegisteredClaims) { c.ID = "" }, nil), contract.ReasonInvalidClaims, "claims"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := decideWith(f.sc, "GET", "/v1/items/1", hdr("Authorization", "Bearer "+tc.token))
			if d.status != http.StatusUnauthorized || d.reason != tc.reason {
				t.Fatalf("%d %s, want 401 %s", d.status, d.reason, tc.reason)
			}
			w := send(f.sc.proxyHandler(), "GET", "/v1/items/1", "127.0.0.1:1", hdr("Authorization", "Bearer "+tc.token))
			c := w.Header().Get("WWW-Authenticate")
			if !strings.Contains(c, `error="invalid_token"`) || !strings.Contains(c, tc.description) || !strings.Contains(w.Body.String(), tc.description) {
				t.Fatalf("challenge %q body %s, want a description with %q", c, w.Body, tc.description)
			}
			if strings.Contains(c, "other-aud") || strings.Contains(c, "other-vault") || strings.Contains(w.Body.String(), "other-aud") {
				t.Fatalf("the answer repeats the token's claims: %q %s", c, w.Body)
			}
			// The accepted audiences are the operator's (the log and the
			// decision log), not told to whoever holds a token.
			if strings.Contains(c, "svc-2") || strings.Contains(w.Body.String(), "svc-2") {
				t.Fatalf("the answer lists the audiences this service accepts: %q %s", c, w.Body)
			}
		})
	}
}

// An audience a configuration spells with a quote, a backslash or a
// control character cannot break the challenge it is quoted in.
func TestJWTHintsHeaderSafe(t *testing.T) {
	h := newJWTHints([]string{`a"b`, `c\d`, "e\r\nf", "ü"}, "https://iss\"x")
	for _, s := range []string{h.audience.description, h.issuer.description, h.issuer.log} {
		if headerSafe(s) != s || strings.ContainsAny(s, "\"\\\r\n") {
			t.Fatalf("not header-safe: %q", s)
		}
	}
	if h.audience.expected != "a\"b c\\d e\r\nf ü" {
		t.Fatalf("expected = %q: the decision log (JSON) keeps the setting as it is", h.audience.expected)
	}
	for reason, s := range reasonDescriptions {
		if headerSafe(s) != s || strings.ContainsAny(s, "<>&") {
			t.Errorf("%s: description %q is not header-safe or is HTML-escaped in JSON", reason, s)
		}
	}
}

// The first audience mismatch is logged at info with what this service
// accepts (a setting to fix, most often); later ones only at debug; the
// token, and what it claimed, never.
func TestJWTRefusalLog(t *testing.T) {
	f := newFixture(t, nil)
	var logs bytes.Buffer
	f.sc.agentJWTs.log = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info, JSONFormat: true})
	c := f.claims("read", time.Hour)
	c.Audience = jwt.ClaimStrings{"claimed-aud"}
	tok := f.sign(t, c)
	for range 3 {
		f.sc.agentJWTs.cache.Purge()
		decideWith(f.sc, "GET", "/v1/items/1", hdr("Authorization", "Bearer "+tok))
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"reason":"audience_mismatch"`) || !strings.Contains(lines[0], `"expected":"svc"`) || !strings.Contains(lines[0], `"@level":"info"`) {
		t.Fatalf("logged %q; want one info line with the reason and the expected audience", lines)
	}
	logs.Reset()
	f.sc.agentJWTs.log.SetLevel(hclog.Debug)
	decideWith(f.sc, "GET", "/v1/items/1", hdr("Authorization", "Bearer "+tok))
	if !strings.Contains(logs.String(), `"@level":"debug"`) || !strings.Contains(logs.String(), `"reason":"audience_mismatch"`) {
		t.Fatalf("at debug: %q", logs.String())
	}
	if strings.Contains(logs.String(), "claimed-aud") || strings.Contains(logs.String(), tok[strings.LastIndexByte(tok, '.')+1:]) {
		t.Fatalf("the log holds the token or its claims: %q", logs.String())
	}
}
