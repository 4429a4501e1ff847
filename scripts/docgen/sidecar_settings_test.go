package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/keybroker/keybroker/sidecar"
)

// A setting's documented default, where it is an HCL value, is what the
// sidecar does without it: setting it explicitly leaves the effective
// settings (keybroker-sidecar -check-config) unchanged.
func TestSidecarDefaultsAreTheSidecarsDefaults(t *testing.T) {
	blocks, err := readSidecarConfig(filepath.Join(testRoot(t), "sidecar"))
	if err != nil {
		t.Fatal(err)
	}
	// public_origin and decision_log_path turn on the settings that need
	// them; the route meters usage so usage_fallback applies.
	base := map[string][]string{"": {`audiences = ["a"]`, `public_origin = "https://api.example.com"`, `decision_log_path = "-"`},
		"vault": {`address = "http://127.0.0.1:8200"`, `role_id = "r"`, `secret_id_file = "/s"`}, "route": {`openai_usage = true`}}
	want := effective(t, defaultsConfig(base, "", ""))
	checked := 0
	for _, blk := range blocks {
		name, _, _ := strings.Cut(blk.open, " ")
		for _, s := range blk.settings {
			if !literalDefault(s.def) || setIn(base[name], s.name) {
				continue
			}
			checked++
			if got := effective(t, defaultsConfig(base, name, s.name+" = "+s.def)); got != want {
				t.Errorf("%s: its documented default %s is not the sidecar's: setting it changes the effective settings\n%s", s.field, s.def, firstDifference([]byte(got), []byte(want), "set", "unset"))
			}
		}
	}
	if checked < 30 {
		t.Errorf("only %d literal defaults checked; docgen no longer reads them", checked)
	}
}

// setIn says whether lines set the setting name.
func setIn(lines []string, name string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, name+" =") {
			return true
		}
	}
	return false
}

// defaultsConfig is the HCL of base with line added to block ("" the top
// level).
func defaultsConfig(base map[string][]string, block, line string) string {
	lines := func(b string) string {
		l := base[b]
		if block == b && line != "" {
			l = append(l[:len(l):len(l)], line)
		}
		return strings.Join(l, "\n")
	}
	return lines("") + "\nvault {\n" + lines("vault") + "\n}\nroute \"/x\" {\n" + lines("route") + "\n}\n"
}

// effective is -check-config's output for the config src.
func effective(t *testing.T, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sidecar.hcl")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := sidecar.ParseConfigFile(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	out, err := sidecar.CheckConfig(c)
	if err != nil {
		t.Fatalf("%v\n%s", err, src)
	}
	return string(out)
}

// examples/sidecar.hcl is where an operator sees every setting in
// context: each appears in it, set or commented out.
func TestExampleConfigShowsEverySetting(t *testing.T) {
	root := testRoot(t)
	blocks, err := readSidecarConfig(filepath.Join(root, "sidecar"))
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(root, "examples", "sidecar.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, blk := range blocks {
		for _, s := range blk.settings {
			if s.required == "yes (the block's label)" {
				continue
			}
			// name = ..., or a block: name { or name "label" {, possibly
			// commented out.
			re := regexp.MustCompile(`(?m)^\s*#?\s*` + regexp.QuoteMeta(s.name) + `\s*(=|("[^"]*"\s*)?\{)`)
			if !re.Match(example) {
				t.Errorf("examples/sidecar.hcl does not show %s (%s): add it, set or commented out, with its default", s.name, s.field)
			}
		}
	}
}

// A setting commented out in examples/sidecar.hcl shows its default, where
// the default is an HCL value: the example says "defaults shown".
func TestExampleConfigShowsDefaults(t *testing.T) {
	root := testRoot(t)
	blocks, err := readSidecarConfig(filepath.Join(root, "sidecar"))
	if err != nil {
		t.Fatal(err)
	}
	defaults := map[string]setting{}
	for _, blk := range blocks {
		for _, s := range blk.settings {
			if literalDefault(s.def) {
				defaults[s.name] = s
			}
		}
	}
	example, err := os.ReadFile(filepath.Join(root, "examples", "sidecar.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	commented := regexp.MustCompile(`^\s*#\s*([a-z_]+)\s*=\s*(.*)$`)
	checked := 0
	for i, line := range strings.Split(string(example), "\n") {
		m := commented.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s, ok := defaults[m[1]]
		if !ok {
			continue
		}
		checked++
		if shown, want := hclValue(t, withoutComment(m[2])), hclValue(t, s.def); shown != want {
			t.Errorf("examples/sidecar.hcl:%d shows %s = %s commented out, but its default is %s (%s)", i+1, m[1], withoutComment(m[2]), s.def, s.field)
		}
	}
	if checked < 20 {
		t.Errorf("only %d commented-out defaults found in examples/sidecar.hcl", checked)
	}
}

// withoutComment is an HCL value without the # comment after it.
func withoutComment(v string) string {
	inString := false
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && inString:
			i++
		case v[i] == '"':
			inString = !inString
		case v[i] == '#' && !inString:
			return strings.TrimSpace(v[:i])
		}
	}
	return strings.TrimSpace(v)
}

// hclValue is the value of the HCL expression src, spelt as go-cty does,
// so two spellings of one value compare equal.
func hclValue(t *testing.T, src string) string {
	t.Helper()
	expr, diags := hclsyntax.ParseExpression([]byte(src), "value", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", src, diags)
	}
	v, diags := expr.Value(nil)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", src, diags)
	}
	return v.GoString()
}

// Generation fails, naming each, on a setting without a description or
// hcl tag or of a type docgen cannot name: the reference never shows an
// empty cell for one.
func TestUndocumentedSettingIsAnError(t *testing.T) {
	dir := t.TempDir()
	src := "package sidecar\n\ntype Config struct {\n" +
		"\t// Documented.\n\t// Default: 1.\n\tA int `hcl:\"a,optional\"`\n" +
		"\tB string `hcl:\"b,optional\"`\n" +
		"\t// Default: \"x\".\n\tC string `hcl:\"c,optional\"`\n" +
		"\t// A channel.\n\tD chan int `hcl:\"d,optional\"`\n" +
		"\t// Untagged.\n\tE string\n" +
		"\t// The block.\n\tV *VaultConfig `hcl:\"vault,block\"`\n}\n\n" +
		"type VaultConfig struct {\n\tX string `hcl:\"x\"`\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "config.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := readSidecarConfig(dir)
	if err == nil {
		t.Fatal("undocumented settings were accepted")
	}
	for _, want := range []string{"Config.B (b) has no doc comment", "Config.C (c): its doc comment has a Default: or Required: line but no description",
		"Config.D (d): docgen does not know", "Config.E has no hcl tag", "VaultConfig.X (x) has no doc comment"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "Config.A ") {
		t.Errorf("a documented setting is reported:\n%v", err)
	}

}
