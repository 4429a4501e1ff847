package doctest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSlug(t *testing.T) {
	for heading, want := range map[string]string{
		"Configure the issuer and signing keys (`config`)": "configure-the-issuer-and-signing-keys-config",
		"Bind a token to the agent's key (DPoP)":           "bind-a-token-to-the-agents-key-dpop",
		"make dev and make cluster":                        "make-dev-and-make-cluster",
		"Roles: `roles/<name>`":                            "roles-rolesname",
		"key_replica and its feed":                         "key_replica-and-its-feed",
	} {
		if got := Slug(heading); got != want {
			t.Errorf("Slug(%q) = %q, want %q", heading, got, want)
		}
	}
}

func TestBrokenLinks(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.md"), []byte("# A\n## Run it\n## Run it\n```sh\n# not a heading\n```\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "b.md"), []byte("[ok](a.md#run-it) [second](a.md#run-it-1) [self](#b)\n# B\n"+
		"[gone](a.md#not-a-heading) [missing](c.md) [web](https://x.example/#y)\n```sh\n[in code](nowhere.md)\n```\n"), 0o600)
	broken, err := BrokenLinks(filepath.Join(dir, "b.md"))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(broken, "\n")
	if len(broken) != 2 || !strings.Contains(got, "a.md#not-a-heading") || !strings.Contains(got, "c.md: no such file") {
		t.Fatalf("broken links:\n%s", got)
	}
}

// Every relative link of the README and docs/ names a file that exists and
// a heading it has.
func TestDocsLinks(t *testing.T) {
	root := filepath.Join("..", "..")
	pages := []string{filepath.Join(root, "README.md"), filepath.Join(root, "CHANGELOG.md")}
	more, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	ref, _ := filepath.Glob(filepath.Join(root, "docs", "reference", "*.md"))
	pages = append(append(pages, more...), ref...)
	var all []string
	for _, p := range pages {
		broken, err := BrokenLinks(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, broken...)
	}
	if len(all) > 0 {
		t.Fatalf("%d broken links:\n%s", len(all), strings.Join(all, "\n"))
	}
}
