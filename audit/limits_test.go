package audit

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += int64(k)
	return k, err
}

// repeatReader yields n copies of b, and is never held whole in memory.
func repeatReader(b byte, n int64) io.Reader {
	return io.LimitReader(byteRepeater(b), n)
}

type byteRepeater byte

func (r byteRepeater) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

func decisionLine(i int) string {
	return fmt.Sprintf(`{"time":"2026-12-01T21:16:59.%09dZ","type":"decision","outcome":"allow","key_id":"k%d","sidecar":"sc-1"}`, i, i)
}

// A line over the limit is skipped whole, the lines around it are read,
// and the line buffer never grows past the limit, whatever the line.
func TestLineReaderBoundsEveryLine(t *testing.T) {
	const max = 8
	for _, tc := range []struct {
		name, in string
		lines    []string // "LONG" for a skipped line
	}{
		{"short and empty lines", "a\n\nbc\n", []string{"a", "", "bc"}},
		{"exactly the limit", "12345678\n", []string{"12345678"}},
		{"one over", "123456789\nok\n", []string{"LONG", "ok"}},
		{"no newline at the end", "ok\n12345678", []string{"ok", "12345678"}},
		{"long without newline at the end", "ok\n" + strings.Repeat("x", 100), []string{"ok", "LONG"}},
		{"long lines in a row", strings.Repeat("y", 50) + "\n" + strings.Repeat("z", 9) + "\nend\n", []string{"LONG", "LONG", "end"}},
		{"longer than the bufio buffer", strings.Repeat("w", 100000) + "\nend\n", []string{"LONG", "end"}},
		{"carriage return is the line's", "ab\r\n", []string{"ab\r"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The smallest bufio buffer: lines arrive in many pieces.
			lr := &lineReader{r: bufio.NewReaderSize(strings.NewReader(tc.in), 16), max: max}
			var got []string
			for {
				b, long, err := lr.next()
				if cap(lr.buf) > max {
					t.Fatalf("line buffer grew to %d, past the limit %d", cap(lr.buf), max)
				}
				switch {
				case long:
					got = append(got, "LONG")
				case err == nil || len(b) > 0:
					got = append(got, string(b))
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if strings.Join(got, "|") != strings.Join(tc.lines, "|") {
				t.Fatalf("lines %q, want %q", got, tc.lines)
			}
		})
	}
}

// gzipOf compresses what r yields.
func gzipOf(t *testing.T, parts ...io.Reader) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(zw, io.MultiReader(parts...)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A gzip bomb: a few hundred KB holding one 256 MiB line between two
// decisions (and the same, uncompressed, on stdin). Reading it allocates a bounded amount (what the line limit
// lets through, not the line), reads the whole input, skips and counts the
// line and keeps the decisions; the output says so.
func TestLoadGzipBombIsReadInBoundedMemory(t *testing.T) {
	const line = 256 << 20
	bomb := gzipOf(t, strings.NewReader(decisionLine(1)+"\n"), repeatReader('a', line), strings.NewReader("\n"+decisionLine(2)+"\n"))
	if len(bomb) > 1<<20 {
		t.Fatalf("the bomb is %d bytes compressed", len(bomb))
	}
	for _, via := range []string{"gzip file", "gzip stdin", "plain stdin"} {
		t.Run(via, func(t *testing.T) {
			src := &countingReader{r: bytes.NewReader(bomb)}
			total := int64(len(bomb))
			name := "audit.log.gz"
			switch via {
			case "gzip stdin":
				name = "stdin"
			case "plain stdin":
				name = "stdin"
				// Streamed, never in memory: the same lines uncompressed.
				src = &countingReader{r: io.MultiReader(strings.NewReader(decisionLine(1)+"\n"), repeatReader('a', line), strings.NewReader("\n"+decisionLine(2)+"\n"))}
				total = int64(len(decisionLine(1))+len(decisionLine(2))+2) + line + 1
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			l, err := LoadLimited([]Input{{Name: name, R: src}}, Limits{MaxLineBytes: 1 << 20})
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			// The old reader held the whole line: 256 MiB and more.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
				t.Fatalf("reading a %d MiB line allocated %d MiB with a 1 MiB line limit", line>>20, alloc>>20)
			}
			if src.n != total {
				t.Fatalf("read %d of %d bytes: the line after the bomb was not reached", src.n, total)
			}
			if l.TooLong[name] != 1 || len(l.Decisions) != 2 || l.Decisions[1].KeyID != "k2" || l.Decisions[1].Source != name+":3" {
				t.Fatalf("too long %v, decisions %d", l.TooLong, len(l.Decisions))
			}
			rep := BuildReport(l, ReportOptions{}, Options{})
			if !anyContains(rep.Notes, name+": 1 line longer than 1MiB, skipped unread (-max-line-bytes)") {
				t.Fatalf("report notes %q", rep.Notes)
			}
			if h := BuildHistory(l, "k2", Options{}); !anyContains(h.Notes, "longer than 1MiB") {
				t.Fatalf("history notes %q", h.Notes)
			}
		})
	}
}

// Past the decompressed limit the rest of a gzip input is not read: not
// decompressed, and not even read from the file. What came before is kept,
// the line cut in two is dropped, and the output says so. Plain inputs have
// no such limit (their size is what is on disk).
func TestLoadStopsAtTheDecompressedLimit(t *testing.T) {
	var plain bytes.Buffer
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; plain.Len() < 8<<20; i++ {
		// Random padding: the gzip is about as large as what it holds.
		fmt.Fprintf(&plain, "{\"time\":\"2026-12-01T21:16:59Z\",\"type\":\"decision\",\"outcome\":\"allow\",\"key_id\":\"k%d\",\"path\":\"/%016x%016x\"}\n", i, rnd.Uint64(), rnd.Uint64())
	}
	gz := gzipOf(t, bytes.NewReader(plain.Bytes()))
	src := &countingReader{r: bytes.NewReader(gz)}
	l, err := LoadLimited([]Input{{Name: "big.gz", R: src}, {Name: "plain", R: bytes.NewReader(plain.Bytes())}}, Limits{MaxDecompressedBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Cut["big.gz"] || l.Cut["plain"] {
		t.Fatalf("cut %v", l.Cut)
	}
	if src.n > int64(len(gz))/2 {
		t.Fatalf("read %d of %d compressed bytes past a 1 MiB limit of an 8 MiB input", src.n, len(gz))
	}
	lines := bytes.Count(plain.Bytes(), []byte("\n"))
	fromGz := len(l.Decisions) - lines
	if whole := bytes.Count(plain.Bytes()[:1<<20], []byte("\n")); fromGz != whole {
		t.Fatalf("%d decisions from the gzip, want the %d whole lines in its first MiB", fromGz, whole)
	}
	rep := BuildReport(l, ReportOptions{}, Options{})
	if !anyContains(rep.Notes, "big.gz: decompressed past 1MiB; the rest of it was not read (-max-decompressed-bytes)") || anyContains(rep.Notes, "plain:") {
		t.Fatalf("report notes %q", rep.Notes)
	}
}

// The flags set the limits; the output says what they skipped.
func TestMainLimitFlags(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "decisions.log")
	if err := os.WriteFile(log, []byte(decisionLine(1)+"\n"+strings.Repeat("x", 2048)+"\n"+decisionLine(2)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string // in stdout, or stderr for a usage error
	}{
		{[]string{"report", "-since", "2026-12-01T00:00:00Z", "-until", "2026-12-02T00:00:00Z", "-max-line-bytes", "1KiB", log}, 0, "1 line longer than 1KiB, skipped unread"},
		{[]string{"history", "-max-line-bytes=1024", "-format", "json", "k1", log}, 0, "1 line longer than 1KiB"},
		{[]string{"history", "-max-line-bytes", "3000", "k1", "-max-decompressed-bytes", "1GiB", log}, 0, ""},
		{[]string{"report", "-max-line-bytes", "0", log}, 2, "want a positive byte count"},
		{[]string{"report", "-max-line-bytes", "1EiB", log}, 2, "want a positive byte count"},
		{[]string{"report", "-max-decompressed-bytes", "-5", log}, 2, "want a positive byte count"},
		{[]string{"report", "-max-decompressed-bytes", "9000000TiB", log}, 2, "want a positive byte count"},
	} {
		var out, errOut bytes.Buffer
		code := Main(tc.args, nil, &out, &errOut, nil)
		got := out.String()
		if tc.code != 0 {
			got = errOut.String()
		}
		if code != tc.code || !strings.Contains(got, tc.want) || tc.want == "" && strings.Contains(out.String(), "longer than") {
			t.Errorf("%q: exit %d, out %s, err %s", tc.args, code, out.String(), errOut.String())
		}
	}
}
