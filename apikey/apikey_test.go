package apikey

import (
	"bytes"
	"crypto/rand"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestGenerateParseRoundTrip(t *testing.T) {
	for _, prefix := range []string{"kb", "acme", "k8s", "abcdefghijklmnop"} {
		key, id, err := Generate(nil, prefix)
		if err != nil {
			t.Fatalf("Generate(%q): %v", prefix, err)
		}
		if want := len(prefix) + 1 + IDLength + 1 + SecretLength + ChecksumLength; len(key) != want {
			t.Fatalf("len(key) = %d, want %d", len(key), want)
		}
		k, err := Parse(key)
		if err != nil {
			t.Fatalf("Parse(generated key with prefix %q): %v", prefix, err)
		}
		if k.Prefix != prefix || k.ID != id {
			t.Fatalf("Parse = %+v, want prefix %q id %q", k, prefix, id)
		}
		if !ValidateID(id) {
			t.Fatalf("ValidateID(%q) = false", id)
		}
	}
}

func TestScannerRegexp(t *testing.T) {
	re := regexp.MustCompile(Regexp)
	key, _, err := Generate(nil, DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	text := "export TOKEN=" + key + "\n"
	if got := re.FindString(text); got != key {
		t.Fatalf("regexp found %q in %q", got, text)
	}
	if re.MatchString("kb_short_secret") {
		t.Fatal("regexp matched a string that is not a key")
	}
}

func TestParseRejects(t *testing.T) {
	key, _, err := Generate(nil, "kb")
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) string {
		b := []byte(key)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	cases := map[string]string{
		"empty":                "",
		"prefix only":          "kb_",
		"no separators":        strings.Repeat("a", 65),
		"typo in key_id":       flip(3),
		"typo in secret":       flip(20),
		"typo in checksum":     flip(len(key) - 1),
		"typo in prefix":       "kc" + key[2:],
		"truncated":            key[:len(key)-1],
		"extended":             key + "a",
		"uppercase prefix":     "KB" + key[2:],
		"prefix starts digit":  "1b" + key[2:],
		"non-base62 in secret": key[:20] + "-" + key[21:],
		"second separator":     key[:3+IDLength] + "-" + key[4+IDLength:],
		"too long":             strings.Repeat("a", MaxLength+1),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(in); err != ErrMalformed {
				t.Fatalf("Parse = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestGenerateRejectsBadPrefix(t *testing.T) {
	for _, p := range []string{"", "k", "KB", "k_b", "1kb", "abcdefghijklmnopq", "kb-x"} {
		if _, _, err := Generate(nil, p); err == nil {
			t.Errorf("Generate(%q) succeeded", p)
		}
	}
}

// Every byte value 0..247 must map to one character and 248..255 be dropped,
// so each base62 character is exactly equally likely.
func TestAppendRandomIsUniform(t *testing.T) {
	var all bytes.Buffer
	for i := 0; i < 256; i++ {
		all.WriteByte(byte(i))
	}
	all.Write(make([]byte, 64)) // padding for the reader's 64-byte reads
	out, err := appendRandom(nil, &all, 248)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[byte]int{}
	for _, c := range out {
		counts[c]++
	}
	if len(counts) != 62 {
		t.Fatalf("saw %d distinct characters, want 62", len(counts))
	}
	for c, n := range counts {
		if n != 4 {
			t.Fatalf("character %q appeared %d times, want 4", c, n)
		}
	}
}

func TestGenerateFailsOnShortRandomness(t *testing.T) {
	if _, _, err := Generate(bytes.NewReader(make([]byte, 10)), "kb"); err == nil {
		t.Fatal("Generate succeeded with 10 bytes of randomness")
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	key, _, err := Generate(rand.Reader, "kb")
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = Parse(key) }); n != 0 {
		t.Fatalf("Parse allocates %.0f times per call", n)
	}
}

func BenchmarkParse(b *testing.B) {
	key, _, err := Generate(nil, "kb")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(key); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHash(b *testing.B) {
	key, _, err := Generate(nil, "kb")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = Hash(key)
	}
}

func TestMintedNear(t *testing.T) {
	minted := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	_, id, err := GenerateAt(nil, "kb", minted)
	if err != nil {
		t.Fatal(err)
	}
	// The stamp cycle wraps: ids minted on either side of a wrap are near.
	wrap := time.Unix(stampCycle*3, 0)
	_, atWrap, err := GenerateAt(nil, "kb", wrap.Add(-time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		id     string
		now    time.Time
		window time.Duration
		want   bool
	}{
		{"just minted", id, minted, 30 * time.Second, true},
		{"30s later", id, minted.Add(30 * time.Second), 30 * time.Second, true},
		{"31s later", id, minted.Add(31 * time.Second), 30 * time.Second, false},
		{"verifier clock 30s behind", id, minted.Add(-30 * time.Second), 30 * time.Second, true},
		{"verifier clock 31s behind", id, minted.Add(-31 * time.Second), 30 * time.Second, false},
		{"a year later", id, minted.AddDate(1, 0, 0), 30 * time.Second, false},
		{"one cycle later", id, minted.Add(stampCycle * time.Second), time.Second, true},
		{"across the wrap", atWrap, wrap.Add(time.Second), 5 * time.Second, true},
		{"too short", "abc", minted, time.Hour, false},
	} {
		if got := MintedNear(c.id, c.now, c.window); got != c.want {
			t.Errorf("%s: MintedNear(%q) = %v, want %v", c.name, c.id, got, c.want)
		}
	}
}

// Random ids (keys minted before stamps, or forged) are near now only as
// often as the window's share of the cycle: about 1 in 15 million for 60s.
func TestMintedNearRandomIDs(t *testing.T) {
	now := time.Now()
	near := 0
	for i := 0; i < 100_000; i++ {
		key, _, err := GenerateAt(nil, "kb", time.Unix(int64(i)*9173, 0))
		if err != nil {
			t.Fatal(err)
		}
		k, _ := Parse(key)
		if MintedNear(k.ID, now, 30*time.Second) {
			near++
		}
	}
	if near > 2 {
		t.Fatalf("%d of 100000 ids stamped at spread-out times were near now", near)
	}
}
