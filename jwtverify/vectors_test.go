package jwtverify

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// External vectors live in the repository's testdata/ (see SOURCES.md there).
func loadJSON(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// strictDisagreements are the Wycheproof JWS cases where keybroker's answer
// differs from Wycheproof's on purpose. Both insert '?' into a base64url
// segment and are marked valid for decoders that skip characters outside the
// alphabet; keybroker decodes strictly, so one token has exactly one encoding.
var strictDisagreements = map[int]string{
	372: "'?' inserted in the header: strict base64url rejects it",
	373: "'?' inserted in the payload: strict base64url rejects it",
}

// Every Wycheproof compact-JWS case goes through VerifySignature. For keys of
// an algorithm keybroker accepts, the answer must be Wycheproof's; for every
// other key (HMAC, PS*, RS384/512, ES521, keys meant for encryption) no
// KeySet can even be built, so no token under them can ever verify.
func TestWycheproofJWS(t *testing.T) {
	var file struct {
		NumberOfTests int `json:"numberOfTests"`
		TestGroups    []struct {
			Comment string          `json:"comment"`
			Public  json.RawMessage `json:"public"`
			Private json.RawMessage `json:"private"`
			Tests   []struct {
				TcID    int    `json:"tcId"`
				Comment string `json:"comment"`
				JWS     any    `json:"jws"`
				Result  string `json:"result"`
			} `json:"tests"`
		} `json:"testGroups"`
	}
	loadJSON(t, "wycheproof/wycheproof_json_web_signature_test.json", &file)

	ran, accepted, rejectedKeys := 0, 0, 0
	for _, g := range file.TestGroups {
		var ks *KeySet
		var keyErr error
		raw := g.Public
		if len(raw) == 0 {
			raw = g.Private // HMAC groups only have the secret
		}
		k, err := KeyFromJWK(raw)
		if err == nil {
			ks, keyErr = NewKeySet(k)
		} else {
			keyErr = err
		}
		for _, tc := range g.Tests {
			ran++
			token, isCompact := tc.JWS.(string)
			name := strings.Join([]string{g.Comment, tc.Comment}, "/")
			if keyErr != nil {
				rejectedKeys++
				// Even the parser must not accept it: test the strict layer
				// on the unverifiable groups too.
				if isCompact && tc.TcID >= 357 && tc.TcID <= 377 {
					checkStrictBase64(t, tc.TcID, token, tc.Result)
				}
				continue
			}
			accepted++
			got := "invalid"
			if isCompact {
				if _, _, err := VerifySignature(token, ks, 0); err == nil {
					got = "valid"
				}
			}
			want := tc.Result
			if _, ok := strictDisagreements[tc.TcID]; ok {
				want = "invalid"
			}
			if got != want {
				t.Errorf("tcId %d (%s): got %s, Wycheproof says %s", tc.TcID, name, got, tc.Result)
			}
		}
	}
	if ran != file.NumberOfTests {
		t.Fatalf("ran %d cases, file has %d", ran, file.NumberOfTests)
	}
	t.Logf("%d cases: %d against an accepted key, %d under keys keybroker refuses", ran, accepted, rejectedKeys)
	if accepted < 250 {
		t.Fatalf("only %d cases ran against accepted keys", accepted)
	}
}

// checkStrictBase64 runs the HS256 "base64" group (tcId 357-377) through the
// segment decoder: keybroker refuses HS256 keys, but the decoding rules must
// still agree with Wycheproof, except for the documented disagreements.
func checkStrictBase64(t *testing.T, id int, token, result string) {
	t.Helper()
	parts := strings.Split(token, ".")
	ok := len(parts) == 3
	for _, p := range parts {
		if _, err := decodeSegment(p); err != nil {
			ok = false
		}
	}
	if _, disagree := strictDisagreements[id]; disagree {
		if ok {
			t.Errorf("tcId %d: strict decoding accepted a segment with '?'", id)
		}
		return
	}
	// Cases that are invalid only because of the MAC cannot be checked
	// without HMAC; the decoding-level ones must be rejected.
	if result == "valid" && !ok {
		t.Errorf("tcId %d: strict decoding rejected a correctly encoded token", id)
	}
}

func TestWycheproofEd25519(t *testing.T) {
	runPrimitiveVectors(t, "wycheproof/wycheproof_ed25519_test.json", jwt.SigningMethodEdDSA)
}

func TestWycheproofECDSAP256P1363(t *testing.T) {
	runPrimitiveVectors(t, "wycheproof/wycheproof_ecdsa_secp256r1_sha256_p1363_test.json", jwt.SigningMethodES256)
}

func TestWycheproofRSAPKCS1v15SHA256(t *testing.T) {
	runPrimitiveVectors(t, "wycheproof/wycheproof_rsa_signature_2048_sha256_test.json", jwt.SigningMethodRS256)
}

// runPrimitiveVectors checks the exact signature primitive VerifySignature
// calls (golang-jwt's SigningMethod.Verify) against Wycheproof. "acceptable"
// cases may go either way.
func runPrimitiveVectors(t *testing.T, name string, method jwt.SigningMethod) {
	var file struct {
		NumberOfTests int `json:"numberOfTests"`
		TestGroups    []struct {
			PublicKeyDer string `json:"publicKeyDer"`
			Tests        []struct {
				TcID    int    `json:"tcId"`
				Comment string `json:"comment"`
				Msg     string `json:"msg"`
				Sig     string `json:"sig"`
				Result  string `json:"result"`
			} `json:"tests"`
		} `json:"testGroups"`
	}
	loadJSON(t, name, &file)
	ran := 0
	for _, g := range file.TestGroups {
		der, err := hex.DecodeString(g.PublicKeyDer)
		if err != nil {
			t.Fatal(err)
		}
		pub, keyErr := x509.ParsePKIXPublicKey(der)
		for _, tc := range g.Tests {
			ran++
			msg, _ := hex.DecodeString(tc.Msg)
			sig, _ := hex.DecodeString(tc.Sig)
			valid := keyErr == nil && method.Verify(string(msg), sig, pub) == nil
			switch {
			case tc.Result == "acceptable":
			case valid != (tc.Result == "valid"):
				t.Errorf("tcId %d (%s): valid=%v, Wycheproof says %s", tc.TcID, tc.Comment, valid, tc.Result)
			}
		}
	}
	if ran != file.NumberOfTests || ran == 0 {
		t.Fatalf("ran %d of %d cases", ran, file.NumberOfTests)
	}
}

// RFC 7520 section 4.1 (RS256) verifies through the full signature layer.
func TestRFC7520RS256(t *testing.T) {
	var ex struct {
		Input struct {
			Payload string          `json:"payload"`
			Key     json.RawMessage `json:"key"`
			Alg     string          `json:"alg"`
		} `json:"input"`
		Output struct {
			Compact string `json:"compact"`
		} `json:"output"`
	}
	loadJSON(t, "rfc7520/jws_4_1.rsa_v15_signature.json", &ex)
	var jwk map[string]any
	_ = json.Unmarshal(ex.Input.Key, &jwk)
	jwk["alg"] = ex.Input.Alg // the cookbook key names no alg; the example's is RS256
	for _, priv := range []string{"d", "p", "q", "dp", "dq", "qi"} {
		delete(jwk, priv)
	}
	raw, _ := json.Marshal(jwk)
	k, err := KeyFromJWK(raw)
	if err != nil {
		t.Fatal(err)
	}
	ks, _ := NewKeySet(k)
	_, payload, err := VerifySignature(ex.Output.Compact, ks, 0)
	if err != nil || string(payload) != ex.Input.Payload {
		t.Fatalf("RFC 7520 4.1: %v, payload %q", err, payload)
	}
}

// RFC 8037 A.4 (Ed25519): the example has no kid, which keybroker's strict
// verifier requires, so the whole token is refused; its signature is checked
// with the primitive the verifier uses.
func TestRFC8037Ed25519(t *testing.T) {
	var ex struct {
		Input struct {
			Key json.RawMessage `json:"key"`
		} `json:"input"`
		Signing struct {
			SigInput string `json:"sig-input"`
			Sig      string `json:"sig"`
		} `json:"signing"`
		Output struct {
			Compact string `json:"compact"`
		} `json:"output"`
	}
	loadJSON(t, "rfc7520/curve25519_jws.json", &ex)
	var jwk map[string]any
	_ = json.Unmarshal(ex.Input.Key, &jwk)
	delete(jwk, "d")
	jwk["kid"], jwk["alg"] = "rfc8037", AlgEdDSA
	raw, _ := json.Marshal(jwk)
	k, err := KeyFromJWK(raw)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := decodeSegment(ex.Signing.Sig)
	if err != nil {
		t.Fatal(err)
	}
	if err := jwt.SigningMethodEdDSA.Verify(ex.Signing.SigInput, sig, k.Public); err != nil {
		t.Fatalf("RFC 8037 A.4 signature: %v", err)
	}
	ks, _ := NewKeySet(k)
	if _, _, err := VerifySignature(ex.Output.Compact, ks, 0); err != ErrUnknownKey {
		t.Fatalf("kid-less token: %v, want ErrUnknownKey", err)
	}
}
