package reqtarget

import (
	"strings"
	"unicode/utf8"
)

// Split splits a raw request-target (origin-form "/p?q" or
// absolute-form "http://host/p?q") into its raw path and raw query. ok is
// false for targets that name no path (asterisk-form, authority-form).
func Split(target string) (rawPath, rawQuery string, ok bool) {
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

// CanonicalPath decodes a raw path once and returns it, or ok=false when
// the path is ambiguous (see the package doc). A path without '%' is returned as is,
// without allocating.
func CanonicalPath(raw string) (string, bool) {
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
			if i+2 >= len(raw) || !IsHex(raw[i+1]) || !IsHex(raw[i+2]) {
				return "", false // a broken escape
			}
			c = Unhex(raw[i+1])<<4 | Unhex(raw[i+2])
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
		case c == '%' && i+2 < len(decoded) && IsHex(decoded[i+1]) && IsHex(decoded[i+2]):
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

// IsHex says whether c is a hexadecimal digit, as in a percent-escape.
func IsHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// Unhex is the value of the hexadecimal digit c (IsHex(c) must hold).
func Unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
