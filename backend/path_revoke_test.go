package backend

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/jwtverify"
)

func TestRevokeByValue(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	k := e.mint("web", nil)
	key := k.Data["key"].(string)
	tok := e.ok(logical.UpdateOperation, "token/agent", nil)
	unknown := "kb_" + strings.Repeat("A", 12) + "_" + strings.Repeat("B", 43)

	resp := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": key, "keys": tok.Data["token"].(string) + ",not-a-key," + key})
	got := resp.Data["results"].([]map[string]interface{})
	want := []struct{ kind, id, result string }{
		{secretTypeAPIKey, k.Data["key_id"].(string), "revoked"},
		{secretTypeJWT, tok.Data["jti"].(string), "revoked"},
		{secretTypeAPIKey, "", "malformed"},
		{secretTypeAPIKey, k.Data["key_id"].(string), "already_revoked"},
	}
	if len(got) != len(want) {
		t.Fatalf("results %#v", got)
	}
	for i, w := range want {
		if got[i]["kind"] != w.kind || (w.id != "" && got[i]["id"] != w.id) || got[i]["result"] != w.result || got[i]["index"] != i {
			t.Errorf("result %d: %#v, want %+v", i, got[i], w)
		}
	}
	for _, r := range got {
		for _, v := range r {
			if s, ok := v.(string); ok && (strings.Contains(s, key) || strings.Contains(s, tok.Data["token"].(string))) {
				t.Fatalf("a result names the credential: %#v", r)
			}
		}
	}
	if v := e.verifyKey(key); v["reason"] != "revoked" {
		t.Fatalf("key after revoke by value: %v", v["reason"])
	}
	ids, _, _ := e.feed(0)
	if !slices.Contains(ids, tok.Data["jti"].(string)) || !slices.Contains(ids, k.Data["key_id"].(string)) {
		t.Fatalf("feed %v", ids)
	}
	if r := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": unknown}).Data["results"].([]map[string]interface{}); r[0]["result"] != "not_found" && r[0]["result"] != "malformed" {
		t.Fatalf("unknown key: %#v", r)
	}
	if r := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": tok.Data["token"]}).Data["results"].([]map[string]interface{}); r[0]["result"] != "already_revoked" {
		t.Fatalf("revoked JWT again: %#v", r)
	}
	// A role may choose the refresh tokens' prefix for its keys: such a
	// key is still found, and revoked, as an API key.
	e.createRole("lookalike", map[string]interface{}{"key_prefix": refreshTokenPrefix})
	la := e.mint("lookalike", nil)
	if r := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": la.Data["key"]}).Data["results"].([]map[string]interface{}); r[0]["kind"] != secretTypeAPIKey || r[0]["result"] != revokeRevoked || r[0]["id"] != la.Data["key_id"] {
		t.Fatalf("an API key with the refresh tokens' prefix: %#v", r)
	}
	e.userError(logical.UpdateOperation, "revoke", nil, "give key")
	e.userError(logical.UpdateOperation, "revoke", map[string]interface{}{"keys": strings.Repeat("x,", 101)}, "at most 100")
}

// signedByMount signs claims with the mount's own signing key: a token this
// plugin could have minted, with times a test chooses.
func (e *testEnv) signedByMount(c jwtverify.Claims) string {
	e.t.Helper()
	st, err := e.b.signer.current(context.Background(), e.storage, e.b.Logger())
	if err != nil {
		e.t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(st.alg), c)
	tok.Header["kid"], tok.Header["typ"] = st.kid, jwtverify.TokenType
	s, err := tok.SignedString(st.signer)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// familyOf is the state of the refresh family jti belongs to.
func (e *testEnv) familyOf(jti string) *family {
	e.t.Helper()
	link, err := getJSON[tokenFamily](context.Background(), e.storage, tokenFamilyPrefix+jti)
	if err != nil || link == nil {
		e.t.Fatalf("no family indexed for %s: %v", jti, err)
	}
	f, err := getJSON[family](context.Background(), e.storage, familyPrefix+link.Family)
	if err != nil || f == nil {
		e.t.Fatalf("family %s: %v", link.Family, err)
	}
	return f
}

// Revoking by value revokes everything the value stands for: a JWT its
// refresh family (as revoking its lease does), a refresh token its family
// (as presenting it twice does); a credential already expired is answered
// expired and changes nothing; a JWT this mount did not sign is not_found.
func TestRevokeByValueRevokesWhatItStandsFor(t *testing.T) {
	// A family: a mint, then a refresh of it (first's refresh token spent).
	type fam struct{ first, second *logical.Response }
	refreshID := func(rt string) string {
		p, err := apikey.Parse(rt)
		if err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	str := func(r *logical.Response, k string) string { return r.Data[k].(string) }
	foreign := func() string {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwtverify.Claims{RegisteredClaims: jwt.RegisteredClaims{
			Issuer: testIssuer, Audience: jwt.ClaimStrings{"billing"}, ID: "foreign", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}})
		tok.Header["kid"], tok.Header["typ"] = "k1", jwtverify.TokenType
		s, _ := tok.SignedString(priv)
		return s
	}()
	unknownRefresh, _, err := apikey.Generate(nil, refreshTokenPrefix)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name          string
		setup         func(e *testEnv, f fam) // before the revocation
		cred          func(e *testEnv, f fam) string
		kind, result  string
		id            func(f fam) string // "" : no id
		familyRevoked bool
	}{
		{name: "the family's first JWT", cred: func(_ *testEnv, f fam) string { return str(f.first, "token") },
			kind: secretTypeJWT, result: revokeRevoked, id: func(f fam) string { return str(f.first, "jti") }, familyRevoked: true},
		{name: "a refreshed JWT", cred: func(_ *testEnv, f fam) string { return str(f.second, "token") },
			kind: secretTypeJWT, result: revokeRevoked, id: func(f fam) string { return str(f.second, "jti") }, familyRevoked: true},
		{name: "a JWT revoked alone before, its family live",
			setup: func(e *testEnv, f fam) {
				exp, _ := time.Parse(time.RFC3339, str(f.first, "expires_at"))
				if err := e.b.revoker.revokeJTI(context.Background(), e.storage, str(f.first, "jti"), exp); err != nil {
					t.Fatal(err)
				}
			},
			cred: func(_ *testEnv, f fam) string { return str(f.first, "token") },
			kind: secretTypeJWT, result: revokeRevoked, id: func(f fam) string { return str(f.first, "jti") }, familyRevoked: true},
		{name: "an unspent refresh token", cred: func(_ *testEnv, f fam) string { return str(f.second, "refresh_token") },
			kind: kindRefreshToken, result: revokeRevoked, id: func(f fam) string { return refreshID(str(f.second, "refresh_token")) }, familyRevoked: true},
		{name: "a spent refresh token", cred: func(_ *testEnv, f fam) string { return str(f.first, "refresh_token") },
			kind: kindRefreshToken, result: revokeRevoked, id: func(f fam) string { return refreshID(str(f.first, "refresh_token")) }, familyRevoked: true},
		// Within a verifier's leeway an expired token still passes: it is
		// revoked, with its family (from review: it was answered expired).
		{name: "a JWT of the family past its exp, within the leeway",
			cred: func(e *testEnv, f fam) string {
				now := time.Now()
				return e.signedByMount(jwtverify.Claims{RegisteredClaims: jwt.RegisteredClaims{Issuer: testIssuer, Audience: jwt.ClaimStrings{"billing"},
					ID: str(f.first, "jti"), IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute)), ExpiresAt: jwt.NewNumericDate(now.Add(-7 * time.Second))}})
			},
			kind: secretTypeJWT, result: revokeRevoked, id: func(f fam) string { return str(f.first, "jti") }, familyRevoked: true},
		{name: "a JWT of the family past its exp and every leeway",
			cred: func(e *testEnv, f fam) string {
				now := time.Now()
				return e.signedByMount(jwtverify.Claims{RegisteredClaims: jwt.RegisteredClaims{Issuer: testIssuer, Audience: jwt.ClaimStrings{"billing"},
					ID: str(f.first, "jti"), IssuedAt: jwt.NewNumericDate(now.Add(-2 * time.Minute)), ExpiresAt: jwt.NewNumericDate(now.Add(-contract.RevocationGrace - time.Second))}})
			},
			kind: secretTypeJWT, result: revokeExpired, id: func(f fam) string { return str(f.first, "jti") }},
		{name: "an expired refresh token",
			setup: func(e *testEnv, f fam) {
				id := refreshID(str(f.second, "refresh_token"))
				r, _ := getJSON[refreshEntry](context.Background(), e.storage, refreshPrefix+id)
				r.ExpiresAt = time.Now().Add(-time.Second)
				if err := putJSON(context.Background(), e.storage, refreshPrefix+id, r); err != nil {
					t.Fatal(err)
				}
			},
			cred: func(_ *testEnv, f fam) string { return str(f.second, "refresh_token") },
			kind: kindRefreshToken, result: revokeExpired, id: func(f fam) string { return refreshID(str(f.second, "refresh_token")) }},
		{name: "a JWT another issuer signed", cred: func(*testEnv, fam) string { return foreign },
			kind: secretTypeJWT, result: revokeNotFound},
		{name: "a refresh token no family has", cred: func(*testEnv, fam) string { return unknownRefresh },
			kind: kindRefreshToken, result: revokeNotFound},
		{name: "a garbled JWT", cred: func(*testEnv, fam) string { return "not.a.jwt" },
			kind: secretTypeJWT, result: revokeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newJWTEnv(t, map[string]interface{}{"refresh_ttl": "1h"})
			var f fam
			f.first = e.ok(logical.UpdateOperation, "token/agent", nil)
			f.second = e.ok(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": f.first.Data["refresh_token"]})
			if tc.setup != nil {
				tc.setup(e, f)
			}
			feedBefore, _, _ := e.feed(0)
			cred := tc.cred(e, f)
			got := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": cred}).Data["results"].([]map[string]interface{})[0]
			wantID := ""
			if tc.id != nil {
				wantID = tc.id(f)
			}
			if got["kind"] != tc.kind || got["result"] != tc.result || (got["id"] != nil) != (wantID != "") || (wantID != "" && got["id"] != wantID) {
				t.Fatalf("result %#v, want kind %s result %s id %q", got, tc.kind, tc.result, wantID)
			}
			for _, v := range got {
				if s, ok := v.(string); ok && len(cred) > 20 && strings.Contains(cred, s) && len(s) > 20 {
					t.Fatalf("the result names the credential: %#v", got)
				}
			}

			fm := e.familyOf(str(f.first, "jti"))
			if revoked := !fm.RevokedAt.IsZero(); revoked != tc.familyRevoked {
				t.Fatalf("family revoked: %v, want %v", revoked, tc.familyRevoked)
			}
			want := contract.ReasonOK
			if tc.familyRevoked {
				want = contract.ReasonRevoked
				e.userError(logical.UpdateOperation, "token/refresh", map[string]interface{}{"refresh_token": f.second.Data["refresh_token"]}, "family was revoked")
			}
			for _, r := range []*logical.Response{f.first, f.second} {
				if tc.setup != nil && tc.result == revokeRevoked && r == f.first {
					continue // revoked alone before
				}
				if got := e.verifyReason(str(r, "token"), "10.0.0.1", nil); got != want {
					t.Fatalf("token %s after the revocation: %s, want %s", str(r, "jti"), got, want)
				}
			}
			if feedAfter, _, _ := e.feed(0); !tc.familyRevoked && !slices.Equal(feedAfter, feedBefore) {
				t.Fatalf("feed changed from %v to %v, want nothing changed", feedBefore, feedAfter)
			}
			if tc.result != revokeRevoked {
				return
			}
			// Again: nothing left to revoke.
			again := e.ok(logical.UpdateOperation, "revoke", map[string]interface{}{"key": cred}).Data["results"].([]map[string]interface{})[0]
			if again["result"] != revokeAlready || again["kind"] != tc.kind {
				t.Fatalf("revoked again: %#v, want already_revoked", again)
			}
		})
	}
}
