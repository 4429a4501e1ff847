package backend

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// The issuer derived from VAULT_API_ADDR is stored the first time it is
// used, so that registering the plugin again (an upgrade) without -env, or
// with another address, changes nothing: tokens minted before still verify,
// minting and discovery go on with the same iss. Writing issuer= (empty)
// derives it again.
func TestIssuerSurvivesReRegistration(t *testing.T) {
	const first = "http://vault.internal:8200/v1/keybroker" // plain http: a private network
	t.Setenv(apiAddrEnv, "http://vault.internal:8200")
	e := newTestEnv(t)
	e.createRole("agent", map[string]interface{}{"audiences": "billing"})
	iss := func(resp *logical.Response) interface{} {
		t.Helper()
		claims, err := decodeJSONSegment(strings.Split(resp.Data["token"].(string), ".")[1])
		if err != nil {
			t.Fatal(err)
		}
		return claims["iss"]
	}
	before := e.ok(logical.UpdateOperation, "token/agent", nil)
	if iss(before) != first {
		t.Fatalf("iss %v, want %s", iss(before), first)
	}
	if c, _ := getConfig(context.Background(), e.storage); c.Issuer != first {
		t.Fatalf("stored issuer %q after the first mint, want %s", c.Issuer, first)
	}

	for _, env := range []string{"", "https://elsewhere.example:8200"} {
		t.Setenv(apiAddrEnv, env) // registered again, without -env or with another address
		if got := iss(e.ok(logical.UpdateOperation, "token/agent", nil)); got != first {
			t.Fatalf("VAULT_API_ADDR=%q: iss %v, want %s", env, got, first)
		}
		disc := e.ok(logical.ReadOperation, ".well-known/openid-configuration", nil)
		var doc map[string]interface{}
		_ = json.Unmarshal(disc.Data[logical.HTTPRawBody].([]byte), &doc)
		if doc["issuer"] != first || doc["jwks_uri"] != first+"/jwks" {
			t.Fatalf("VAULT_API_ADDR=%q: discovery %v", env, doc)
		}
		if v := e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": before.Data["token"]}); v.Data["valid"] != true {
			t.Fatalf("VAULT_API_ADDR=%q: a token minted before: %v", env, v.Data)
		}
		if d := e.ok(logical.ReadOperation, "config", nil).Data; d["issuer"] != first || d["effective_issuer"] != first {
			t.Fatalf("VAULT_API_ADDR=%q: config %v", env, d)
		}
	}
	// A stored http issuer does not make other config writes fail.
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"rotation_period": "2h"})

	// issuer= derives it again, from the address registered now.
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"issuer": ""})
	if got := iss(e.ok(logical.UpdateOperation, "token/agent", nil)); got != "https://elsewhere.example:8200/v1/keybroker" {
		t.Fatalf("after issuer=: iss %v", got)
	}
	t.Setenv(apiAddrEnv, "")
	if d := e.ok(logical.ReadOperation, "config", nil).Data; d["issuer"] != "https://elsewhere.example:8200/v1/keybroker" {
		t.Fatalf("after issuer= and a mint: config %v", d)
	}
}

// A read of config, discovery or a verification stores nothing: they are
// reads anyone (discovery: without a token) can send, and must not fix the
// issuer to whatever the registration says at that moment; the first mint
// does (from review). A mount that has none says how to set one, stores
// nothing, and still answers.
func TestIssuerNotStoredByReads(t *testing.T) {
	t.Setenv(apiAddrEnv, "")
	e := newTestEnv(t)
	resp := e.ok(logical.ReadOperation, "config", nil)
	if _, ok := resp.Data["effective_issuer"]; ok || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "no issuer") {
		t.Fatalf("no issuer: %v %v", resp.Data, resp.Warnings)
	}
	t.Setenv(apiAddrEnv, "https://vault.example.com:8200/")
	if d := e.ok(logical.ReadOperation, "config", nil).Data; d["issuer"] != "" || d["effective_issuer"] != "https://vault.example.com:8200/v1/keybroker" {
		t.Fatalf("config %v", d)
	}
	e.ok(logical.ReadOperation, ".well-known/openid-configuration", nil)
	e.ok(logical.ReadOperation, ".well-known/oauth-authorization-server", nil)
	e.ok(logical.UpdateOperation, "verify", map[string]interface{}{"credential": "eyJhbGciOiJFZERTQSJ9.e30.AAAA"})
	if c, err := getConfig(context.Background(), e.storage); err != nil || c.Issuer != "" {
		t.Fatalf("a read stored the issuer: %q %v", c.Issuer, err)
	}
}

// readOnlyStorage refuses writes, as a performance standby's storage does.
type readOnlyStorage struct{ logical.Storage }

func (readOnlyStorage) Put(context.Context, *logical.StorageEntry) error { return logical.ErrReadOnly }

// Where storage is read-only, the derived issuer is used without being
// stored (the active node stores it).
func TestIssuerOnReadOnlyStorage(t *testing.T) {
	t.Setenv(apiAddrEnv, "https://vault.example.com:8200")
	e := newTestEnv(t)
	if _, err := e.b.signer.current(context.Background(), e.storage, e.b.Logger()); err != nil { // the active node made the key
		t.Fatal(err)
	}
	e.storage = readOnlyStorage{e.storage}
	disc := e.ok(logical.ReadOperation, ".well-known/openid-configuration", nil)
	var doc map[string]interface{}
	_ = json.Unmarshal(disc.Data[logical.HTTPRawBody].([]byte), &doc)
	if doc["issuer"] != "https://vault.example.com:8200/v1/keybroker" {
		t.Fatalf("discovery on read-only storage: %v", doc)
	}
}
