package jwtverify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// DPoP (RFC 9449): a token bound to a key pair the client holds is usable
// only with a fresh proof signed by that key for the very request.

const (
	// ProofType is the typ header of a DPoP proof.
	ProofType = "dpop+jwt"
	// MaxProofSize caps a proof before any decoding: a P-521 or 4096-bit
	// RSA key and the claims fit well within it.
	MaxProofSize = 4 << 10
	// MaxJTILength caps a proof's jti, which verifiers keep to refuse
	// replays.
	MaxJTILength = 128
)

// proofAlgorithms are the signature algorithms accepted for proofs, in the
// order a WWW-Authenticate challenge lists them: asymmetric only (RFC 9449
// §4.3: never none, never a MAC). Ed25519 is EdDSA on that curve under its
// fully-specified name (RFC 9864), which newer clients send.
var proofAlgorithms = [...]string{"ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"}

// ProofAlgorithms returns the signature algorithms accepted for proofs, in
// the order a WWW-Authenticate challenge lists them; a copy, so that no
// caller can change what the verifier accepts.
func ProofAlgorithms() []string { return slices.Clone(proofAlgorithms[:]) }

// minRSABits and maxRSABits bound the RSA keys a proof may be signed with:
// weak ones are refused, and huge ones would make every refused proof cost
// milliseconds of CPU.
const (
	minRSABits = 2048
	maxRSABits = 4096
)

// Proof errors. A verifier answers all of them as invalid_dpop_proof; they
// differ for logs and metrics. None carries the proof.
var (
	ErrProofMalformed = errors.New("dpop proof is not a compact JWS with strict base64url parts and a dpop+jwt header")
	ErrProofKey       = errors.New("dpop proof key is missing, private, of an unsupported kind or too weak for its alg")
	ErrProofSignature = errors.New("dpop proof signature is invalid")
	ErrProofClaims    = errors.New("dpop proof claims are missing or do not match the request")
	ErrProofTime      = errors.New("dpop proof iat is outside the accepted window")
	ErrProofBinding   = errors.New("dpop proof is signed by another key than the token is bound to")
)

// ProofCheck is the request a proof must be for.
type ProofCheck struct {
	// Method is the request's method; htm must equal it.
	Method string
	// URL is the request's target URI without query or fragment,
	// scheme://host[:port]/path, as the client addressed it; htu must
	// name the same URI (compared after RFC 3986 normalisation).
	URL string
	// Target, when set, decides on htm and htu instead of Method and URL:
	// for a verifier that knows the path it serves but not the origin
	// clients reach it by (the plugin, behind Vault's listener).
	Target func(htm, htu string) bool
	// AccessToken is the token the proof comes with; ath must be its
	// hash. Empty: a proof without a token (a refresh), ath not checked.
	AccessToken string
	// JKT is the thumbprint the credential is bound to; empty accepts any
	// key (the caller binds to the returned one).
	JKT string
	// Now is the clock; MaxAge is how long before now iat may be, Leeway
	// how far after (clock skew).
	Now            time.Time
	MaxAge, Leeway time.Duration
	// Keys, when set, remembers the headers of proofs that verified, so
	// that a client's next proof skips parsing its key (see ProofKeys).
	Keys *ProofKeys
}

// Proof is what a valid proof says.
type Proof struct {
	JTI      string
	JKT      string // the RFC 7638 thumbprint of the key that signed it
	IssuedAt time.Time
}

type proofHeader struct {
	Typ string          `json:"typ"`
	Alg string          `json:"alg"`
	JWK json.RawMessage `json:"jwk"`

	Crit json.RawMessage `json:"crit"`
	JKU  json.RawMessage `json:"jku"`
	X5U  json.RawMessage `json:"x5u"`
	X5C  json.RawMessage `json:"x5c"`
	Kid  json.RawMessage `json:"kid"`
}

// VerifyProof checks a DPoP proof as RFC 9449 §4.3 says: one compact JWS,
// typ dpop+jwt, an asymmetric alg matching the embedded public jwk, a valid
// signature, htm and htu naming this request, iat within the window, ath
// the hash of the access token, and the key the token is bound to. Replays
// (a jti seen before) are the caller's to refuse: it keeps the jtis.
func VerifyProof(proof string, c ProofCheck) (*Proof, error) {
	if len(proof) > MaxProofSize {
		return nil, ErrProofMalformed
	}
	header, payload, sig, signed, err := splitProof(proof)
	if err != nil {
		return nil, err
	}
	h, known := c.Keys.get(c.JKT, header)
	if !known {
		if h, err = parseProofHead(header); err != nil {
			return nil, err
		}
	}
	if err := verifyProofSignature(h, c.JKT, signed, sig); err != nil {
		return nil, err
	}
	cl, err := parseProofClaims(payload)
	if err != nil {
		return nil, err
	}
	if err := c.checkTarget(cl.HTM, cl.HTU); err != nil {
		return nil, err
	}
	if err := c.checkATH(cl.ATH); err != nil {
		return nil, err
	}
	iat, err := c.checkIAT(cl.IAT)
	if err != nil {
		return nil, err
	}
	if !known {
		// Only a proof that verified whole is remembered (ProofKeys).
		c.Keys.put(c.JKT, header, h)
	}
	return &Proof{JTI: cl.JTI, JKT: h.jkt, IssuedAt: iat}, nil
}

// splitProof cuts a compact JWS into its header segment, left encoded (it
// is what ProofKeys remembers), and its decoded payload and signature.
func splitProof(proof string) (header string, payload, sig []byte, signed string, err error) {
	first := strings.IndexByte(proof, '.')
	last := strings.LastIndexByte(proof, '.')
	if first <= 0 || last == first || last == len(proof)-1 || strings.Count(proof, ".") != 2 {
		return "", nil, nil, "", ErrProofMalformed
	}
	if payload, err = decodeSegment(proof[first+1 : last]); err != nil {
		return "", nil, nil, "", ErrProofMalformed
	}
	if sig, err = decodeSegment(proof[last+1:]); err != nil {
		return "", nil, nil, "", ErrProofMalformed
	}
	return proof[:first], payload, sig, proof[:last], nil
}

// parseProofHead reads a proof's header: a dpop+jwt whose key is the jwk
// it carries, nothing pointing elsewhere, the key of alg's kind.
func parseProofHead(segment string) (*proofHead, error) {
	headerJSON, err := decodeSegment(segment)
	if err != nil {
		return nil, ErrProofMalformed
	}
	var h proofHeader
	if err := json.Unmarshal(headerJSON, &h); err != nil || !strings.EqualFold(h.Typ, ProofType) {
		return nil, ErrProofMalformed
	}
	// The key comes from the proof itself: nothing may point elsewhere.
	if h.Crit != nil || h.JKU != nil || h.X5U != nil || h.X5C != nil || h.Kid != nil {
		return nil, ErrProofMalformed
	}
	key, jkt, err := proofKey(h.Alg, h.JWK)
	if err != nil {
		return nil, err
	}
	method := jwt.GetSigningMethod(h.Alg)
	if h.Alg == "Ed25519" {
		method = jwt.SigningMethodEdDSA
	}
	if method == nil {
		return nil, ErrProofKey
	}
	return &proofHead{alg: h.Alg, method: method, key: key, jkt: jkt}, nil
}

// verifyProofSignature checks that the proof's key is the one the
// credential is bound to (want; "" for any), then its signature.
func verifyProofSignature(h *proofHead, want, signed string, sig []byte) error {
	// Before the signature, which costs: a proof by another key is refused
	// for the price of a comparison.
	if want != "" && subtle.ConstantTimeCompare([]byte(want), []byte(h.jkt)) != 1 {
		return ErrProofBinding
	}
	var ok bool
	switch k, _ := h.key.(*ecdsa.PublicKey); h.alg {
	case "ES256":
		ok = verifyES(k, crypto.SHA256, signed, sig)
	case "ES384":
		ok = verifyES(k, crypto.SHA384, signed, sig)
	default:
		ok = h.method.Verify(signed, sig, h.key) == nil
	}
	if !ok {
		return ErrProofSignature
	}
	return nil
}

// checkTarget: htm and htu name this request, by c.Target or by Method
// and URL compared after normalisation.
func (c *ProofCheck) checkTarget(htm, htu string) error {
	if c.Target == nil && htu == c.URL && !strings.ContainsAny(htu, "?#") {
		// What clients send: the very URI. Equal bytes normalise alike;
		// one normalisation says whether they name a valid URI at all.
		if _, err := NormalizeHTU(htu); err != nil || htm != c.Method {
			return ErrProofClaims
		}
		return nil
	}
	got, err := NormalizeHTU(htu)
	if err != nil || (c.Target == nil && strings.ContainsAny(c.URL, "?#")) {
		// The request's URI is the caller's to give without query or
		// fragment: one with them would compare as another URI.
		return ErrProofClaims
	}
	if c.Target != nil {
		if !c.Target(htm, got) {
			return ErrProofClaims
		}
	} else if want, err := NormalizeHTU(c.URL); err != nil || got != want || htm != c.Method {
		return ErrProofClaims
	}
	return nil
}

// checkATH: with an access token, ath is its hash.
func (c *ProofCheck) checkATH(ath *string) error {
	if c.AccessToken == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(c.AccessToken))
	var want [43]byte // the hash in unpadded base64url, on the stack
	base64.RawURLEncoding.Encode(want[:], sum[:])
	if ath == nil || subtle.ConstantTimeCompare([]byte(*ath), want[:]) != 1 {
		return ErrProofClaims
	}
	return nil
}

// checkIAT reads iat, a JSON number of seconds and nothing else, and
// checks it is within MaxAge before now and Leeway after.
func (c *ProofCheck) checkIAT(raw json.RawMessage) (time.Time, error) {
	var iat jwt.NumericDate
	if seconds, ok := wholeSeconds(raw); ok {
		iat.Time = time.Unix(seconds, 0) // what UnmarshalJSON makes of it, without its allocations
	} else if len(raw) == 0 || !(raw[0] >= '0' && raw[0] <= '9') || iat.UnmarshalJSON(raw) != nil {
		return time.Time{}, ErrProofClaims // a JSON number of seconds, nothing else
	}
	if iat.Before(c.Now.Add(-c.MaxAge)) || iat.After(c.Now.Add(c.Leeway)) {
		return time.Time{}, ErrProofTime
	}
	return iat.Time, nil
}

// wholeSeconds reads an iat of up to 15 digits, as clients send it: a
// float64 holds it exactly, so jwt.NumericDate would read the same.
func wholeSeconds(raw []byte) (int64, bool) {
	if len(raw) == 0 || len(raw) > 15 || (raw[0] == '0' && len(raw) > 1) {
		return 0, false
	}
	var n int64
	for _, d := range raw {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
}

// proofKey parses the embedded jwk: public, of the kind alg needs, strong
// enough. It returns the key and its thumbprint.
func proofKey(alg string, raw json.RawMessage) (crypto.PublicKey, string, error) {
	supported := false
	for _, a := range proofAlgorithms {
		supported = supported || a == alg
	}
	if !supported || len(raw) == 0 {
		return nil, "", ErrProofKey
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil || !jwk.Valid() || !jwk.IsPublic() {
		return nil, "", ErrProofKey
	}
	ok := false
	switch k := jwk.Key.(type) {
	case *ecdsa.PublicKey:
		ok = (alg == "ES256" && k.Curve == elliptic.P256()) || (alg == "ES384" && k.Curve == elliptic.P384())
	case ed25519.PublicKey:
		ok = alg == "EdDSA" || alg == "Ed25519"
	case *rsa.PublicKey:
		ok = (alg == "RS256" || alg == "PS256") && k.N.BitLen() >= minRSABits && k.N.BitLen() <= maxRSABits
	}
	if !ok {
		return nil, "", ErrProofKey
	}
	jkt, err := thumbprint(&jwk)
	if err != nil {
		return nil, "", ErrProofKey
	}
	return jwk.Key, jkt, nil
}

func thumbprint(jwk *jose.JSONWebKey) (string, error) {
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint of a public JWK (JSON), as
// a token's cnf.jkt carries it. A private key is refused: the client keeps
// it; only its public half is ever sent.
func Thumbprint(jwkJSON []byte) (string, error) {
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(jwkJSON); err != nil {
		return "", fmt.Errorf("not a JWK: %w", err)
	}
	if _, symmetric := jwk.Key.([]byte); symmetric {
		return "", errors.New("the JWK is a symmetric key: give the public key of an EC (P-256, P-384), OKP (Ed25519) or RSA key pair")
	}
	if !jwk.IsPublic() {
		return "", errors.New("the JWK holds a private key: send only its public part")
	}
	if !jwk.Valid() {
		return "", errors.New("the JWK is not a valid public key")
	}
	switch k := jwk.Key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return "", errors.New("EC keys must be on P-256 or P-384")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits || k.N.BitLen() > maxRSABits {
			return "", fmt.Errorf("RSA keys must have %d to %d bits", minRSABits, maxRSABits)
		}
	default:
		return "", errors.New("the JWK must be an EC (P-256, P-384), OKP (Ed25519) or RSA public key")
	}
	return thumbprint(&jwk)
}

// ValidJKT says whether s has the form of a SHA-256 JWK thumbprint:
// 43 characters of unpadded base64url.
func ValidJKT(s string) bool {
	if len(s) != 43 {
		return false
	}
	b, err := decodeSegment(s)
	return err == nil && len(b) == sha256.Size
}

// NormalizeHTU is a target URI as htu compares it (RFC 9449 §4.3, RFC 3986
// §6.2.2 and §6.2.3): an absolute http or https URI, scheme and host in
// lower case, the default port dropped, percent-encodings of unreserved
// characters decoded and the others in upper case; query and fragment
// dropped. An empty path is "/".
func NormalizeHTU(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	scheme := strings.ToLower(u.Scheme)
	if (scheme != "http" && scheme != "https") || u.Host == "" || u.User != nil || u.Opaque != "" {
		return "", errors.New("htu must be an absolute http or https URI")
	}
	host := strings.ToLower(u.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // an IPv6 literal keeps its brackets
	}
	if port := u.Port(); port != "" && !(scheme == "https" && port == "443") && !(scheme == "http" && port == "80") {
		host += ":" + port
	}
	path, err := normalizePercent(u.EscapedPath())
	if err != nil {
		return "", err
	}
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path, nil
}

// normalizePercent decodes percent-encoded unreserved characters and
// upper-cases the hex digits of the rest.
func normalizePercent(p string) (string, error) {
	if !strings.Contains(p, "%") {
		return p, nil
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			b.WriteByte(p[i])
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return "", errors.New("bad percent-encoding")
		}
		c := unhex(p[i+1])<<4 | unhex(p[i+2])
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			b.WriteString(strings.ToUpper(p[i : i+3]))
		}
		i += 2
	}
	return b.String(), nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}
