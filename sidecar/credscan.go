package sidecar

import (
	"net/url"
	"strings"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// Credentials where none belongs: the sidecar refuses a request whose path
// or query carries one (credential_in_path, credential_in_query), and the
// decision log writes such a path segment as "[credential]". A credential
// is found wherever it sits among other characters (/files/kb_....json,
// /t/token=eyJ..., ?q=Bearer+eyJ..., a callback URL in a value):
//
//   - an API key or kbrt_ refresh token: base62 words joined by '_' in a
//     key's shape (a prefix, a 12-character key_id, 49 characters of
//     secret and checksum) whose checksum holds, for some prefix length;
//   - a compact JWS: a base64url word that starts with "eyJ" where a word
//     starts (after anything that is not base64url, or after the word's
//     first '-' or '_' followed by "eyJ"), is 16 characters or more,
//     decodes to a JSON object with "alg", and is followed by '.', a
//     payload of two or more characters and another '.'.
//
// Ordinary paths hold neither: camelCase words with "eyJ" inside
// (surveyJSLibrary) start no word with it, and a word that does (eyJohn)
// decodes to no header; underscores and long slugs have no checksum. The
// scan reads its input once (a word at most twice), runs a checksum only
// where a key's shape is complete (at most once per 63 bytes) and decodes
// at most two headers per word, so its cost is linear in the input, and it
// allocates nothing: it runs on every request, before the credential check.

// credentialScan counts the work a scan did, for tests; a zero value is
// ready to use.
type credentialScan struct {
	checksums   int // key-shaped candidates whose checksum was run
	headerBytes int // characters decoded as JWS headers
}

// credentialInPath reports whether a path (or any text) holds a credential.
func credentialInPath(path string) bool {
	var cs credentialScan
	return cs.found(path)
}

func (cs *credentialScan) found(s string) bool {
	return cs.jws(s) || cs.key(s)
}

// key looks for an API key: word '_' key_id '_' secret-and-checksum, the
// key's prefix being the end of the first word.
func (cs *credentialScan) key(s string) bool {
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
func (cs *credentialScan) jws(s string) bool {
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
func (cs *credentialScan) header(h string) bool {
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

// queryCredentialParams are query parameters a credential might be sent in,
// compared without regard to case.
var queryCredentialParams = []string{"access_token", "api_key", "apikey", "key", "token"}

// queryDenial is the reason to refuse a raw query, or "": a parameter
// named like a credential, a credential in any name or value (decoded, as
// the upstream reads it), a method override (_method), or a broken escape,
// which is refused rather than guessed at (credential_in_query: it may
// hide any of these). Both '&' and ';' separate parameters (servers
// differ).
func queryDenial(rawQuery string) string {
	var cs credentialScan
	for rawQuery != "" {
		var pair string
		if i := strings.IndexAny(rawQuery, "&;"); i >= 0 {
			pair, rawQuery = rawQuery[:i], rawQuery[i+1:]
		} else {
			pair, rawQuery = rawQuery, ""
		}
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		k, err := url.QueryUnescape(k)
		if err != nil {
			return contract.ReasonCredentialInQuery
		}
		if v, err = url.QueryUnescape(v); err != nil {
			return contract.ReasonCredentialInQuery
		}
		for _, p := range queryCredentialParams {
			if strings.EqualFold(k, p) {
				return contract.ReasonCredentialInQuery
			}
		}
		if cs.found(k) || cs.found(v) {
			return contract.ReasonCredentialInQuery
		}
		if methodOverrideParam(k) {
			return contract.ReasonMethodOverride
		}
	}
	return ""
}

// methodOverrideParam: a query parameter that Laravel, Symfony, Spring's
// HiddenHttpMethodFilter or Express's method-override would take for the
// request's method, in any case, and in the names PHP turns into _method
// (it drops leading spaces and reads ' ', '.' and '[' as '_'), with or
// without brackets after it (_method[], an array to qs and PHP).
func methodOverrideParam(name string) bool {
	name = strings.TrimLeft(name, " ")
	const m = "method"
	if len(name) < 1+len(m) || !strings.ContainsRune("_. [", rune(name[0])) || !strings.EqualFold(name[1:1+len(m)], m) {
		return false
	}
	return len(name) == 1+len(m) || name[1+len(m)] == '['
}
