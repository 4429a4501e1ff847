package backend

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

const testIssuer = "https://vault.example:8200/v1/keybroker"

// newJWTEnv is a test env with an issuer and a role "agent" that mints tokens.
func newJWTEnv(t *testing.T, role map[string]interface{}) *testEnv {
	e := newTestEnv(t)
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	base := map[string]interface{}{
		"scopes": "read,write", "default_scopes": "read", "audiences": "billing",
		"tenant": "acme", "bound_cidrs": "10.0.0.0/8", "token_ttl": "5m",
	}
	for k, v := range role {
		base[k] = v
	}
	e.createRole("agent", base)
	return e
}

// jwks fetches the raw JWKS the way a verifier would.
func (e *testEnv) jwks() *jwtverify.KeySet {
	e.t.Helper()
	resp := e.ok(logical.ReadOperation, "jwks", nil)
	if resp.Data[logical.HTTPContentType] != "application/json" {
		e.t.Fatalf("jwks content type = %v", resp.Data[logical.HTTPContentType])
	}
	ks, err := jwtverify.ParseJWKS(resp.Data[logical.HTTPRawBody].([]byte))
	if err != nil {
		e.t.Fatalf("parsing jwks: %v", err)
	}
	return ks
}

// offline verifies a token as the sidecar would: against the fetched JWKS.
func (e *testEnv) offline(token, aud string) (*jwtverify.Claims, error) {
	e.t.Helper()
	v, err := jwtverify.NewVerifier(jwtverify.Config{Issuer: testIssuer, Audiences: []string{aud}, AcceptBound: true})
	if err != nil {
		e.t.Fatal(err)
	}
	return v.Verify(token, e.jwks())
}

func (e *testEnv) verifyReason(cred, addr string, extra map[string]interface{}) string {
	e.t.Helper()
	data := map[string]interface{}{"credential": cred, "remote_addr": addr}
	for k, v := range extra {
		data[k] = v
	}
	return e.ok(logical.UpdateOperation, "verify", data).Data["reason"].(string)
}

func TestTokenMint(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"audiences": "billing,search"})
	resp := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing", "scopes": "read,write"})
	token := resp.Data["token"].(string)
	if resp.Data["token_type"] != "Bearer" || resp.Data["expires_in"] != int64(300) || resp.Data["refresh_token"] != nil {
		t.Fatalf("mint response = %#v", resp.Data)
	}
	if resp.Secret == nil || resp.Secret.TTL != 5*time.Minute || resp.Secret.Renewable {
		t.Fatalf("lease = %#v, want a 5m non-renewable lease", resp.Secret)
	}
	c, err := e.offline(token, "billing")
	if err != nil {
		t.Fatalf("offline verify: %v", err)
	}
	if c.Subject != "test-entity" || c.Scope != "read write" || c.Role != "agent" || c.Tenant != "acme" ||
		c.ID != resp.Data["jti"] || strings.Join(c.CIDR, ",") != "10.0.0.0/8" || c.ExpiresAt.Sub(c.IssuedAt.Time) != 5*time.Minute {
		t.Fatalf("claims = %+v", c)
	}
	if _, err := e.offline(token, "search"); err == nil {
		t.Fatal("a token minted for billing verified for search")
	}
	parts := strings.Split(token, ".")
	header, _ := decodeJSONSegment(parts[0])
	if header["typ"] != "at+jwt" || header["alg"] != "EdDSA" || header["kid"] == "" {
		t.Fatalf("header = %v", header)
	}

	// Defaults: the role's default scopes; a read (Vault Agent's template
	// with query parameters) mints the same.
	for _, op := range []logical.Operation{logical.UpdateOperation, logical.ReadOperation} {
		resp = e.ok(op, "token/agent", map[string]interface{}{"audience": "search"})
		c, err = e.offline(resp.Data["token"].(string), "search")
		if err != nil || c.Scope != "read" || len(c.Audience) != 1 || resp.Secret == nil {
			t.Fatalf("%s: default token: %v %+v", op, err, c)
		}
	}
	// A read is checked like a write: no widening through it.
	e.userError(logical.ReadOperation, "token/agent", map[string]interface{}{"scopes": "admin"}, "not allowed")
	e.userError(logical.ReadOperation, "token/agent", map[string]interface{}{"scope": "read"}, "unknown field")
}

func decodeJSONSegment(s string) (map[string]interface{}, error) {
	var m map[string]interface{}
	b, err := jwtSegment(s)
	if err != nil {
		return nil, err
	}
	return m, json.Unmarshal(b, &m)
}

func TestTokenMintBadInput(t *testing.T) {
	cases := []struct {
		name string
		path string
		data map[string]interface{}
		want string
	}{
		{"missing role", "token/nope", nil, `role "nope" does not exist`},
		{"role without audiences", "token/keysonly", nil, `role "keysonly" has no audiences`},
		{"audience outside role", "token/agent", map[string]interface{}{"audience": "admin"}, `audience "admin" is not allowed by role "agent"`},
		{"scope outside role", "token/agent", map[string]interface{}{"scopes": "delete"}, `scopes delete are not allowed`},
		{"cidr widens", "token/agent", map[string]interface{}{"bound_cidrs": "0.0.0.0/0"}, "not within role"},
		{"caller picks sub", "token/agent", map[string]interface{}{"sub": "someone-else"}, "unknown field(s): sub"},
		{"caller picks subject", "token/agent", map[string]interface{}{"subject": "x"}, "unknown field(s): subject"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newJWTEnv(t, nil)
			e.createRole("keysonly", nil)
			e.userError(logical.UpdateOperation, tc.path, tc.data, tc.want)
			if got, _, _ := e.feed(0); len(got) != 0 {
				t.Fatalf("a rejected mint touched the feed: %v", got)
			}
		})
	}
}

func TestTokenNeedsIssuer(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("agent", map[string]interface{}{"audiences": "billing"})
	t.Setenv(apiAddrEnv, "")
	e.userError(logical.UpdateOperation, "token/agent", nil, "no issuer")

	// With VAULT_API_ADDR passed at plugin registration, the mount's URL.
	t.Setenv(apiAddrEnv, "https://vault.internal:8200/")
	resp := e.ok(logical.UpdateOperation, "token/agent", nil)
	claims, _ := decodeJSONSegment(strings.Split(resp.Data["token"].(string), ".")[1])
	if claims["iss"] != "https://vault.internal:8200/v1/keybroker" {
		t.Fatalf("iss = %v", claims["iss"])
	}
	disc := e.ok(logical.ReadOperation, ".well-known/openid-configuration", nil)
	var doc map[string]interface{}
	_ = json.Unmarshal(disc.Data[logical.HTTPRawBody].([]byte), &doc)
	if doc["issuer"] != claims["iss"] || doc["jwks_uri"] != "https://vault.internal:8200/v1/keybroker/jwks" {
		t.Fatalf("discovery = %v", doc)
	}
}

func TestTokenSubject(t *testing.T) {
	sys := logical.TestSystemView()
	sys.EntityVal = &logical.Entity{ID: "ent-1", Name: "agent-smith", Aliases: []*logical.Alias{{Name: "role-id-123", MountType: "approle"}}}
	conf := logical.TestBackendConfig()
	conf.System = sys
	conf.StorageView = &logical.InmemStorage{}
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, b: lb.(*backend), storage: conf.StorageView, entityID: "ent-1"}
	e.checkAnswers()
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": testIssuer})
	for _, tc := range []struct{ subject, entity, want string }{
		{subjectEntityID, "ent-1", "ent-1"},
		{subjectEntityName, "ent-1", "agent-smith"},
		{subjectAliasName, "ent-1", "role-id-123"},
		{subjectEntityID, "", "no-entity:"},
	} {
		e.createRole("r", map[string]interface{}{"audiences": "a", "subject": tc.subject})
		e.entityID = tc.entity
		resp := e.ok(logical.UpdateOperation, "token/r", nil)
		if resp.Data["sub"] != tc.want {
			t.Errorf("subject=%s entity=%q: sub = %v, want %s", tc.subject, tc.entity, resp.Data["sub"], tc.want)
		}
	}
	e.userError(logical.CreateOperation, "roles/bad", map[string]interface{}{"subject": "request"}, "subject must be")
}

func TestVerifyJWT(t *testing.T) {
	e := newJWTEnv(t, nil)
	mint := func(data map[string]interface{}) *logical.Response {
		return e.ok(logical.UpdateOperation, "token/agent", data)
	}
	good := mint(map[string]interface{}{"scopes": "read"})
	token := good.Data["token"].(string)
	parts := strings.Split(token, ".")
	tampered := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))

	for _, tc := range []struct {
		name  string
		cred  string
		addr  string
		extra map[string]interface{}
		want  string
	}{
		{"ok", token, "10.0.0.1", map[string]interface{}{"scopes": "read"}, contract.ReasonOK},
		{"ok via key alias", "", "10.0.0.1", map[string]interface{}{"key": token}, contract.ReasonOK},
		{"audience matches", token, "10.0.0.1", map[string]interface{}{"audience": "billing"}, contract.ReasonOK},
		{"audience mismatch", token, "10.0.0.1", map[string]interface{}{"audience": "other"}, contract.ReasonInvalidClaims},
		{"cidr denied", token, "192.168.0.1", nil, contract.ReasonCIDRDenied},
		{"insufficient scope", token, "10.0.0.1", map[string]interface{}{"scopes": "write"}, contract.ReasonInsufficientScope},
		{"tampered signature", tampered, "10.0.0.1", nil, contract.ReasonInvalidSignature},
		{"garbage with two dots", "a.b.c", "10.0.0.1", nil, contract.ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := e.verifyReason(tc.cred, tc.addr, tc.extra); got != tc.want {
				t.Fatalf("reason = %s, want %s", got, tc.want)
			}
		})
	}
	ok := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": token, "remote_addr": "10.0.0.1"}).Data
	if ok["jti"] != good.Data["jti"] || ok["sub"] != "test-entity" || ok["tenant"] != "acme" {
		t.Fatalf("valid JWT answer = %#v", ok)
	}
	e.userError(logical.UpdateOperation, "verify", map[string]interface{}{"credential": token, "key": "other"}, "credential and key differ")

	// Revoking the lease (vault lease revoke, or the asking token's
	// revocation) puts the jti in the feed and verify says revoked.
	if _, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.RevokeOperation, Path: "token/agent", Secret: good.Secret, Storage: e.storage,
	}); err != nil {
		t.Fatal(err)
	}
	if got := e.verifyReason(token, "10.0.0.1", nil); got != contract.ReasonRevoked {
		t.Fatalf("after lease revoke: %s", got)
	}
	if ids, _, _ := e.feed(0); len(ids) != 1 || ids[0] != good.Data["jti"] {
		t.Fatalf("feed = %v, want the jti", ids)
	}
}

func TestRotationKeepsOldTokensUntilVerificationTTL(t *testing.T) {
	e := newJWTEnv(t, nil)
	old := e.ok(logical.UpdateOperation, "token/agent", nil).Data["token"].(string)
	header, _ := decodeJSONSegment(strings.Split(old, ".")[0])
	oldKid := header["kid"]
	// immediate: this test is about verification_ttl, the lead is
	// key_schedule_test.go's.
	if newKid := e.ok(logical.UpdateOperation, "rotate", map[string]interface{}{"immediate": true}).Data["kid"]; newKid == oldKid {
		t.Fatal("rotate returned the old kid")
	}
	fresh := e.ok(logical.UpdateOperation, "token/agent", nil).Data["token"].(string)
	if e.jwks().Len() != 2 {
		t.Fatalf("JWKS after one rotation has %d keys, want 2", e.jwks().Len())
	}
	for _, tok := range []string{old, fresh} {
		if _, err := e.offline(tok, "billing"); err != nil {
			t.Fatalf("token verifies no more after rotation: %v", err)
		}
	}
	// A rotation after verification_ttl (24h) has passed drops the first key.
	if _, err := e.b.signer.rotate(context.Background(), e.storage, time.Now().Add(25*time.Hour), e.b.Logger(), takeover{immediate: true}); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.jwks().Lookup(oldKid.(string)); e.jwks().Len() != 2 || ok {
		t.Fatalf("JWKS still publishes the key retired 25h ago")
	}
	if got := e.verifyReason(old, "10.0.0.1", nil); got != contract.ReasonInvalidSignature {
		t.Fatalf("token of a dropped key: %s", got)
	}
	if _, err := e.offline(fresh, "billing"); err != nil {
		t.Fatalf("token of the key retired just now: %v", err)
	}
}

func TestPeriodicRotation(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"rotation_period": "1m", "next_key_lead": "20s"})
	st, _ := e.b.signer.current(context.Background(), e.storage, e.b.Logger())
	if err := e.b.signer.rotateIfDue(context.Background(), e.storage, time.Now(), e.b.Logger()); err != nil {
		t.Fatal(err)
	}
	if now, _ := e.b.signer.current(context.Background(), e.storage, e.b.Logger()); now.kid != st.kid || now.next != nil {
		t.Fatal("rotated before rotation_period less next_key_lead")
	}
	// 45s in, the next key is due to sign at 1m05s (it was published at
	// 45s, for the lead): it is published now, and the old key still signs.
	if err := e.b.signer.rotateIfDue(context.Background(), e.storage, time.Now().Add(45*time.Second), e.b.Logger()); err != nil {
		t.Fatal(err)
	}
	now, _ := e.b.signer.current(context.Background(), e.storage, e.b.Logger())
	if now.kid != st.kid || now.next == nil || now.next.KID == st.kid || e.jwks().Len() != 2 {
		t.Fatalf("after rotation_period less next_key_lead: signing %s (was %s), next %+v, %d keys published", now.kid, st.kid, now.next, e.jwks().Len())
	}
}

func TestConfig(t *testing.T) {
	t.Setenv(apiAddrEnv, "") // no derived issuer: "issuer" stays empty below
	e := newTestEnv(t)
	d := e.ok(logical.ReadOperation, "config", nil).Data
	if d["signing_algorithm"] != "EdDSA" || d["rotation_period"] != int64(86400) || d["verification_ttl"] != int64(86400) || d["next_key_lead"] != int64(3600) {
		t.Fatalf("defaults = %#v", d)
	}
	e.createRole("long", map[string]interface{}{"token_ttl": "1h", "token_max_ttl": "2h"})
	for _, tc := range []struct {
		data map[string]interface{}
		want string
	}{
		{map[string]interface{}{"signing_algorithm": "HS256"}, "must be EdDSA, ES256 or RS256"},
		{map[string]interface{}{"signing_algorithm": "none"}, "must be EdDSA, ES256 or RS256"},
		{map[string]interface{}{"rotation_period": "10s"}, "at least 1m"},
		{map[string]interface{}{"rotation_period": "30m"}, "next_key_lead (1h0m0s) must be shorter than rotation_period (30m0s)"},
		{map[string]interface{}{"rotation_period": "1h"}, "next_key_lead (1h0m0s) must be shorter than rotation_period (1h0m0s)"},
		{map[string]interface{}{"next_key_lead": "1s"}, "next_key_lead must be at least 2s"},
		{map[string]interface{}{"next_key_lead": "0"}, "next_key_lead must be at least 2s, got 0s"},
		{map[string]interface{}{"next_key_lead": "-5s"}, "next_key_lead"}, // the field check's message names it
		{map[string]interface{}{"next_key_lead": "48h"}, "shorter than rotation_period (24h0m0s)"},
		{map[string]interface{}{"next_key_lead": "soon"}, "next_key_lead"},
		{map[string]interface{}{"verification_ttl": "1h"}, `shorter than role "long"'s token_max_ttl`},
		{map[string]interface{}{"issuer": "http://vault.example/v1/kb"}, "must be https"},
		{map[string]interface{}{"issuer": "not a url"}, "absolute URL"},
		{map[string]interface{}{"isuer": "https://x"}, "unknown field(s): isuer"},
	} {
		e.userError(logical.UpdateOperation, "config", tc.data, tc.want)
	}
	if got := e.ok(logical.ReadOperation, "config", nil).Data; got["verification_ttl"] != int64(86400) || got["issuer"] != "" || got["next_key_lead"] != int64(3600) || got["rotation_period"] != int64(86400) {
		t.Fatalf("config changed by rejected writes: %#v", got)
	}
	e.userError(logical.CreateOperation, "roles/longer", map[string]interface{}{"token_max_ttl": "30h"}, "exceeds keybroker/config verification_ttl")

	// Changing the algorithm publishes a key of the new one, which signs
	// next_key_lead later (key_schedule_test.go follows it there).
	before := e.jwks().Len()
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"signing_algorithm": "ES256", "issuer": "http://127.0.0.1:8200/v1/keybroker"})
	if got := e.ok(logical.ReadOperation, "config", nil).Data["effective_issuer"]; got != "http://127.0.0.1:8200/v1/keybroker" {
		t.Fatalf("effective_issuer = %v, want the issuer set", got)
	}
	st, _ := e.b.signer.current(context.Background(), e.storage, e.b.Logger())
	if st.alg != "EdDSA" || st.next == nil || st.next.Alg != "ES256" || e.jwks().Len() != before+1 {
		t.Fatalf("after switching to ES256: signing alg %s, next %+v, %d keys", st.alg, st.next, e.jwks().Len())
	}
}

func TestSigningKeysSurviveReload(t *testing.T) {
	e := newJWTEnv(t, nil)
	token := e.ok(logical.UpdateOperation, "token/agent", nil).Data["token"].(string)
	// A new backend on the same storage: a plugin reload or Vault restart.
	conf := logical.TestBackendConfig()
	conf.StorageView = e.storage
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	e2 := &testEnv{t: t, b: lb.(*backend), storage: e.storage, entityID: "test-entity"}
	e2.checkAnswers()
	if got := e2.verifyReason(token, "10.0.0.1", nil); got != contract.ReasonOK {
		t.Fatalf("token after reload: %s", got)
	}
	for _, k := range e.storageKeys("") {
		entry, _ := e.storage.Get(context.Background(), k)
		if strings.Contains(string(entry.Value), token) {
			t.Fatalf("storage entry %s holds the token", k)
		}
	}
}

func jwtSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

// A retired key leaves the JWKS when verification_ttl ends, without waiting
// for another rotation.
func TestRetiredKeyLeavesJWKSOnTime(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"token_ttl": "1s", "token_max_ttl": "2s"})
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"verification_ttl": "2s"})
	e.jwks() // the first key
	// immediate: the first key retires now, not next_key_lead later.
	e.ok(logical.UpdateOperation, "rotate", map[string]interface{}{"immediate": true})
	if n := e.jwks().Len(); n != 2 {
		t.Fatalf("JWKS right after rotation: %d keys, want 2", n)
	}
	time.Sleep(2100 * time.Millisecond)
	if n := e.jwks().Len(); n != 1 {
		t.Fatalf("JWKS after verification_ttl: %d keys, want 1", n)
	}
}

// A token minted with the agent's key is DPoP-bound: cnf.jkt carries the
// key's thumbprint, token_type says DPoP, and keybroker/verify, which cannot
// check a proof, refuses it.
func TestTokenDPoPBinding(t *testing.T) {
	e := newJWTEnv(t, nil)
	k := dpoptest.NewKey(t, "ES256")
	var jwkObject map[string]interface{}
	if err := json.Unmarshal(k.JWK, &jwkObject); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]map[string]interface{}{
		"dpop_jkt": {"dpop_jkt": k.JKT},
		"dpop_jwk": {"dpop_jwk": string(k.JWK)},
		// As an HTTP JSON body sends it: an object, not a string.
		"dpop_jwk object": {"dpop_jwk": jwkObject},
	} {
		t.Run(name, func(t *testing.T) {
			resp := e.ok(logical.UpdateOperation, "token/agent", data)
			c, err := e.offline(resp.Data["token"].(string), "billing")
			if err != nil || c.BoundKey() != k.JKT || resp.Data["token_type"] != "DPoP" {
				t.Fatalf("bound token: %v cnf %+v token_type %v", err, c.Cnf, resp.Data["token_type"])
			}
			if got := e.verifyReason(resp.Data["token"].(string), "10.0.0.1", nil); got != contract.ReasonDPoPRequired {
				t.Fatalf("keybroker/verify on a bound token: %s", got)
			}
			// Revoked, it says revoked.
			if err := e.b.revoker.revokeJTI(context.Background(), e.storage, resp.Data["jti"].(string), time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if got := e.verifyReason(resp.Data["token"].(string), "10.0.0.1", nil); got != contract.ReasonRevoked {
				t.Fatalf("keybroker/verify on a revoked bound token: %s", got)
			}
		})
	}
	bearer := e.ok(logical.UpdateOperation, "token/agent", nil)
	if c, _ := e.offline(bearer.Data["token"].(string), "billing"); c.Cnf != nil || bearer.Data["token_type"] != "Bearer" {
		t.Fatalf("a token minted without a key: cnf %+v, token_type %v", c.Cnf, bearer.Data["token_type"])
	}

	var privateObject map[string]interface{}
	if err := json.Unmarshal(k.PrivateJWK(t), &privateObject); err != nil {
		t.Fatal(err)
	}
	rsa1024 := `{"kty":"RSA","n":"` + strings.Repeat("A", 170) + `","e":"AQAB"}`
	for _, tt := range []struct {
		data map[string]interface{}
		want string
	}{
		{map[string]interface{}{"dpop_jkt": k.JKT, "dpop_jwk": string(k.JWK)}, "not both"},
		{map[string]interface{}{"dpop_jkt": "short"}, "43 characters"},
		{map[string]interface{}{"dpop_jkt": strings.Repeat("+", 43)}, "43 characters"},
		{map[string]interface{}{"dpop_jwk": string(k.PrivateJWK(t))}, "private"},
		{map[string]interface{}{"dpop_jwk": `{"kty":"oct","k":"c2VjcmV0"}`}, "dpop_jwk"},
		{map[string]interface{}{"dpop_jwk": rsa1024}, "dpop_jwk"},
		{map[string]interface{}{"dpop_jwk": "not json"}, "not a JWK"},
		{map[string]interface{}{"dpop_jwk": strings.Repeat(" ", 9<<10)}, "over 8 KiB"},
		// An object is read as its JSON text, and refused as the text is.
		{map[string]interface{}{"dpop_jwk": privateObject}, "private"},
		{map[string]interface{}{"dpop_jwk": map[string]interface{}{"kty": "oct", "k": "c2VjcmV0"}}, "dpop_jwk"},
		{map[string]interface{}{"dpop_jwk": map[string]interface{}{"kty": "EC", "x": strings.Repeat("A", 20<<10)}}, "dpop_jwk must be a public JWK"},
		{map[string]interface{}{"dpop_jwk": map[string]interface{}{}}, "dpop_jwk"},
		// Neither an object nor a string: said so, not converted.
		{map[string]interface{}{"dpop_jwk": json.Number("5")}, "dpop_jwk must be a public JWK: a JSON object, or a string holding one; got a number"},
		{map[string]interface{}{"dpop_jwk": []interface{}{string(k.JWK)}}, "got a list"},
		{map[string]interface{}{"dpop_jwk": true}, "got true or false"},
		{map[string]interface{}{"dpop_jwk": nil}, "got null"},
	} {
		e.userError(logical.UpdateOperation, "token/agent", tt.data, tt.want)
	}

	// A role that requires DPoP refuses unbound mints, and says how.
	e.ok(logical.UpdateOperation, "roles/agent", map[string]interface{}{"require_dpop": true})
	if r := e.ok(logical.ReadOperation, "roles/agent", nil); r.Data["require_dpop"] != true {
		t.Fatalf("role read: require_dpop %v", r.Data["require_dpop"])
	}
	e.userError(logical.UpdateOperation, "token/agent", nil, "requires DPoP-bound tokens")
	e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"dpop_jkt": k.JKT})
}

// RFC 9068's client_id and auth_time: the Vault entity that asked, and
// when it minted the first token of the family, kept across refreshes.
func TestTokenClientIDAndAuthTime(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h", "subject": "entity_id"})
	first := e.ok(logical.UpdateOperation, "token/agent", nil)
	c1, err := e.offline(first.Data["token"].(string), "billing")
	if err != nil || c1.ClientID != "test-entity" || c1.AuthTime == nil || time.Since(c1.AuthTime.Time) > time.Minute {
		t.Fatalf("mint: %v client_id %q auth_time %v", err, c1.ClientID, c1.AuthTime)
	}
	time.Sleep(1100 * time.Millisecond)
	second := e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": first.Data["refresh_token"]})
	c2, err := e.offline(second.Data["token"].(string), "billing")
	if err != nil || c2.ClientID != "test-entity" || c2.AuthTime == nil || !c2.AuthTime.Equal(c1.AuthTime.Time) || !c2.IssuedAt.After(c1.AuthTime.Time) {
		t.Fatalf("refresh: %v client_id %q auth_time %v (first %v), iat %v", err, c2.ClientID, c2.AuthTime, c1.AuthTime, c2.IssuedAt)
	}
}

// Discovery lists every algorithm in the JWKS, the current one first: after
// a change of signing_algorithm the new one is listed from when its key is
// published, before it signs, and the old keys still verify tokens.
func TestDiscoveryListsEveryAlgorithm(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.ok(logical.UpdateOperation, "token/agent", nil) // the first key, EdDSA
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"signing_algorithm": "ES256"})
	disc := e.ok(logical.ReadOperation, ".well-known/openid-configuration", nil)
	var doc struct {
		Algs []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := json.Unmarshal(disc.Data[logical.HTTPRawBody].([]byte), &doc); err != nil {
		t.Fatal(err)
	}
	if strings.Join(doc.Algs, ",") != "EdDSA,ES256" {
		t.Fatalf("discovery algorithms %v, want EdDSA (signing) then ES256 (next)", doc.Algs)
	}

	// RFC 8414: the same issuer and algorithms; no endpoint that does not
	// exist, and the DPoP proof algorithms verifiers accept.
	var as map[string]interface{}
	raw := e.ok(logical.ReadOperation, ".well-known/oauth-authorization-server", nil).Data[logical.HTTPRawBody].([]byte)
	if err := json.Unmarshal(raw, &as); err != nil {
		t.Fatal(err)
	}
	var openid map[string]interface{}
	_ = json.Unmarshal(disc.Data[logical.HTTPRawBody].([]byte), &openid)
	if as["issuer"] != openid["issuer"] || as["jwks_uri"] != openid["jwks_uri"] || fmt.Sprint(as["access_token_signing_alg_values_supported"]) != "[EdDSA ES256]" {
		t.Fatalf("RFC 8414 metadata %s, openid %v", raw, openid)
	}
	if _, ok := as["token_endpoint"]; ok || fmt.Sprint(as["response_types_supported"]) != "[]" || !strings.Contains(fmt.Sprint(as["dpop_signing_alg_values_supported"]), "ES256") {
		t.Fatalf("RFC 8414 metadata %s", raw)
	}
}

// One token, one resource (RFC 8707; MCP forbids token passthrough): a
// token carries exactly one aud, the one asked for or the role's only one;
// a role with several audiences makes the caller choose, on a write and on
// Vault Agent's read alike, and a refused mint leaves nothing behind.
func TestTokenOneAudience(t *testing.T) {
	for _, tc := range []struct {
		name      string
		audiences string
		op        logical.Operation
		data      map[string]interface{}
		want      string // the one aud, or the error
	}{
		{"one audience, default", "billing", logical.UpdateOperation, nil, "billing"},
		{"one audience, read default", "billing", logical.ReadOperation, nil, "billing"},
		{"one audience named twice", "billing,billing", logical.UpdateOperation, nil, "billing"},
		{"one audience, asked", "billing", logical.UpdateOperation, map[string]interface{}{"audience": "billing"}, "billing"},
		{"several, asked", "billing,search,https://mcp.example.com/mcp", logical.UpdateOperation, map[string]interface{}{"audience": "https://mcp.example.com/mcp"}, "https://mcp.example.com/mcp"},
		{"several, read asked", "billing,search", logical.ReadOperation, map[string]interface{}{"audience": "search"}, "search"},
		{"several, none asked", "billing,search", logical.UpdateOperation, nil, `role "agent" allows several audiences (billing, search): name the one`},
		{"several, read none asked", "billing,search", logical.ReadOperation, nil, "allows several audiences"},
		{"several, empty asked", "billing,search", logical.UpdateOperation, map[string]interface{}{"audience": ""}, "allows several audiences"},
		{"several, two asked", "billing,search", logical.UpdateOperation, map[string]interface{}{"audience": "billing,search"}, `audience "billing,search" is not allowed`},
		{"several, case differs", "billing,search", logical.UpdateOperation, map[string]interface{}{"audience": "Billing"}, `audience "Billing" is not allowed`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newJWTEnv(t, map[string]interface{}{"audiences": tc.audiences, "refresh_ttl": "1h"})
			if strings.Contains(tc.want, " ") {
				before := e.storageKeys("")
				e.userError(tc.op, "token/agent", tc.data, tc.want)
				if after := e.storageKeys(""); !slices.Equal(before, after) {
					t.Fatalf("a refused mint stored something: %v, before %v", after, before)
				}
				return
			}
			resp := e.ok(tc.op, "token/agent", tc.data)
			if got := resp.Data["audience"].([]string); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("answer audience %v, want [%s]", got, tc.want)
			}
			c, err := e.offline(resp.Data["token"].(string), tc.want)
			if err != nil || len(c.Audience) != 1 {
				t.Fatalf("token for %s: %v, aud %v", tc.want, err, c)
			}
			for _, other := range strings.Split(tc.audiences+",search", ",") {
				if _, err := e.offline(resp.Data["token"].(string), other); other != tc.want && err == nil {
					t.Fatalf("a token for %s is accepted at %s", tc.want, other)
				}
			}
			if rt, _ := resp.Data["refresh_token"].(string); rt != "" {
				next := e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt})
				if got := next.Data["audience"].([]string); len(got) != 1 || got[0] != tc.want {
					t.Fatalf("refreshed audience %v, want [%s]", got, tc.want)
				}
			}
		})
	}
}

// A refresh family minted before tokens were for one resource each (its
// grant holds several audiences) mints no more tokens every audience
// accepts: its refresh is refused, the refresh token left unspent.
func TestRefreshOfASeveralAudienceFamily(t *testing.T) {
	e := newJWTEnv(t, map[string]interface{}{"audiences": "billing,search", "refresh_ttl": "1h"})
	first := e.ok(logical.UpdateOperation, "token/agent", map[string]interface{}{"audience": "billing"})
	rt := first.Data["refresh_token"].(string)
	parsed, err := apikey.Parse(rt)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	entry, err := getJSON[refreshEntry](ctx, e.storage, refreshPrefix+parsed.ID)
	if err != nil || entry == nil {
		t.Fatalf("refresh entry: %v %v", entry, err)
	}
	entry.Grant.Audiences = []string{"billing", "search"} // as the old code filed it
	if err := putJSON(ctx, e.storage, refreshPrefix+parsed.ID, entry); err != nil {
		t.Fatal(err)
	}
	e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt}, "several audiences [billing search]")
	// The role now allows only one of them: the family goes on with it.
	e.ok(logical.UpdateOperation, "roles/agent", map[string]interface{}{"audiences": "search"})
	next := e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": rt})
	if got := next.Data["audience"].([]string); len(got) != 1 || got[0] != "search" {
		t.Fatalf("refreshed audience %v", got)
	}
}
