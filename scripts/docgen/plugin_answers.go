package main

import (
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
)

// answer is what one or more operations of a path answer with one status:
// the operations that answer alike are shown once.
type answer struct {
	ops    string // CLI verbs: "read", "write"
	status int
	fields map[string]*framework.FieldSchema
}

// answersOf are the answers a path's operations declare (their Responses,
// which Vault's OpenAPI document shows), in the order of operations().
func answersOf(p *framework.Path) []answer {
	var out []answer
	for _, op := range operationOrder {
		h, ok := p.Operations[op]
		if !ok {
			continue
		}
		responses := h.Properties().Responses
		statuses := make([]int, 0, len(responses))
		for st := range responses {
			statuses = append(statuses, st)
		}
		sort.Ints(statuses)
		for _, st := range statuses {
			if len(responses[st]) == 0 {
				continue
			}
			out = addAnswer(out, answer{ops: cliVerbs[op], status: st, fields: responses[st][0].Fields})
		}
	}
	return out
}

// addAnswer adds a to answers, or its verb to an equal answer's.
func addAnswer(answers []answer, a answer) []answer {
	for i, o := range answers {
		if o.status == a.status && reflect.DeepEqual(o.fields, a.fields) {
			if !slices.Contains(strings.Split(o.ops, ", "), a.ops) {
				answers[i].ops += ", " + a.ops
			}
			return answers
		}
	}
	return append(answers, a)
}

// writeAnswers writes the fields each operation answers with.
func writeAnswers(b *strings.Builder, p *framework.Path) {
	for _, a := range answersOf(p) {
		if len(a.fields) == 0 {
			fmt.Fprintf(b, "\n%s answers %d %s with no data.\n", upperFirst(a.ops), a.status, http.StatusText(a.status))
			continue
		}
		fmt.Fprintf(b, "\n%s answers %d %s with:\n\n", upperFirst(a.ops), a.status, http.StatusText(a.status))
		rows := make([][]string, 0, len(a.fields))
		for _, name := range sortedKeys(a.fields) {
			rows = append(rows, []string{code(name), fieldTypes[a.fields[name].Type], cell(a.fields[name].Description)})
		}
		table(b, []string{"Field", "Type", "Description"}, rows)
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
