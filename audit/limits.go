package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits bound what reading one input may cost. Audit logs are written by
// Vault, but what is in them comes from whoever made requests, and a file
// handed to an auditor may be anything: a 1 MB gzip can hold a 1 GB line.
// What is over a limit is skipped, counted and told in the output's notes,
// never held in memory.
type Limits struct {
	// MaxLineBytes is the longest line read (without its newline); a
	// longer one is skipped whole. No more than this is held of any line.
	// Default DefaultMaxLineBytes.
	MaxLineBytes int
	// MaxDecompressedBytes is the most read of a gzip input once
	// decompressed; the rest of that input is skipped. Default
	// DefaultMaxDecompressedBytes.
	MaxDecompressedBytes int64
}

const (
	// DefaultMaxLineBytes is above the largest entry Vault writes for a
	// request it accepts by default (max_request_size 32 MiB).
	DefaultMaxLineBytes = 64 << 20
	// DefaultMaxDecompressedBytes holds a busy Vault's audit log of a day
	// (a million requests), and is what a 4 MB gzip bomb unpacks to, not
	// the 4 TB a 4 GB one would: everything read is kept in memory, so
	// this bounds what an input can make the tool hold.
	DefaultMaxDecompressedBytes = 4 << 30
)

func (lim Limits) withDefaults() Limits {
	if lim.MaxLineBytes <= 0 {
		lim.MaxLineBytes = DefaultMaxLineBytes
	}
	if lim.MaxDecompressedBytes <= 0 {
		lim.MaxDecompressedBytes = DefaultMaxDecompressedBytes
	}
	return lim
}

// lineReader reads lines of at most max bytes and skips longer ones whole,
// reading them through in the bufio.Reader's buffer: it never holds more
// than max bytes of a line, however long the line is.
type lineReader struct {
	r   *bufio.Reader
	max int
	buf []byte // reused: a line is valid until the next call
}

// next returns the next line without its newline. long says the line was
// longer than max; it is then not returned. err is io.EOF after the last
// line (which may come with it, when the input does not end in a newline)
// or the input's error; a line that comes with another error is partial.
func (lr *lineReader) next() (line []byte, long bool, err error) {
	lr.buf = lr.buf[:0]
	for {
		frag, err := lr.r.ReadSlice('\n')
		if err == nil {
			frag = frag[:len(frag)-1]
		}
		if !long {
			if len(lr.buf)+len(frag) > lr.max {
				long, lr.buf = true, lr.buf[:0]
			} else {
				lr.add(frag)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if long {
			return nil, true, err
		}
		return lr.buf, false, err
	}
}

// add appends b to the line, growing it to at most max bytes (append alone
// may round a large slice's capacity up past it).
func (lr *lineReader) add(b []byte) {
	if need := len(lr.buf) + len(b); need > cap(lr.buf) {
		c := min(max(2*cap(lr.buf), need, 4096), lr.max)
		nb := make([]byte, len(lr.buf), c)
		copy(nb, lr.buf)
		lr.buf = nb
	}
	lr.buf = append(lr.buf, b...)
}

// errCapped: the input has more than capReader lets through.
var errCapped = errors.New("over the size limit")

// capReader passes on at most n bytes of r, then errCapped if r has more
// (io.EOF if it has not).
type capReader struct {
	r io.Reader
	n int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		var one [1]byte
		if k, err := io.ReadFull(c.r, one[:]); k == 0 {
			return 0, err
		}
		return 0, errCapped
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	k, err := c.r.Read(p)
	c.n -= int64(k)
	return k, err
}

// readNotes tells what the limits kept from being read, by input.
func (l *Log) readNotes() []string {
	var notes []string
	for _, in := range l.Inputs {
		if n := l.TooLong[in]; n > 0 {
			notes = append(notes, fmt.Sprintf("%s: %s longer than %s, skipped unread (-max-line-bytes)", in, plural(n, "line", "lines"), sizeString(int64(l.limits.MaxLineBytes))))
		}
		if l.Cut[in] {
			notes = append(notes, fmt.Sprintf("%s: decompressed past %s; the rest of it was not read (-max-decompressed-bytes)", in, sizeString(l.limits.MaxDecompressedBytes)))
		}
	}
	return notes
}

var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}}

// sizeString writes n in the largest binary unit that divides it.
func sizeString(n int64) string {
	for _, u := range sizeUnits {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// parseSize reads a byte count: digits, optionally with KiB, MiB, GiB or
// TiB. It must be positive and fit in an int64.
func parseSize(s string) (int64, error) {
	num, shift := s, uint(0)
	for _, u := range sizeUnits {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = v, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("%q: want a positive byte count, optionally with KiB, MiB, GiB or TiB", s)
	}
	return n << shift, nil
}
