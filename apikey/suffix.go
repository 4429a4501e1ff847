package apikey

import "hash/crc32"

// Keys inside other text: a verifier refuses a key where it must not be
// (in a URL path, a query value) wherever it sits in a longer string
// (/files/backup-kb_..._y.json). Trying Parse at each position and each
// prefix length costs up to 15 checksums per '_'; ParseSuffix settles every
// prefix length with one checksum, run backwards.

// tailLength is what follows a key's prefix: _, key_id, _, secret and
// checksum.
const tailLength = 1 + IDLength + 1 + SecretLength + ChecksumLength

// ParseSuffix returns the key s ends with, whatever precedes it (any
// prefix length the characters before the key's first '_' allow), and
// whether there is one. Its cost is linear in at most the last MaxLength
// bytes of s, and it allocates nothing.
func ParseSuffix(s string) (Key, bool) {
	if len(s) < MinPrefixLength+tailLength {
		return Key{}, false
	}
	tail := s[len(s)-tailLength:]
	if tail[0] != '_' || tail[1+IDLength] != '_' || !isBase62(tail[1:1+IDLength]) || !isBase62(tail[2+IDLength:]) {
		return Key{}, false
	}
	var sum uint64
	for i := len(tail) - ChecksumLength; i < len(tail); i++ {
		sum = sum*62 + uint64(base62Value(tail[i]))
	}
	if sum > 1<<32-1 {
		return Key{}, false
	}
	// The CRC register after the whole body, run back over the body's
	// bytes: where it reaches the register's initial value, the body
	// started there. Each prefix length is one more byte run back.
	crc := ^uint32(sum)
	body := s[:len(s)-ChecksumLength]
	for i := len(body) - 1; i >= len(s)-tailLength; i-- {
		crc = crcUnstep(crc, body[i])
	}
	end := len(s) - tailLength // of the prefix
	for i := end - 1; i >= 0 && end-i <= MaxPrefixLength; i-- {
		c := s[i]
		if !prefixChar(c, false) {
			break
		}
		crc = crcUnstep(crc, c)
		if end-i >= MinPrefixLength && prefixChar(c, true) && crc == ^uint32(0) {
			// Parse is the definition; this only found where to ask.
			if k, err := Parse(s[i:]); err == nil {
				return k, true
			}
		}
	}
	return Key{}, false
}

// crcTop maps the top byte of an IEEE table entry to its index: for a
// reflected CRC the top bytes of the 256 entries are all different, which
// is what lets a register be run back one byte.
var crcTop = func() (t [256]byte) {
	for i, v := range crc32.IEEETable {
		t[v>>24] = byte(i)
	}
	return t
}()

// crcUnstep undoes one step of crc32String: the register before byte c,
// given the register after it.
func crcUnstep(after uint32, c byte) uint32 {
	i := crcTop[after>>24]
	return (after^crc32.IEEETable[i])<<8 | uint32(i^c)
}
