package jwtverify

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// DefaultMaxTokenSize caps a token before any decoding.
	DefaultMaxTokenSize = 8 << 10
	// MaxLeeway is the most clock skew any Config may allow. Revocations
	// are kept only this long past exp (contract.RevocationGrace): a
	// larger leeway would accept a revoked token again once they are gone.
	MaxLeeway = 60 * time.Second
	// TokenType is the typ header of keybroker access tokens (RFC 9068).
	TokenType = "at+jwt"
)

// Errors, by layer. Callers map them to reasons; none carries the token.
var (
	ErrTooLarge         = errors.New("token exceeds the size cap")
	ErrMalformed        = errors.New("token is not a compact JWS with strict base64url parts")
	ErrHeader           = errors.New("token header is invalid or names an untrusted key source")
	ErrUnknownKey       = errors.New("token kid matches no key")
	ErrAlgorithm        = errors.New("token alg does not match its key's algorithm")
	ErrSignature        = errors.New("token signature is invalid")
	ErrType             = errors.New("token typ is not at+jwt")
	ErrClaims           = errors.New("token claims are invalid")
	ErrExpired          = errors.New("token is expired")
	ErrNotYetValid      = errors.New("token is not valid yet")
	ErrIssuerOrAudience = errors.New("token iss or aud does not match")
	// ErrIssuer and ErrAudience say which of the two: both are also
	// ErrIssuerOrAudience (errors.Is), so a caller that tells them apart
	// can say what to fix and one that does not need not change.
	ErrIssuer   = fmt.Errorf("%w: iss is not the verifier's issuer", ErrIssuerOrAudience)
	ErrAudience = fmt.Errorf("%w: aud names none of the verifier's audiences", ErrIssuerOrAudience)
	ErrBound    = errors.New("token is bound to a key (cnf): its proof of possession must be checked")
)

// Header is the part of the JOSE header keybroker reads. The untrusted
// members are decoded only to reject tokens that carry them.
type Header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`

	Crit json.RawMessage `json:"crit"`
	JKU  json.RawMessage `json:"jku"`
	X5U  json.RawMessage `json:"x5u"`
	JWK  json.RawMessage `json:"jwk"`
	X5C  json.RawMessage `json:"x5c"`
}

// Budget says a credential is metered: verifiers account its spend through
// the plugin. Units is its own ceiling per period (0: only its tenant's
// ceiling applies), Period the period in seconds, MaxCost what one request
// may cost at most.
type Budget struct {
	Units   int64 `json:"units"`
	Period  int64 `json:"period"`
	MaxCost int64 `json:"max_cost"`
}

// RateLimit is a credential's request rate per verifier.
type RateLimit struct {
	PerSecond float64 `json:"per_second"`
	Burst     int     `json:"burst"`
}

// Claims are the claims of a keybroker access token.
type Claims struct {
	jwt.RegisteredClaims
	Scope  string     `json:"scope,omitempty"`
	Role   string     `json:"role,omitempty"`
	Tenant string     `json:"tenant,omitempty"`
	CIDR   []string   `json:"cidr,omitempty"`
	Budget *Budget    `json:"budget,omitempty"`
	Rate   *RateLimit `json:"rate_limit,omitempty"`
	// Cnf binds the token to a key (RFC 7800): a DPoP-bound token
	// (RFC 9449) is usable only with a proof signed by the key whose
	// thumbprint is Cnf.JKT.
	Cnf *Confirmation `json:"cnf,omitempty"`
	// ClientID and AuthTime are RFC 9068's: the Vault identity that asked
	// for the token, and when it authenticated to get it.
	ClientID string           `json:"client_id,omitempty"`
	AuthTime *jwt.NumericDate `json:"auth_time,omitempty"`
	// Act names who acts for the subject (RFC 8693 section 4.1): a token
	// from keybroker/token/exchange. The current actor is outermost, each
	// earlier one nested in its act.
	Act *Actor `json:"act,omitempty"`
}

// Actor is an act claim: one actor, and the chain before it.
type Actor struct {
	Subject string `json:"sub"`
	Act     *Actor `json:"act,omitempty"`
}

// MaxActors bounds a delegation chain: a token whose act claim nests
// deeper is refused (ErrClaims), so no verifier walks an unbounded chain.
const MaxActors = 8

// Actors lists the delegation chain, the current actor first; nil for a
// token nobody acts through.
func (c *Claims) Actors() []string {
	var out []string
	for a := c.Act; a != nil && len(out) <= MaxActors; a = a.Act {
		out = append(out, a.Subject)
	}
	return out
}

// validActors: every actor names a subject, and the chain is at most
// MaxActors long.
func (c *Claims) validActors() bool {
	n := 0
	for a := c.Act; a != nil; a = a.Act {
		if n++; n > MaxActors || a.Subject == "" {
			return false
		}
	}
	return true
}

// Confirmation is a token's cnf claim.
type Confirmation struct {
	JKT string `json:"jkt,omitempty"`
}

// BoundKey is the thumbprint the token is bound to; "" for a bearer token.
func (c *Claims) BoundKey() string {
	if c.Cnf == nil {
		return ""
	}
	return c.Cnf.JKT
}

// Scopes splits the space-separated scope claim.
func (c *Claims) Scopes() []string { return strings.Fields(c.Scope) }

// VerifySignature checks the JWS layer only: size, compact form, strict
// base64url, header, kid-bound algorithm and signature. It returns the header
// and the decoded payload.
func VerifySignature(token string, keys *KeySet, maxSize int) (Header, []byte, error) {
	var h Header
	if maxSize <= 0 {
		maxSize = DefaultMaxTokenSize
	}
	if len(token) > maxSize {
		return h, nil, ErrTooLarge
	}
	headerJSON, payload, sig, signed, err := splitCompact(token)
	if err != nil {
		return h, nil, err
	}
	if err := json.Unmarshal(headerJSON, &h); err != nil {
		return h, nil, ErrHeader
	}
	if h.Crit != nil || h.JKU != nil || h.X5U != nil || h.JWK != nil || h.X5C != nil {
		return h, nil, ErrHeader
	}
	key, ok := keys.Lookup(h.Kid)
	if !ok {
		return h, nil, ErrUnknownKey
	}
	if h.Alg != key.Alg {
		return h, nil, ErrAlgorithm
	}
	method := jwt.GetSigningMethod(key.Alg)
	if method == nil {
		return h, nil, ErrAlgorithm
	}
	if err := method.Verify(signed, sig, key.Public); err != nil {
		return h, nil, ErrSignature
	}
	return h, payload, nil
}

// splitCompact splits a compact JWS into its decoded header, payload and
// signature, and the signing input (header.payload): exactly three parts,
// a header and a signature that are not empty, each strict base64url.
func splitCompact(s string) (header, payload, sig []byte, signed string, err error) {
	first := strings.IndexByte(s, '.')
	last := strings.LastIndexByte(s, '.')
	if first <= 0 || last == first || last == len(s)-1 || strings.Count(s, ".") != 2 {
		return nil, nil, nil, "", ErrMalformed
	}
	if header, err = decodeSegment(s[:first]); err != nil {
		return nil, nil, nil, "", err
	}
	if payload, err = decodeSegment(s[first+1 : last]); err != nil {
		return nil, nil, nil, "", err
	}
	if sig, err = decodeSegment(s[last+1:]); err != nil {
		return nil, nil, nil, "", err
	}
	return header, payload, sig, s[:last], nil
}

// decodeSegment decodes unpadded base64url strictly: only the URL alphabet
// (Go's decoder would skip CR and LF), and canonical trailing bits. An empty
// segment is an empty payload, which JWS allows; the caller has already
// required a non-empty header and signature.
func decodeSegment(s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return nil, ErrMalformed
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, ErrMalformed
	}
	return b, nil
}

// Config says what a valid token must claim.
type Config struct {
	// Issuer is required; iss must equal it.
	Issuer string
	// Audiences: aud must contain one of them. Empty: aud must be present,
	// any value (the plugin's own verify path, which does not serve one).
	Audiences []string
	// Leeway is the clock skew allowed for exp, nbf and iat (capped at 60s).
	Leeway time.Duration
	// MaxTokenSize caps the token; 0 means DefaultMaxTokenSize.
	MaxTokenSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AcceptBound accepts tokens bound to a key (cnf.jkt, DPoP): the
	// caller then checks a proof by that key (VerifyProof against
	// Claims.BoundKey) on every request. Without it such tokens are
	// refused with ErrBound, so a verifier that checks no proof never
	// takes a bound token for a bearer one.
	AcceptBound bool
}

// Verifier checks access tokens against a key set and a Config.
type Verifier struct {
	cfg       Config
	validator *jwt.Validator
}

// NewVerifier checks cfg and builds a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("jwtverify: an issuer is required")
	}
	if cfg.Leeway < 0 || cfg.Leeway > MaxLeeway {
		return nil, fmt.Errorf("jwtverify: leeway must be between 0 and %s", MaxLeeway)
	}
	opts := []jwt.ParserOption{
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
	}
	if len(cfg.Audiences) > 0 {
		opts = append(opts, jwt.WithAudience(cfg.Audiences...))
	}
	if cfg.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.Now))
	}
	return &Verifier{cfg: cfg, validator: jwt.NewValidator(opts...)}, nil
}

// Verify checks the signature with keys, then typ and the claims.
func (v *Verifier) Verify(token string, keys *KeySet) (*Claims, error) {
	h, payload, err := VerifySignature(token, keys, v.cfg.MaxTokenSize)
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(h.Typ, TokenType) && !strings.EqualFold(h.Typ, "application/"+TokenType) {
		return nil, ErrType
	}
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, ErrClaims
	}
	if len(c.Audience) == 0 || c.ID == "" {
		return nil, ErrClaims
	}
	if err := v.validator.Validate(&c); err != nil {
		switch {
		case errors.Is(err, jwt.ErrTokenExpired):
			return nil, ErrExpired
		case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
			return nil, ErrNotYetValid
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			return nil, ErrIssuer
		case errors.Is(err, jwt.ErrTokenInvalidAudience):
			return nil, ErrAudience
		default:
			return nil, ErrClaims
		}
	}
	// After the other checks, so that an expired or foreign bound token
	// says so rather than "bound".
	switch {
	case !c.validActors():
		return nil, ErrClaims
	case c.Cnf != nil && c.Cnf.JKT == "":
		return nil, ErrClaims // a confirmation method no verifier here checks
	case c.Cnf != nil && !v.cfg.AcceptBound:
		return nil, ErrBound
	}
	return &c, nil
}
