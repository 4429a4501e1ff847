package jwtverify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strconv"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// verifyES decides every signature as golang-jwt's ES256 and ES384 do:
// good ones (a leading zero or a high bit in r or s among them: 1 in 256
// and 1 in 2), altered ones, zero halves and wrong lengths.
func TestVerifyESAsGolangJWT(t *testing.T) {
	for _, tc := range []struct {
		curve  elliptic.Curve
		hash   crypto.Hash
		method jwt.SigningMethod
	}{
		{elliptic.P256(), crypto.SHA256, jwt.SigningMethodES256},
		{elliptic.P384(), crypto.SHA384, jwt.SigningMethodES384},
	} {
		key, err := ecdsa.GenerateKey(tc.curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var leadingZero, highBit int
		// Until one has a leading zero in r or s (1 in 128), 100 at
		// least.
		for i := 0; i < 100 || (leadingZero == 0 && i < 5000); i++ {
			signed := "header.payload-" + strconv.Itoa(i)
			sig, err := tc.method.Sign(signed, key)
			if err != nil {
				t.Fatal(err)
			}
			half := len(sig) / 2
			if sig[0] == 0 || sig[half] == 0 {
				leadingZero++
			}
			if sig[0]&0x80 != 0 {
				highBit++
			}
			zeroR := append(make([]byte, half), sig[half:]...)
			zeroS := append(append([]byte{}, sig[:half]...), make([]byte, half)...)
			flipped := append([]byte{}, sig...)
			flipped[i%len(sig)] ^= 1 << (i % 8)
			for _, s := range [][]byte{sig, zeroR, zeroS, flipped, sig[:len(sig)-1], append(append([]byte{}, sig...), 0)} {
				want := tc.method.Verify(signed, s, &key.PublicKey) == nil
				if got := verifyES(&key.PublicKey, tc.hash, signed, s); got != want {
					t.Fatalf("%s, signature %x: %v, golang-jwt %v", tc.method.Alg(), s, got, want)
				}
			}
			if !verifyES(&key.PublicKey, tc.hash, signed, sig) {
				t.Fatalf("%s: a good signature refused", tc.method.Alg())
			}
		}
		if leadingZero == 0 || highBit == 0 {
			t.Fatalf("%s: %d signatures with a leading zero, %d with a high bit", tc.method.Alg(), leadingZero, highBit)
		}
	}
}
