package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"
)

const (
	// IDLength is the length of the key_id part.
	IDLength = 12
	// SecretLength is the length of the secret part: 43 base62 characters
	// carry log2(62)*43 = 256.03 bits.
	SecretLength = 43
	// ChecksumLength is the length of the checksum part: 62^6 > 2^32.
	ChecksumLength = 6
	// StampLength is the length of the mint-time stamp that starts a key_id.
	StampLength = 5

	// DefaultPrefix is the prefix used when a role names none.
	DefaultPrefix = "kb"
	// MinPrefixLength and MaxPrefixLength bound the prefix.
	MinPrefixLength = 2
	MaxPrefixLength = 16

	// MaxLength is the longest well-formed key; longer input is rejected
	// before any other work.
	MaxLength = MaxPrefixLength + 1 + IDLength + 1 + SecretLength + ChecksumLength
)

// Regexp matches keybroker keys with any prefix; it is published for secret
// scanners. The README shows it too.
const Regexp = `\b[a-z][a-z0-9]{1,15}_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}\b`

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// ErrMalformed is returned by Parse for anything that is not a well-formed key
// with a correct checksum. Callers must not echo the input: it may be a secret.
var ErrMalformed = errors.New("malformed API key")

// Key is a parsed API key. Its fields are substrings of the input.
type Key struct {
	Prefix string
	ID     string
}

// stampCycle is the number of distinct stamps: 62^StampLength seconds.
const stampCycle = 62 * 62 * 62 * 62 * 62

// Generate mints a new key with the given prefix, reading randomness from r
// (crypto/rand.Reader when nil). It returns the full key and its key_id,
// stamped with the current time.
func Generate(r io.Reader, prefix string) (key, id string, err error) {
	return GenerateAt(r, prefix, time.Now())
}

// GenerateAt is Generate with the key_id stamped with now.
func GenerateAt(r io.Reader, prefix string, now time.Time) (key, id string, err error) {
	if err := ValidatePrefix(prefix); err != nil {
		return "", "", err
	}
	if r == nil {
		r = rand.Reader
	}
	buf := make([]byte, 0, len(prefix)+1+IDLength+1+SecretLength+ChecksumLength)
	buf = append(buf, prefix...)
	buf = append(buf, '_')
	buf = appendBase62(buf, stamp(now), StampLength)
	if buf, err = appendRandom(buf, r, IDLength-StampLength); err != nil {
		return "", "", err
	}
	buf = append(buf, '_')
	if buf, err = appendRandom(buf, r, SecretLength); err != nil {
		return "", "", err
	}
	buf = appendChecksum(buf, crc32.ChecksumIEEE(buf))
	key = string(buf)
	start := len(prefix) + 1
	return key, key[start : start+IDLength], nil
}

// Parse checks the shape and checksum of s without any lookup.
func Parse(s string) (Key, error) {
	if len(s) > MaxLength {
		return Key{}, ErrMalformed
	}
	p := -1
	for i := 0; i < len(s) && i <= MaxPrefixLength; i++ {
		if s[i] == '_' {
			p = i
			break
		}
	}
	if p < 0 || !validPrefix(s[:p]) {
		return Key{}, ErrMalformed
	}
	rest := s[p+1:]
	if len(rest) != IDLength+1+SecretLength+ChecksumLength || rest[IDLength] != '_' {
		return Key{}, ErrMalformed
	}
	if !isBase62(rest[:IDLength]) || !isBase62(rest[IDLength+1:]) {
		return Key{}, ErrMalformed
	}
	body := s[:len(s)-ChecksumLength]
	var want [ChecksumLength]byte
	appendChecksum(want[:0], crc32String(body))
	if string(want[:]) != s[len(body):] {
		return Key{}, ErrMalformed
	}
	return Key{Prefix: s[:p], ID: rest[:IDLength]}, nil
}

// Hash is what storage keeps in place of a key: SHA-256 of the whole key.
// The secret part holds 256 bits from crypto/rand, so an unsalted hash cannot
// be reversed by search or precomputation; compare with crypto/subtle.
func Hash(key string) [sha256.Size]byte {
	return sha256.Sum256([]byte(key))
}

// ValidatePrefix reports whether p can be a key prefix.
func ValidatePrefix(p string) error {
	switch {
	case len(p) < MinPrefixLength || len(p) > MaxPrefixLength:
		return fmt.Errorf("key prefix must be %d to %d characters, got %d", MinPrefixLength, MaxPrefixLength, len(p))
	case !validPrefix(p):
		return fmt.Errorf("key prefix %q must be lowercase letters and digits, starting with a letter", p)
	}
	return nil
}

// validPrefix is ValidatePrefix without the message: Parse fails on
// anything, on every request, and must not allocate one.
func validPrefix(p string) bool {
	if len(p) < MinPrefixLength || len(p) > MaxPrefixLength {
		return false
	}
	for i := 0; i < len(p); i++ {
		if !prefixChar(p[i], i == 0) {
			return false
		}
	}
	return true
}

// prefixChar: a prefix is lowercase letters and digits, a letter first.
func prefixChar(c byte, first bool) bool {
	return c >= 'a' && c <= 'z' || !first && c >= '0' && c <= '9'
}

// MintedNear reports whether key_id id carries a stamp within window of now,
// on either side (clocks differ), modulo the stamp's 29-year cycle. Keys
// minted before ids were stamped carry random stamps: a verifier holding
// every key's record finds those keys anyway, and an id that is neither held
// nor near now belongs to no key. An attacker can stamp a forged id with the
// current time, so "near" must only ever lead to a bounded fallback, never
// to acceptance. id must be a valid key_id.
func MintedNear(id string, now time.Time, window time.Duration) bool {
	if len(id) < StampLength {
		return false
	}
	var v uint64
	for i := 0; i < StampLength; i++ {
		v = v*62 + uint64(base62Value(id[i]))
	}
	d := (stamp(now) + stampCycle - v) % stampCycle // seconds since the stamp
	w := uint64(window / time.Second)
	return d <= w || stampCycle-d <= w
}

func stamp(t time.Time) uint64 {
	return uint64(t.Unix()) % stampCycle
}

// ValidateID reports whether id has the shape of a key_id; storage paths are
// built from it, so anything else is refused before a lookup.
func ValidateID(id string) bool {
	return len(id) == IDLength && isBase62(id)
}

// appendRandom appends n uniformly distributed base62 characters, rejecting
// bytes >= 248 (4*62) so that no character is more likely than another.
func appendRandom(buf []byte, r io.Reader, n int) ([]byte, error) {
	var b [64]byte
	for n > 0 {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, fmt.Errorf("reading randomness: %w", err)
		}
		for _, c := range b {
			if c >= 248 {
				continue
			}
			buf = append(buf, base62[c%62])
			n--
			if n == 0 {
				break
			}
		}
	}
	return buf, nil
}

// appendChecksum appends v as exactly ChecksumLength base62 digits.
func appendChecksum(buf []byte, v uint32) []byte {
	return appendBase62(buf, uint64(v), ChecksumLength)
}

// appendBase62 appends v as exactly n base62 digits, most significant first.
func appendBase62(buf []byte, v uint64, n int) []byte {
	var d [16]byte
	for i := n - 1; i >= 0; i-- {
		d[i] = base62[v%62]
		v /= 62
	}
	return append(buf, d[:n]...)
}

// base62Value is the digit value of a base62 character (0 for others).
func base62Value(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'Z':
		return int(c-'A') + 10
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 36
	}
	return 0
}

// crc32String is crc32.ChecksumIEEE over a string without copying it to a
// []byte, which would allocate on every Parse.
func crc32String(s string) uint32 {
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc = crc32.IEEETable[byte(crc)^s[i]] ^ (crc >> 8)
	}
	return ^crc
}

func isBase62(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}
