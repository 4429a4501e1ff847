// Package jwtverify verifies keybroker agent JWTs. The plugin's verify path
// and the sidecar both use it, so a token means the same thing everywhere.
//
// It is strict by default:
//   - the key is chosen by kid and the key fixes the algorithm: a token that
//     names another alg is rejected, so "none" and HMAC-with-a-public-key
//     confusion cannot happen (a KeySet holds only EdDSA, ES256 and RS256
//     public keys);
//   - jku, x5u, jwk, x5c and crit headers are never trusted: a token carrying
//     one is rejected, and nothing is ever fetched;
//   - compact serialization only, strict unpadded base64url, a size cap;
//   - typ must be at+jwt (RFC 9068); exp, aud and iss are required; nbf and
//     iat are honoured with at most 60 seconds of clock skew.
//
// golang-jwt/jwt/v5 provides the signature primitives' glue (SigningMethod
// Verify) and claim validation (Validator). Its Parser is not used: it
// requires the payload to be a JSON claims object before the signature layer
// can be tested on its own, and it does not reject untrusted key headers.
package jwtverify
