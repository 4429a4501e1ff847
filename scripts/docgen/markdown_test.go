package main

import (
	"testing"
)

// A table cell holds any description: one line, its pipes escaped, and a
// <placeholder> shown rather than taken for an HTML tag.
func TestCell(t *testing.T) {
	for in, want := range map[string]string{
		"a | b":                 `a \| b`,
		"keybroker/keys/<name>": "keybroker/keys/&lt;name&gt;",
		"two\n   lines\n":       "two lines",
		"||":                    `\|\|`,
		"keys/<role>/* and *":   `keys/&lt;role&gt;/\* and \*`,
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
	if got := code("a|b`c"); got != "`` a\\|b`c ``" {
		t.Errorf("code = %q", got)
	}
}
