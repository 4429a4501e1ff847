package sidecar

import (
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/keybroker/keybroker/apikey"
)

// The request target: the sidecar decides on exactly the path the upstream
// serves. A path is percent-decoded once, as nginx, Caddy, Go and servlet
// containers do before routing, and refused when servers disagree on what it
// names: dot segments (some resolve them, some do not), empty segments (some
// merge slashes), encoded '/', '\', '.' or NUL (some decode them before
// splitting segments), ';' (servlet path parameters), control characters,
// invalid UTF-8 (overlong encodings of '.' and '/'), and anything still
// percent-encoded after one decoding (servers that decode twice). What is left
// has one meaning everywhere, and in proxy mode it is what goes upstream,
// re-encoded minimally.

// splitTarget splits a raw request-target (origin-form "/p?q" or
// absolute-form "http://host/p?q") into its raw path and raw query. ok is
// false for targets that name no path (asterisk-form, authority-form).
func splitTarget(target string) (rawPath, rawQuery string, ok bool) {
	if !strings.HasPrefix(target, "/") {
		// absolute-form: drop scheme://authority.
		i := strings.Index(target, "://")
		if i <= 0 {
			return "", "", false
		}
		rest := target[i+3:]
		j := strings.IndexAny(rest, "/?")
		if j < 0 {
			return "/", "", true
		}
		target = rest[j:]
		if target[0] == '?' {
			target = "/" + target
		}
	}
	rawPath, rawQuery, _ = strings.Cut(target, "?")
	return rawPath, rawQuery, true
}

// canonicalPath decodes a raw path once and returns it, or ok=false when the
// path is ambiguous (see above). A path without '%' is returned as is,
// without allocating.
func canonicalPath(raw string) (string, bool) {
	if raw == "" || raw[0] != '/' || strings.IndexByte(raw, '#') >= 0 {
		// A raw '#' is no part of a request-target: one parser would end
		// the path there (a DPoP htu, a URL library), another not.
		return "", false
	}
	decoded := raw
	if strings.IndexByte(raw, '%') >= 0 {
		var b strings.Builder
		b.Grow(len(raw))
		for i := 0; i < len(raw); i++ {
			c := raw[i]
			if c != '%' {
				b.WriteByte(c)
				continue
			}
			if i+2 >= len(raw) || !ishex(raw[i+1]) || !ishex(raw[i+2]) {
				return "", false // a broken escape
			}
			c = unhex(raw[i+1])<<4 | unhex(raw[i+2])
			switch c {
			case '/', '\\', '.', 0:
				return "", false // encoded separators and dots
			}
			b.WriteByte(c)
			i += 2
		}
		decoded = b.String()
	}
	if !utf8.ValidString(decoded) {
		return "", false
	}
	for i := 0; i < len(decoded); i++ {
		switch c := decoded[i]; {
		case c < 0x20 || c == 0x7f, c == '\\', c == ';':
			return "", false
		case c == '%' && i+2 < len(decoded) && ishex(decoded[i+1]) && ishex(decoded[i+2]):
			return "", false // still encoded: a second decoding would change it
		}
	}
	// Segments: no empty ones (except a trailing slash), no dot segments.
	for rest := decoded[1:]; ; {
		seg, tail, more := strings.Cut(rest, "/")
		if seg == "." || seg == ".." || (seg == "" && more) {
			return "", false
		}
		if !more {
			break
		}
		rest = tail
	}
	return decoded, true
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// queryCredentialParams are query parameters a credential might be sent in,
// compared without regard to case.
var queryCredentialParams = []string{"access_token", "api_key", "apikey", "key", "token"}

// credentialInQuery reports whether a raw query carries a credential: a
// parameter named like one, or any value that parses as an API key or looks
// like a JWT. Both '&' and ';' separate parameters (servers differ). ok is
// false for a query with a broken escape, which the caller refuses rather
// than guess how the upstream would read it.
func credentialInQuery(rawQuery string) (found, ok bool) {
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
			return false, false
		}
		if v, err = url.QueryUnescape(v); err != nil {
			return false, false
		}
		for _, p := range queryCredentialParams {
			if strings.EqualFold(k, p) {
				return true, true
			}
		}
		for _, s := range [2]string{k, v} {
			if looksLikeCredential(s) {
				return true, true
			}
		}
	}
	return false, true
}

// looksLikeCredential: an API key with a valid checksum, or a compact JWS
// whose header is a JSON object.
func looksLikeCredential(s string) bool {
	if strings.HasPrefix(s, "eyJ") && strings.Count(s, ".") == 2 {
		return true
	}
	_, err := apikey.Parse(s)
	return err == nil
}

// credentialInPath reports whether a canonical path carries a credential
// anywhere: a segment that is one (the query's recogniser), or one held
// within a segment (/v1/kb_....json, /t/token=eyJ...): an API key or
// refresh token with a valid checksum, or a JWS, in any run of the
// characters they are made of. An ordinary path has none: a key needs its
// checksum, a JWS its "eyJ" header of 16 characters or more and two dots.
// Nothing is allocated.
func credentialInPath(path string) bool {
	for rest := path; rest != ""; {
		var seg string
		seg, rest, _ = strings.Cut(rest, "/")
		if len(seg) >= minCredentialRun && (looksLikeCredential(seg) || credentialWithin(seg)) {
			return true
		}
	}
	return false
}

// minCredentialRun: nothing shorter holds an API key (65 characters and
// more) or a JWS (a 16-character header, two dots and a payload).
const minCredentialRun = 20

// credentialWithin looks at each run of credential characters in s.
func credentialWithin(s string) bool {
	for s != "" {
		i := 0
		for i < len(s) && !credentialChar(s[i]) {
			i++
		}
		s = s[i:]
		j := 0
		for j < len(s) && credentialChar(s[j]) {
			j++
		}
		run := s[:j]
		s = s[j:]
		if len(run) < minCredentialRun {
			continue
		}
		if jwsWithin(run) || keyWithin(run) {
			return true
		}
	}
	return false
}

// keyTail is what follows an API key's prefix: _, key_id, _, secret and
// checksum.
const keyTail = 1 + apikey.IDLength + 1 + apikey.SecretLength + apikey.ChecksumLength

// keyWithin: an API key (or a kbrt_ refresh token, of the same format)
// anywhere in run, with whatever before or after it (token-kb_..._backup):
// each '_' with a key's shape after it, under each prefix length before it.
func keyWithin(run string) bool {
	for p := apikey.MinPrefixLength; p+keyTail <= len(run); p++ {
		if run[p] != '_' || run[p+1+apikey.IDLength] != '_' {
			continue
		}
		for start := p - apikey.MinPrefixLength; start >= 0 && p-start <= apikey.MaxPrefixLength; start-- {
			if _, err := apikey.Parse(run[start : p+keyTail]); err == nil {
				return true
			}
		}
	}
	return false
}

// jwsWithin: a compact JWS starts somewhere in run: "eyJ" (a JSON
// object's first bytes, base64url), a header of 16 characters or more, a
// dot, a payload of 2 or more, a dot.
func jwsWithin(run string) bool {
	for off := 0; ; {
		i := strings.Index(run[off:], "eyJ")
		if i < 0 {
			return false
		}
		cand := run[off+i:]
		off += i + 1
		head, rest, ok := strings.Cut(cand, ".")
		if !ok || len(head) < 16 {
			continue
		}
		if payload, _, ok := strings.Cut(rest, "."); ok && len(payload) >= 2 {
			return true
		}
	}
}

// credentialChar: what API keys (base62 and '_') and JWSs (base64url and
// '.') are made of.
func credentialChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.'
}
