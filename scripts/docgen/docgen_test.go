package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/sidecar"
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
// hcl tag or of a type docgen cannot name, and on a path or field without
// help: the reference never shows an empty cell for them.
func TestUndocumentedIsAnError(t *testing.T) {
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

	paths := []*framework.Path{
		{Pattern: "ok$", HelpSynopsis: "s", HelpDescription: "d", Fields: map[string]*framework.FieldSchema{"f": {Type: framework.TypeString, Description: "f"}}},
		{Pattern: "nosyn$", HelpDescription: "d"},
		{Pattern: "nodesc$", HelpSynopsis: "s"},
		{Pattern: "field$", HelpSynopsis: "s", HelpDescription: "d", Fields: map[string]*framework.FieldSchema{"g": {Type: framework.TypeString, Description: " \n"}}},
		{Pattern: "answer$", HelpSynopsis: "s", HelpDescription: "d", Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{Responses: map[int][]framework.Response{200: {{Description: "OK", Fields: map[string]*framework.FieldSchema{"h": {Type: framework.TypeInt}}}}}},
		}},
	}
	_, err = renderPaths(paths)
	if err == nil {
		t.Fatal("paths without help were accepted")
	}
	for _, want := range []string{`path "nosyn$" lacks`, `path "nodesc$" lacks`, `field "g" of path "field$" has no description`, `answer field "h" of read "answer$" (200) has no description`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), `"ok$"`) {
		t.Errorf("a documented path is reported:\n%v", err)
	}
}

func TestReadablePattern(t *testing.T) {
	for re, want := range map[string]string{
		"roles/?$": "roles/",
		"roles/" + framework.GenericNameRegex("name"):                                                             "roles/{name}",
		"keys/" + framework.GenericNameRegex("role") + "/id/" + framework.GenericNameRegex("key_id") + "/rotate$": "keys/{role}/id/{key_id}/rotate",
		`roles/(?P<name>\w+)/(?P<action>suspend|resume)$`:                                                         "roles/{name}/(suspend|resume)",
		`\.well-known/openid-configuration$`:                                                                      ".well-known/openid-configuration",
		"^jwks$":                                                                                                  "jwks",
	} {
		if got := readablePattern(re); got != want {
			t.Errorf("readablePattern(%q) = %q, want %q", re, got, want)
		}
	}
}

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

func testRoot(t *testing.T) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
