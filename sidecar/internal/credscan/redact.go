package credscan

import (
	"strings"

	"github.com/keybroker/keybroker/sidecar/internal/reqtarget"
)

// Redact replaces each segment of path that holds a credential with
// "[credential]", so that a path refused as credential_in_path (or refused
// before that check, or not canonical at all) is logged without it. A raw
// segment is looked at percent-decoded too (leniently: it may not decode).
// Each segment is scanned once (and once decoded, if it has a '%'); a path
// with none is returned as is, without allocating.
func Redact(path string) string {
	var b strings.Builder
	var cs scan
	copied := 0 // path[:copied] is in b (or needs no redaction)
	for start := 0; start <= len(path); {
		end := strings.IndexByte(path[start:], '/')
		if end < 0 {
			end = len(path)
		} else {
			end += start
		}
		seg := path[start:end]
		if cs.found(seg) || strings.IndexByte(seg, '%') >= 0 && cs.found(lenientUnescape(seg)) {
			b.Grow(len(path))
			b.WriteString(path[copied:start])
			b.WriteString("[credential]")
			copied = end
		}
		start = end + 1
	}
	if copied == 0 {
		return path
	}
	b.WriteString(path[copied:])
	return b.String()
}

// lenientUnescape decodes every well-formed %XX of s, once, and leaves the
// rest; s itself when it has no '%'.
func lenientUnescape(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && reqtarget.IsHex(s[i+1]) && reqtarget.IsHex(s[i+2]) {
			b.WriteByte(reqtarget.Unhex(s[i+1])<<4 | reqtarget.Unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
