package jwtverify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/sha512"
)

// verifyES checks a JWS ECDSA signature (RFC 7518 §3.4: r and s, each the
// curve's size, big-endian) as golang-jwt does, without its round trip
// through big.Int and an ASN.1 builder: the signature is written in DER
// into one small buffer and checked by ecdsa.VerifyASN1, what
// BenchmarkDPoPFloor measures.
func verifyES(key *ecdsa.PublicKey, hash crypto.Hash, signed string, sig []byte) bool {
	if key == nil {
		return false
	}
	size := (key.Curve.Params().BitSize + 7) / 8
	if len(sig) != 2*size {
		return false
	}
	var digest []byte
	switch hash {
	case crypto.SHA256:
		d := sha256.Sum256([]byte(signed))
		digest = d[:]
	case crypto.SHA384:
		d := sha512.Sum384([]byte(signed))
		digest = d[:]
	default:
		return false
	}
	// SEQUENCE { INTEGER r, INTEGER s }: at most 2 + 2 x (2 + 1 + 48)
	// bytes for P-384, so every length fits one byte.
	var buf [2 + 2*(3+48)]byte
	der, ok := appendDERInt(buf[:2], sig[:size])
	if !ok {
		return false
	}
	if der, ok = appendDERInt(der, sig[size:]); !ok {
		return false
	}
	der[0], der[1] = 0x30, byte(len(der)-2)
	return ecdsa.VerifyASN1(key, digest, der)
}

// appendDERInt appends the unsigned big-endian v as a DER INTEGER; a zero
// is no valid r or s.
func appendDERInt(b, v []byte) ([]byte, bool) {
	for len(v) > 0 && v[0] == 0 {
		v = v[1:]
	}
	if len(v) == 0 {
		return nil, false
	}
	if v[0]&0x80 != 0 { // would read as negative: a leading zero
		b = append(b, 0x02, byte(len(v)+1), 0)
	} else {
		b = append(b, 0x02, byte(len(v)))
	}
	return append(b, v...), true
}
