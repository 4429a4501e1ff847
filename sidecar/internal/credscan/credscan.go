package credscan

import (
	"strings"

	"github.com/keybroker/keybroker/apikey"
)

// scan counts the work a scan did, for tests; a zero value is
// ready to use.
type scan struct {
	checksums   int // key-shaped candidates whose checksum was run
	headerBytes int // characters decoded as JWS headers
}

// InPath reports whether a path (or any text) holds a credential.
func InPath(path string) bool {
	var cs scan
	return cs.found(path)
}

func (cs *scan) found(s string) bool {
	return cs.jws(s) || cs.key(s)
}

// key looks for an API key: word '_' key_id '_' secret-and-checksum, the
// key's prefix being the end of the first word.
func (cs *scan) key(s string) bool {
	const (
		rest   = apikey.SecretLength + apikey.ChecksumLength
		before = apikey.MinPrefixLength + 1 + apikey.IDLength + 1 // prefix_key_id_
	)
	prevStart, prevEnd := -1, -1 // the word before
	for i := 0; i < len(s); {
		if !base62Char(s[i]) {
			i++
			continue
		}
		start := i
		for i < len(s) && base62Char(s[i]) {
			i++
		}
		if i-start >= rest && start >= before && s[start-1] == '_' && prevEnd == start-1 &&
			prevEnd-prevStart == apikey.IDLength && s[prevStart-1] == '_' {
			cs.checksums++
			lo := max(0, prevStart-1-apikey.MaxPrefixLength)
			if _, ok := apikey.ParseSuffix(s[lo : start+rest]); ok {
				return true
			}
		}
		prevStart, prevEnd = start, i
	}
	return false
}

// jws looks for a compact JWS that starts where a base64url word does, or
// after the word's first '-' or '_' followed by "eyJ" (x-eyJ...,
// token_eyJ...): at most two headers decoded per word.
func (cs *scan) jws(s string) bool {
	for i := 0; i < len(s); {
		if !base64URLChar(s[i]) {
			i++
			continue
		}
		start := i
		for i < len(s) && base64URLChar(s[i]) {
			i++
		}
		if i-start < minJWSHeader || i == len(s) || s[i] != '.' {
			continue
		}
		j := i + 1
		for j < len(s) && base64URLChar(s[j]) {
			j++
		}
		if j-i-1 < 2 || j == len(s) || s[j] != '.' {
			continue
		}
		if cs.header(s[start:i]) {
			return true
		}
		for k := start; k < i-minJWSHeader; k++ {
			if s[k] == '-' || s[k] == '_' {
				if strings.HasPrefix(s[k+1:i], "eyJ") {
					if cs.header(s[k+1 : i]) {
						return true
					}
					break
				}
			}
		}
	}
	return false
}

// header: whether h, a base64url word, is a JWS header.
func (cs *scan) header(h string) bool {
	if len(h) < minJWSHeader || !strings.HasPrefix(h, "eyJ") {
		return false
	}
	cs.headerBytes += len(h)
	return jwsHeader(h)
}

// minJWSHeader: the shortest header with "alg", {"alg":"none"}, is 19
// characters; shorter words are not decoded.
const minJWSHeader = 16

// jwsHeader reports whether h, base64url without padding, decodes to a
// JSON object with an "alg" member: its first byte '{', its last '}' (but
// for whitespace), and "alg" then ':' somewhere. It decodes as it reads,
// into nothing.
func jwsHeader(h string) bool {
	if len(h)%4 == 1 {
		return false
	}
	var (
		bits, n uint32 // pending bits, and how many
		first   = true
		last    byte
		window  uint64 // the last five bytes
		alg     bool   // "alg" seen, then whitespace only
		found   bool
	)
	for i := 0; i < len(h); i++ {
		bits = bits<<6 | uint32(base64URLValue(h[i]))
		if n += 6; n < 8 {
			continue
		}
		n -= 8
		b := byte(bits >> n)
		bits &= 1<<n - 1
		if first && b != '{' {
			return false
		}
		first = false
		window = (window<<8 | uint64(b)) & (1<<40 - 1)
		switch {
		case window == 0x22616c6722: // "alg"
			alg = true
		case alg && b == ':':
			found = true
			alg = false
		case alg && !jsonSpace(b):
			alg = false
		}
		if !jsonSpace(b) {
			last = b
		}
	}
	return found && last == '}'
}

func jsonSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

func base62Char(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func base64URLChar(c byte) bool { return base62Char(c) || c == '-' || c == '_' }

// base64URLValue is the 6-bit value of a base64url character.
func base64URLValue(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c - 'A'
	case 'a' <= c && c <= 'z':
		return c - 'a' + 26
	case '0' <= c && c <= '9':
		return c - '0' + 52
	case c == '-':
		return 62
	}
	return 63 // '_'
}
