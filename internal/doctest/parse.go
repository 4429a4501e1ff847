package doctest

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
)

// Kind is how a block is run.
type Kind int

const (
	// Shown blocks are not run (config files, code, output samples).
	Shown Kind = iota
	// Script blocks run as one chunk; every command must succeed.
	Script
	// Console blocks run command by command, each output compared.
	Console
)

// Page is one Markdown file split at its "## " headings. Text before the
// first heading is a section with an empty title.
type Page struct {
	Path     string
	Sections []Section
}

// Section is what runs in one shell.
type Section struct {
	Title  string
	Line   int
	Blocks []Block
}

// Block is one fenced code block.
type Block struct {
	Line       int
	Lang       string
	Kind       Kind
	SkipReason string // set when a skip comment precedes the block
	Script     string // Script blocks
	Commands   []Command
}

// Command is one "$ " command of a console block and what it should print.
type Command struct {
	Line     int
	Text     string   // as the shell reads it: continuation lines and heredoc bodies included
	Want     []string // expected output lines
	WantFail bool     // the command line says "# fails": it must exit non-zero
}

var (
	skipRe    = regexp.MustCompile(`^<!--\s*doctest:\s*skip(?::\s*(.*?))?\s*-->\s*$`)
	heredocRe = regexp.MustCompile(`<<(-?)\s*['"]?([A-Za-z_][A-Za-z0-9_]*)['"]?`)
	failsRe   = regexp.MustCompile(`(^|\s)#\s*fails\b`)
)

// Parse splits a Markdown page into sections and blocks. It refuses what a
// reader would misread: an unclosed fence, a skip without a reason, a skip
// comment not followed by a block.
func Parse(path, text string) (*Page, error) {
	p := &Page{Path: path, Sections: []Section{{Line: 1}}}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var (
		lines []string
		n     int
	)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	skip, skipLine := "", 0
	for n = 0; n < len(lines); n++ {
		line := lines[n]
		if strings.HasPrefix(line, "## ") {
			p.Sections = append(p.Sections, Section{Title: strings.TrimSpace(line[3:]), Line: n + 1})
			continue
		}
		if m := skipRe.FindStringSubmatch(line); m != nil {
			if strings.TrimSpace(m[1]) == "" {
				return nil, fmt.Errorf("%s:%d: a doctest skip needs a reason (<!-- doctest: skip: why -->)", path, n+1)
			}
			skip, skipLine = m[1], n+1
			continue
		}
		if !strings.HasPrefix(line, "```") {
			if skip != "" && strings.TrimSpace(line) != "" {
				return nil, fmt.Errorf("%s:%d: a doctest skip comment must be followed by a code block", path, skipLine)
			}
			continue
		}
		lang := strings.TrimSpace(strings.TrimPrefix(line, "```"))
		if f := strings.Fields(lang); len(f) > 0 {
			lang = f[0]
		}
		start := n + 1
		var body []string
		for n++; n < len(lines) && !strings.HasPrefix(lines[n], "```"); n++ {
			body = append(body, lines[n])
		}
		if n == len(lines) {
			return nil, fmt.Errorf("%s:%d: code block never closed", path, start)
		}
		b, err := newBlock(path, start, lang, body)
		if err != nil {
			return nil, err
		}
		b.SkipReason, skip = skip, ""
		s := &p.Sections[len(p.Sections)-1]
		s.Blocks = append(s.Blocks, b)
	}
	if skip != "" {
		return nil, fmt.Errorf("%s:%d: a doctest skip comment must be followed by a code block", path, skipLine)
	}
	return p, nil
}

func newBlock(path string, line int, lang string, body []string) (Block, error) {
	b := Block{Line: line, Lang: lang}
	switch lang {
	case "sh", "bash", "shell":
		b.Kind, b.Script = Script, strings.Join(body, "\n")+"\n"
	case "console":
		b.Kind = Console
		cmds, err := parseConsole(path, line+1, body)
		if err != nil {
			return b, err
		}
		b.Commands = cmds
	}
	return b, nil
}

// parseConsole reads "$ " commands and their expected output.
func parseConsole(path string, first int, body []string) ([]Command, error) {
	var cmds []Command
	for i := 0; i < len(body); {
		line := body[i]
		if !strings.HasPrefix(line, "$ ") {
			if len(cmds) == 0 {
				if strings.TrimSpace(line) == "" {
					i++
					continue
				}
				return nil, fmt.Errorf("%s:%d: a console block starts with a \"$ \" command", path, first+i)
			}
			cmds[len(cmds)-1].Want = append(cmds[len(cmds)-1].Want, line)
			i++
			continue
		}
		c := Command{Line: first + i}
		text := []string{line[2:]}
		for i++; strings.HasSuffix(text[len(text)-1], `\`) && i < len(body); i++ {
			text = append(text, body[i])
		}
		// A heredoc's body is part of the command, up to its terminator.
		if m := heredocRe.FindStringSubmatch(strings.Join(text, "\n")); m != nil {
			for ; i < len(body); i++ {
				text = append(text, body[i])
				end := body[i]
				if m[1] == "-" {
					end = strings.TrimLeft(end, "\t")
				}
				if end == m[2] {
					i++
					break
				}
			}
		}
		c.Text = strings.Join(text, "\n")
		c.WantFail = failsRe.MatchString(text[0]) || failsRe.MatchString(text[len(text)-1])
		cmds = append(cmds, c)
	}
	for i := range cmds {
		cmds[i].Want = trimBlank(cmds[i].Want)
	}
	return cmds, nil
}

func trimBlank(lines []string) []string {
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	for len(lines) > 0 && strings.TrimSpace(lines[0]) == "" {
		lines = lines[1:]
	}
	return lines
}
