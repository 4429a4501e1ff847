package apikey

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// bruteSuffix is ParseSuffix by definition: Parse at every start.
func bruteSuffix(s string) bool {
	for i := range len(s) {
		if _, err := Parse(s[i:]); err == nil {
			return true
		}
	}
	return false
}

// ParseSuffix agrees with Parse tried at every start: keys of every prefix
// length behind every kind of text, and each with one character changed.
func TestParseSuffix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "abcz09AZ_-.x"
	var cases []string
	for _, prefix := range []string{"kb", "kbrt", "acme2", "a0", strings.Repeat("q", MaxPrefixLength)} {
		key, _, err := Generate(nil, prefix)
		if err != nil {
			t.Fatal(err)
		}
		for _, before := range []string{"", "x", "X", "9", "_", "-", "abc", "ABCkb", strings.Repeat("z", 20), "k.", "token="} {
			cases = append(cases, before+key)
			for range 3 {
				b := []byte(before + key)
				b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
				cases = append(cases, string(b))
			}
		}
		cases = append(cases, key[:len(key)-1], key+"x", strings.ToUpper(key))
	}
	for _, s := range cases {
		_, got := ParseSuffix(s)
		if want := bruteSuffix(s); got != want {
			t.Errorf("ParseSuffix(%q) = %v, Parse at some start: %v", s, got, want)
		}
	}
	// The unrolled checksum is Parse's: a key is found at the start
	// Parse accepts, with the prefix it names.
	key, _, _ := Generate(nil, "acme2")
	if k, ok := ParseSuffix("Xyz-" + key); !ok || k.Prefix != "acme2" {
		t.Errorf("ParseSuffix: %+v %v", k, ok)
	}
}

// Running the register back undoes crc32String byte by byte.
func TestCRCUnstep(t *testing.T) {
	s := "kb_AAAAAAAAAAAA_" + strings.Repeat("z", 43)
	crc := ^crc32String(s)
	for i := len(s) - 1; i >= 0; i-- {
		crc = crcUnstep(crc, s[i])
	}
	if crc != ^uint32(0) {
		t.Fatalf("register run back to %#x, want the initial ^0", crc)
	}
	seen := map[byte]bool{}
	for _, v := range crcTop {
		seen[v] = true
	}
	if len(seen) != 256 {
		t.Fatalf("crcTop is not a permutation: %d distinct entries", len(seen))
	}
}

func TestParseSuffixAllocatesNothing(t *testing.T) {
	key, _, _ := Generate(nil, "kb")
	for _, s := range []string{"Xkb" + key[2:], "x-" + key, strings.Repeat("a", 16) + key[2:len(key)-1] + "0", strings.Repeat("_", 100)} {
		if n := testing.AllocsPerRun(100, func() { ParseSuffix(s) }); n != 0 {
			t.Errorf("ParseSuffix(%q): %v allocations", s, n)
		}
	}
}

// Parse fails without allocating, whatever the prefix (a '_' in an
// ordinary URL: John_Smith).
func TestParseFailureAllocatesNothing(t *testing.T) {
	for _, s := range []string{"John_Smith_profile_picture", "_", "a_", "Ab_" + strings.Repeat("x", 70)} {
		if n := testing.AllocsPerRun(100, func() { Parse(s) }); n != 0 {
			t.Errorf("Parse(%q): %v allocations", s, n)
		}
	}
}
