package doctest

import (
	"strings"
)

// Ellipsis elides: alone on a line it matches any number of lines, inside a
// line any text.
const Ellipsis = "..."

// Match reports whether got (a command's output, split in lines) is what
// want shows. Trailing spaces (and carriage returns) never count, and blank lines at either end of
// got are ignored, as a reader would.
func Match(want, got []string) bool {
	got = trimBlank(got)
	memo := make(map[[2]int]bool)
	var match func(i, j int) bool
	match = func(i, j int) bool {
		key := [2]int{i, j}
		if v, ok := memo[key]; ok {
			return v
		}
		var ok bool
		switch {
		case i == len(want):
			ok = j == len(got)
		case strings.TrimSpace(want[i]) == Ellipsis:
			ok = match(i+1, j) || (j < len(got) && match(i, j+1))
		default:
			ok = j < len(got) && MatchLine(want[i], got[j]) && match(i+1, j+1)
		}
		memo[key] = ok
		return ok
	}
	return match(0, 0)
}

// MatchLine matches one line, "..." inside it standing for any text.
func MatchLine(want, got string) bool {
	// \r too: HTTP header lines (curl -i) end in CRLF.
	want, got = strings.TrimRight(want, " \t\r"), strings.TrimRight(got, " \t\r")
	parts := strings.Split(want, Ellipsis)
	if len(parts) == 1 {
		return want == got
	}
	if !strings.HasPrefix(got, parts[0]) {
		return false
	}
	got = got[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		k := strings.Index(got, p)
		if k < 0 {
			return false
		}
		got = got[k+len(p):]
	}
	return strings.HasSuffix(got, last)
}
