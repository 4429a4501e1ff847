package doctest

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		name      string
		want, got string
		ok        bool
	}{
		{"equal", "a\nb", "a\nb", true},
		{"trailing spaces", "a  \nb", "a\nb   ", true},
		{"carriage returns", "HTTP/1.1 200 OK\nb", "HTTP/1.1 200 OK\r\nb\r", true},
		{"blank ends of output", "a", "\na\n\n", true},
		{"differs", "a\nb", "a\nc", false},
		{"missing line", "a\nb", "a", false},
		{"extra line", "a", "a\nb", false},
		{"ellipsis line matches none", "a\n...\nb", "a\nb", true},
		{"ellipsis line matches many", "a\n...\nb", "a\nx\ny\nb", true},
		{"ellipsis line at end", "a\n...", "a\nx\ny", true},
		{"ellipsis line cannot skip a wanted line", "a\n...\nb", "a\nx", false},
		{"in-line ellipsis", "key   kb_...", "key   kb_4Fq7TzL0aBcD_x", true},
		{"in-line ellipsis middle", "a ... c", "a bbb c", true},
		{"in-line ellipsis keeps the rest", "a ... c", "a bbb d", false},
		{"in-line ellipsis needs the prefix", "key kb_...", "id kb_1", false},
		{"in-line ellipsis does not overlap", "ab...ba", "aba", false},
		{"empty want, empty got", "", "", true},
		{"empty want, output", "", "x", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []string
			if tc.want != "" {
				want = strings.Split(tc.want, "\n")
			}
			if got := Match(want, strings.Split(tc.got, "\n")); got != tc.ok {
				t.Fatalf("Match(%q, %q) = %v, want %v", tc.want, tc.got, got, tc.ok)
			}
		})
	}
}

func TestParse(t *testing.T) {
	page := "intro\n```sh\nexport A=1\n```\n## One\n" +
		"```console\n$ echo a \\\n  b\na b\n$ cat <<'EOF'\nx\n$ not a prompt\nEOF\nx\n$ false   # fails: on purpose\n```\n" +
		"```hcl\nx = 1\n```\n## Two\n<!-- doctest: skip: needs a real gateway -->\n```sh\nnginx\n```\n"
	p, err := Parse("p.md", page)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Sections) != 3 || p.Sections[1].Title != "One" || p.Sections[2].Title != "Two" {
		t.Fatalf("sections: %+v", p.Sections)
	}
	if b := p.Sections[0].Blocks; len(b) != 1 || b[0].Kind != Script || b[0].Script != "export A=1\n" {
		t.Fatalf("intro: %+v", b)
	}
	one := p.Sections[1].Blocks
	if len(one) != 2 || one[0].Kind != Console || one[1].Kind != Shown {
		t.Fatalf("section one: %+v", one)
	}
	cmds := one[0].Commands
	if len(cmds) != 3 {
		t.Fatalf("commands: %+v", cmds)
	}
	if cmds[0].Text != "echo a \\\n  b" || strings.Join(cmds[0].Want, "|") != "a b" || cmds[0].WantFail {
		t.Fatalf("continuation: %+v", cmds[0])
	}
	if cmds[1].Text != "cat <<'EOF'\nx\n$ not a prompt\nEOF" || strings.Join(cmds[1].Want, "|") != "x" {
		t.Fatalf("heredoc: %+v", cmds[1])
	}
	if !cmds[2].WantFail || cmds[2].Line != 15 {
		t.Fatalf("fails: %+v", cmds[2])
	}
	if b := p.Sections[2].Blocks; len(b) != 1 || b[0].SkipReason != "needs a real gateway" {
		t.Fatalf("skip: %+v", b)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, page := range map[string]string{
		"unclosed fence":      "```sh\necho\n",
		"skip without reason": "<!-- doctest: skip -->\n```sh\necho\n```\n",
		"skip before text":    "<!-- doctest: skip: x -->\ntext\n```sh\necho\n```\n",
		"skip at the end":     "<!-- doctest: skip: x -->\n",
		"console without $":   "```console\noutput first\n```\n",
	} {
		if _, err := Parse("p.md", page); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestSession(t *testing.T) {
	s, err := Start(t.TempDir(), []string{"PATH=/usr/bin:/bin"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	run := func(chunk string, errexit bool) (string, int, error) {
		return s.Run(chunk, errexit, 10*time.Second)
	}
	if out, code, err := run("export A=1; echo no newline; printf x", false); err != nil || code != 0 || out != "no newline\nx" {
		t.Fatalf("got %q %d %v", out, code, err)
	}
	if out, code, err := run("echo $A; echo err >&2; cat; exit_code() { return 3; }; exit_code", false); err != nil || code != 3 || out != "1\nerr\n" {
		t.Fatalf("variables carry, stderr merged, stdin empty, status kept: %q %d %v", out, code, err)
	}
	if _, code, err := run("true", true); err != nil || code != 0 {
		t.Fatalf("errexit success: %d %v", code, err)
	}
	if out, _, err := run("echo before; false; echo after", true); !errors.Is(err, ErrShellExited) || out != "before\n" {
		t.Fatalf("errexit failure: %q %v", out, err)
	}
}

func TestSessionTimeout(t *testing.T) {
	s, err := Start(t.TempDir(), []string{"PATH=/usr/bin:/bin"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Run("sleep 5", false, 200*time.Millisecond); err == nil {
		t.Fatal("no timeout")
	}
}
