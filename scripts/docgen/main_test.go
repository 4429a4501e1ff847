package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The committed reference pages are what make docs writes now: a setting,
// path or description changed in code without make docs fails here.
func TestReferencePagesAreCurrent(t *testing.T) {
	root := testRoot(t)
	for _, p := range pages {
		want, err := p.render(root)
		if err != nil {
			t.Fatalf("%s: %v", p.file, err)
		}
		got, err := os.ReadFile(filepath.Join(root, p.file))
		if err != nil {
			t.Errorf("%s is missing: run make docs (%v)", p.file, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run make docs\n%s", p.file, firstDifference(got, want, "committed", "generated"))
		}
	}
}

// firstDifference names the first line where two texts part.
func firstDifference(got, want []byte, gotName, wantName string) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d\n  %s: %s\n  %s: %s", i+1, gotName, gl, wantName, wl)
		}
	}
	return ""
}

func testRoot(t *testing.T) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
