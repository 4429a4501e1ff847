package jwtverify

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// What the claims scanner accepts, it reads exactly as encoding/json does;
// and it accepts the claims clients send.
func FuzzScanProofClaims(f *testing.F) {
	for _, s := range []string{
		`{"jti":"a","htm":"GET","htu":"https://x/y","iat":1800000000,"ath":"abc"}`,
		` { "iat" : 1.5e3 , "jti" : "x" , "nonce" : "n" , "client_id" : 7 } `,
		`{}`, `{"jti":"a","jti":"b"}`, `{"JTI":"a"}`, `{"jti":"\u0041"}`, `{"ath":null}`,
		`{"iat":"1"}`, `{"jti":1}`, `{"a":{}}`, `{"a":1,}`, `{"iat":01}`, `{"iat":-0.5E+2}`,
		`{"jti":"a"}x`, "{\"jti\":\"\x7f\"}", `{"jti":"é"}`, `{"x":1}{}`, `[]`, ``, `{"iat":-}`, `{"iat":1.}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		got, ok := scanProofClaims(p)
		if !ok {
			return
		}
		var want proofClaims
		if err := json.Unmarshal(p, &want); err != nil {
			t.Fatalf("%q scanned, but encoding/json says %v", p, err)
		}
		if got.JTI != want.JTI || got.HTM != want.HTM || got.HTU != want.HTU || !bytes.Equal(got.IAT, want.IAT) ||
			(got.ATH == nil) != (want.ATH == nil) || (got.ATH != nil && *got.ATH != *want.ATH) {
			t.Fatalf("%q: scanned %+v, encoding/json %+v", p, got, want)
		}
	})
}

func TestScanProofClaimsReadsClientClaims(t *testing.T) {
	for _, p := range []string{
		`{"ath":"fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo","htm":"GET","htu":"https://api.example.com/read","iat":1800000000,"jti":"e1j3V_bKic8-LAEB"}`,
		`{"jti":"-BwC3ESc6acc2lTc","htm":"POST","htu":"https://server.example.com/token","iat":1562262616,"nonce":"eyJ7S_zG.eyJH0-Z.HX4w-7v"}`,
	} {
		if _, ok := scanProofClaims([]byte(p)); !ok {
			t.Errorf("%s: left to encoding/json", p)
		}
	}
}

// An iat of whole seconds is read without jwt.NumericDate, to the same
// time.
func TestWholeSecondsAsNumericDate(t *testing.T) {
	for _, raw := range []string{"0", "1", "1800000000", "999999999999999", "4102444800"} {
		var want jwt.NumericDate
		if err := want.UnmarshalJSON([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		got, ok := wholeSeconds([]byte(raw))
		if !ok || !time.Unix(got, 0).Equal(want.Time) {
			t.Errorf("%s: %d (%v), NumericDate %v", raw, got, ok, want.Time)
		}
	}
	for _, raw := range []string{"", "01", "1.5", "1e3", "-1", "1000000000000000", "12a"} {
		if _, ok := wholeSeconds([]byte(raw)); ok {
			t.Errorf("%q read as whole seconds", raw)
		}
	}
}
