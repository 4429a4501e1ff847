package main

import (
	"strings"
)

// cell is text made safe for one cell of a GitHub Markdown table: one
// line, no column-ending pipe, no <word> GitHub would take for an HTML tag
// and hide (keybroker/keys/<name>), and no * that would start emphasis
// (keys/<role>/*).
func cell(s string) string {
	s = oneLine(s)
	return cellEscaper.Replace(s)
}

var cellEscaper = strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;", "*", `\*`)

// code is s as inline code in a table cell. A pipe must still be escaped
// there (GitHub splits the row first); entities are not decoded in code,
// so < stays as it is.
func code(s string) string {
	if s == "" {
		return ""
	}
	s = strings.ReplaceAll(oneLine(s), "|", `\|`)
	tick := "`"
	if strings.Contains(s, "`") {
		tick = "``"
		s = " " + s + " "
	}
	return tick + s + tick
}

// oneLine joins the lines of s with single spaces.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// table writes a Markdown table: a header row, then rows of cells already
// escaped.
func table(b *strings.Builder, header []string, rows [][]string) {
	b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for range header {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
}

// anchor is the id GitHub gives a heading: lower case, spaces as hyphens,
// punctuation other than - and _ dropped.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}
