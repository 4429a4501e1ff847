package main

import "strings"

// readablePattern is a path's regular expression as a reader writes the
// path: roles/(?P<name>\w(([\w-.]+)?\w)?) is roles/{name}, a group of
// words (?P<action>suspend|resume) is (suspend|resume), an optional
// trailing slash is a slash, and escapes are the characters.
func readablePattern(re string) string {
	re = strings.TrimPrefix(re, "^")
	re = strings.TrimSuffix(re, "$")
	re = strings.TrimSuffix(re, "?") // "/?" : a list's folder, shown with its slash
	var b strings.Builder
	for i := 0; i < len(re); i++ {
		switch c := re[i]; {
		case c == '\\' && i+1 < len(re):
			i++
			b.WriteByte(re[i])
		case strings.HasPrefix(re[i:], "(?P<"):
			end := groupEnd(re, i)
			name, body, _ := strings.Cut(re[i+len("(?P<"):end], ">")
			if words(body) {
				b.WriteString("(" + body + ")")
			} else {
				b.WriteString("{" + name + "}")
			}
			i = end
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// groupEnd is the index of the parenthesis closing the group opened at
// re[start].
func groupEnd(re string, start int) int {
	depth := 0
	for i := start; i < len(re); i++ {
		switch re[i] {
		case '\\':
			i++
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return len(re) - 1
}

// words says whether a group's body is literal words separated by |.
func words(body string) bool {
	for _, w := range strings.Split(body, "|") {
		if w == "" || strings.Trim(w, "abcdefghijklmnopqrstuvwxyz-") != "" {
			return false
		}
	}
	return true
}
