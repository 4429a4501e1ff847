package jwtverify

import (
	"encoding/json"
)

type proofClaims struct {
	JTI string          `json:"jti"`
	HTM string          `json:"htm"`
	HTU string          `json:"htu"`
	IAT json.RawMessage `json:"iat"`
	ATH *string         `json:"ath"`
}

// parseProofClaims reads the signed claims; a proof needs a jti (the
// caller refuses its replay), of bounded length.
func parseProofClaims(payload []byte) (proofClaims, error) {
	cl, ok := scanProofClaims(payload)
	if !ok {
		cl = proofClaims{}
		if err := json.Unmarshal(payload, &cl); err != nil {
			return cl, ErrProofClaims
		}
	}
	if cl.JTI == "" || len(cl.JTI) > MaxJTILength {
		return cl, ErrProofClaims
	}
	return cl, nil
}

// scanProofClaims reads the claims every client sends, in the shape they
// send them, without encoding/json's reflection: one object of lower-case
// ASCII names, the claims read each once, whose values are strings of printable ASCII
// without escapes or JSON numbers. Anything else (an escape, a null, a
// nested value, a name in another case, a name twice, bytes after the
// object) is not that shape: ok is false and encoding/json decides, so
// that what this accepts it reads exactly as encoding/json would (a
// differential fuzz test holds it to that).
func scanProofClaims(p []byte) (cl proofClaims, ok bool) {
	// One string of the whole payload, which every claim is a part of: one
	// allocation instead of one per claim.
	s := claimScanner{p: p, text: string(p)}
	if !s.byte('{') {
		return cl, false
	}
	var seen [5]bool // jti, htm, htu, iat, ath
	for first := true; ; first = false {
		if first && s.byte('}') {
			break
		}
		name, okName := s.name()
		if !okName || !s.byte(':') {
			return cl, false
		}
		start, end, str, okValue := s.value()
		if !okValue || !cl.set(name, s.text[start:end], p[start:end], str, &seen) {
			return cl, false
		}
		if s.byte('}') {
			break
		}
		if !s.byte(',') {
			return cl, false
		}
	}
	s.space()
	return cl, s.i == len(p)
}

// set records one member, text and raw its value; false for a known name
// seen before or with a value of another kind than its field's.
func (cl *proofClaims) set(name, text string, raw []byte, str bool, seen *[5]bool) bool {
	field := -1
	switch name {
	case "jti":
		field = 0
	case "htm":
		field = 1
	case "htu":
		field = 2
	case "iat":
		field = 3
	case "ath":
		field = 4
	default:
		return true // another claim: encoding/json ignores it too
	}
	if seen[field] || str != (field != 3) {
		return false
	}
	seen[field] = true
	switch field {
	case 0:
		cl.JTI = text
	case 1:
		cl.HTM = text
	case 2:
		cl.HTU = text
	case 3:
		cl.IAT = raw
	case 4:
		ath := text // only this copy escapes, not text in every call
		cl.ATH = &ath
	}
	return true
}

type claimScanner struct {
	p    []byte
	text string // p as a string
	i    int
}

func (s *claimScanner) space() {
	for s.i < len(s.p) && (s.p[s.i] == ' ' || s.p[s.i] == '\t' || s.p[s.i] == '\n' || s.p[s.i] == '\r') {
		s.i++
	}
}

// byte skips white space and c, if c is next.
func (s *claimScanner) byte(c byte) bool {
	s.space()
	if s.i < len(s.p) && s.p[s.i] == c {
		s.i++
		return true
	}
	return false
}

// name reads a member name of lower-case ASCII letters, digits and _:
// none can match a field but by being its name exactly (encoding/json
// matches names regardless of case).
func (s *claimScanner) name() (string, bool) {
	if !s.byte('"') {
		return "", false
	}
	start := s.i
	for s.i < len(s.p) && (s.p[s.i] >= 'a' && s.p[s.i] <= 'z' || s.p[s.i] >= '0' && s.p[s.i] <= '9' || s.p[s.i] == '_') {
		s.i++
	}
	if s.i == start || s.i == len(s.p) || s.p[s.i] != '"' {
		return "", false
	}
	s.i++
	return s.text[start : s.i-1], true
}

// value reads a string of printable ASCII without escapes (str; start
// and end bound its contents) or a JSON number (its text).
func (s *claimScanner) value() (start, end int, str, ok bool) {
	s.space()
	if s.i == len(s.p) {
		return 0, 0, false, false
	}
	if s.p[s.i] == '"' {
		s.i++
		start := s.i
		for s.i < len(s.p) && s.p[s.i] >= 0x20 && s.p[s.i] < 0x7f && s.p[s.i] != '"' && s.p[s.i] != '\\' {
			s.i++
		}
		if s.i == len(s.p) || s.p[s.i] != '"' {
			return 0, 0, false, false
		}
		s.i++
		return start, s.i - 1, true, true
	}
	start = s.i
	if !s.number() {
		return 0, 0, false, false
	}
	return start, s.i, false, true
}

// number reads -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *claimScanner) number() bool {
	if s.at('-') {
		s.i++
	}
	switch {
	case s.at('0'):
		s.i++
	case s.i < len(s.p) && s.p[s.i] >= '1' && s.p[s.i] <= '9':
		s.digits()
	default:
		return false
	}
	if s.at('.') {
		s.i++
		if !s.digits() {
			return false
		}
	}
	if s.at('e') || s.at('E') {
		s.i++
		if s.at('+') || s.at('-') {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

func (s *claimScanner) at(c byte) bool { return s.i < len(s.p) && s.p[s.i] == c }

// digits reads one or more decimal digits.
func (s *claimScanner) digits() bool {
	start := s.i
	for s.i < len(s.p) && s.p[s.i] >= '0' && s.p[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}
