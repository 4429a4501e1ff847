package contract

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestEveryReasonIsTroubleshot fails when a reason a verifier or
// keybroker/verify gives has no row in docs/troubleshooting.md (its cause and
// its fix), so a new reason cannot ship unexplained. The reasons are read
// from this package's source: every string constant named Reason*.
func TestEveryReasonIsTroubleshot(t *testing.T) {
	doc, err := os.ReadFile("../docs/troubleshooting.md")
	if err != nil {
		t.Fatal(err)
	}
	// A row names its reasons in its first cell: "| `a`, `b` | ...".
	firstCell := regexp.MustCompile("^\\| ([^|]+) \\|")
	named := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if m := firstCell.FindStringSubmatch(line); m != nil {
			for _, r := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(m[1], -1) {
				named[r[1]] = true
			}
		}
	}
	reasons := reasonConstants(t)
	if len(reasons) < 30 {
		t.Fatalf("found only %d reasons (%v): the source reading below is broken", len(reasons), reasons)
	}
	for name, value := range reasons {
		if value != ReasonOK && !named[value] {
			t.Errorf("%s (%q) has no row in docs/troubleshooting.md: add its cause and fix to the denial reasons", name, value)
		}
	}
}

// reasonConstants is every string constant of this package named Reason*,
// by name.
func reasonConstants(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), e.Name(), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if spec, ok := n.(*ast.ValueSpec); ok {
				addReasons(t, out, spec)
			}
			return true
		})
	}
	return out
}

// addReasons adds the Reason* names of one const spec with their values.
func addReasons(t *testing.T, out map[string]string, spec *ast.ValueSpec) {
	for i, name := range spec.Names {
		if !strings.HasPrefix(name.Name, "Reason") || i >= len(spec.Values) {
			continue
		}
		if lit, ok := spec.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			v, err := strconv.Unquote(lit.Value)
			if err != nil {
				t.Fatal(err)
			}
			out[name.Name] = v
		}
	}
}
