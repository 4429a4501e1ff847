package jwtverify_test

import (
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/dpoptest"
	"github.com/keybroker/keybroker/jwtverify"
)

// A remembered header decides nothing a fresh parse would not: every
// proof's signature, binding and claims are still checked, a header enters
// only with a valid signature, one byte of difference is another header,
// and the cache holds at most its size.
func TestProofKeys(t *testing.T) {
	now := time.Now()
	const url, token = "https://api.example.com/read", "the-token"
	k := dpoptest.NewKey(t, "ES256")
	keys := jwtverify.NewProofKeys(2)
	check := jwtverify.ProofCheck{Method: "GET", URL: url, AccessToken: token, JKT: k.JKT, Now: now, MaxAge: time.Minute, Leeway: 5 * time.Second, Keys: keys}
	verify := func(p string, c jwtverify.ProofCheck) error { _, err := jwtverify.VerifyProof(p, c); return err }

	good := k.Proof(t, "GET", url, token, now, nil)
	dot := strings.LastIndexByte(good, '.')
	forged := good[:dot+1] + strings.Repeat("A", len(good)-dot-1)
	if verify(forged, check) != jwtverify.ErrProofSignature || keys.Len() != 0 {
		t.Fatalf("a proof with a bad signature left its header (%d held)", keys.Len())
	}
	// A valid signature on claims that fail enters nothing either: only a
	// proof that verified whole is remembered.
	if verify(k.Proof(t, "POST", url, token, now, nil), check) != jwtverify.ErrProofClaims || keys.Len() != 0 {
		t.Fatalf("a proof with wrong claims left its header (%d held)", keys.Len())
	}
	if verify(k.Proof(t, "GET", url, token, now.Add(-time.Hour), nil), check) != jwtverify.ErrProofTime || keys.Len() != 0 {
		t.Fatalf("a stale proof left its header (%d held)", keys.Len())
	}
	if err := verify(good, check); err != nil || keys.Len() != 1 {
		t.Fatalf("a good proof: %v, %d held", err, keys.Len())
	}
	// With its header remembered, a proof is still checked whole.
	if err := verify(forged, check); err != jwtverify.ErrProofSignature {
		t.Fatalf("a forged signature under a remembered header: %v", err)
	}
	other := dpoptest.NewKey(t, "ES256")
	bound := check
	bound.JKT = other.JKT
	if err := verify(k.Proof(t, "GET", url, token, now, nil), bound); err != jwtverify.ErrProofBinding {
		t.Fatalf("a remembered key taken for another binding: %v", err)
	}
	if err := verify(k.Proof(t, "POST", url, token, now, nil), check); err != jwtverify.ErrProofClaims {
		t.Fatalf("claims under a remembered header: %v", err)
	}
	if err := verify(k.Proof(t, "GET", url, token, now.Add(-time.Hour), nil), check); err != jwtverify.ErrProofTime {
		t.Fatalf("iat under a remembered header: %v", err)
	}
	// Another key's proof signed by this key: its header differs by the
	// jwk, so it is parsed, and its signature fails.
	swapped := k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["jwk"] = other.JWK })
	if err := verify(swapped, jwtverify.ProofCheck{Method: "GET", URL: url, AccessToken: token, JKT: other.JKT, Now: now, MaxAge: time.Minute, Leeway: 5 * time.Second, Keys: keys}); err != jwtverify.ErrProofSignature {
		t.Fatalf("a proof carrying another's jwk: %v", err)
	}
	// The same header under another credential's binding is another
	// entry: a proof only ever hits what was remembered under its own
	// binding, so a refusal's timing says nothing of other clients.
	unbound := check
	unbound.JKT = ""
	if err := verify(k.Proof(t, "GET", url, token, now, nil), unbound); err != nil || keys.Len() != 1 {
		t.Fatalf("a proof under no binding: %v, %d held; want it verified and not remembered", err, keys.Len())
	}
	// A header one field longer is another header.
	extra := k.Proof(t, "GET", url, token, now, func(h, _ map[string]interface{}) { h["x"] = "y" })
	if err := verify(extra, check); err != nil || keys.Len() != 2 {
		t.Fatalf("a second header: %v, %d held", err, keys.Len())
	}
	for _, alg := range []string{"EdDSA", "ES384"} {
		o := dpoptest.NewKey(t, alg)
		c := check
		c.JKT = o.JKT
		if err := verify(o.Proof(t, "GET", url, token, now, nil), c); err != nil {
			t.Fatal(err)
		}
		if keys.Len() != 2 {
			t.Fatalf("%d headers held, size 2", keys.Len())
		}
	}
	// Whichever were forgotten, k's proofs verify as before.
	if err := verify(k.Proof(t, "GET", url, token, now, nil), check); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkVerifyProofKnownKey(b *testing.B) {
	for _, alg := range []string{"ES256", "EdDSA"} {
		b.Run(alg, func(b *testing.B) {
			k := dpoptest.NewKey(b, alg)
			now := time.Now()
			p := k.Proof(b, "GET", "https://api.example.com/read", "the-token", now, nil)
			check := jwtverify.ProofCheck{Method: "GET", URL: "https://api.example.com/read", AccessToken: "the-token", JKT: k.JKT, Now: now, MaxAge: time.Minute, Leeway: 5 * time.Second, Keys: jwtverify.NewProofKeys(16)}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := jwtverify.VerifyProof(p, check); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
