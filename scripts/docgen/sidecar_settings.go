package main

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// setting is one setting of the sidecar's HCL file, as its config struct
// field and doc comment say.
type setting struct {
	name     string // as written in HCL
	field    string // Go: Config.Leeway, for messages
	typ      string // string, duration, bool, number, list(string), block
	def      string // Default: line, "" when there is none
	required string // yes, no, or the condition of a Required: line
	desc     string // the rest of the doc comment, one line
}

// configBlock is the settings of one HCL block (Config is the file's top
// level) and how a block of it is opened.
type configBlock struct {
	goType   string // Config, VaultConfig, RouteConfig
	open     string // vault, route "<path_prefix>"; "" at the top level
	settings []setting
}

// readSidecarConfig reads the config structs of the sidecar package in
// dir, starting from Config and following its blocks. Every field must
// have an hcl tag and a doc comment: each problem is returned, all at once.
func readSidecarConfig(dir string) ([]*configBlock, error) {
	structs, err := parseStructs(dir)
	if err != nil {
		return nil, err
	}
	r := configReader{structs: structs}
	r.block("Config", "")
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	return r.blocks, nil
}

// parseStructs are the struct types declared in the non-test Go files of
// dir, by name, with the file each is in (for messages).
func parseStructs(dir string) (map[string]declaredStruct, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	structs := map[string]declaredStruct{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		af, err := parser.ParseFile(fset, f, src, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		ast.Inspect(af, func(n ast.Node) bool {
			if ts, ok := n.(*ast.TypeSpec); ok {
				if st, ok := ts.Type.(*ast.StructType); ok {
					structs[ts.Name.Name] = declaredStruct{st, filepath.Base(f)}
				}
			}
			return true
		})
	}
	return structs, nil
}

type declaredStruct struct {
	*ast.StructType
	file string
}

// configReader walks the config structs, gathering blocks and problems.
type configReader struct {
	structs map[string]declaredStruct
	blocks  []*configBlock
	errs    []error
}

func (r *configReader) errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf(format, args...))
}

// block reads struct goType as the block opened by open, then the blocks
// its fields name.
func (r *configReader) block(goType, open string) {
	st, ok := r.structs[goType]
	if !ok {
		r.errorf("no struct %s in the sidecar package", goType)
		return
	}
	b := &configBlock{goType: goType, open: open}
	r.blocks = append(r.blocks, b)
	var nested [][2]string
	for _, f := range st.Fields.List {
		for _, n := range f.Names {
			s, inner, ok := r.field(st.file, goType, n.Name, f)
			if !ok {
				continue
			}
			b.settings = append(b.settings, s)
			if inner != "" {
				nested = append(nested, [2]string{inner, s.name})
			}
		}
	}
	for _, n := range nested {
		r.block(n[0], r.opening(n[0], n[1]))
	}
}

// opening is how a block of goType named name is opened in HCL: its name,
// then its label if it has one.
func (r *configReader) opening(goType, name string) string {
	for _, f := range r.structs[goType].Fields.List {
		if tag, ok := hclTag(f); ok && strings.HasSuffix(tag, ",label") {
			return fmt.Sprintf("%s %q", name, "<"+strings.TrimSuffix(tag, ",label")+">")
		}
	}
	return name
}

// field reads one struct field. inner is the struct type of a block.
func (r *configReader) field(file, goType, name string, f *ast.Field) (s setting, inner string, ok bool) {
	where := fmt.Sprintf("sidecar/%s: %s.%s", file, goType, name)
	tag, ok := hclTag(f)
	if !ok {
		r.errorf("%s has no hcl tag", where)
		return s, "", false
	}
	hclName, kind, _ := strings.Cut(tag, ",")
	s = setting{name: hclName, field: goType + "." + name}
	s.typ, inner = hclType(f.Type)
	switch {
	case kind == "block" && inner != "":
		s.typ = "block"
	case inner != "" || s.typ == "":
		r.errorf("%s (%s): docgen does not know how to name its Go type in HCL", where, hclName)
		inner = ""
	}
	if f.Doc == nil || strings.TrimSpace(f.Doc.Text()) == "" {
		r.errorf("%s (%s) has no doc comment: write one, it is the setting's description in docs/reference/sidecar-config.md", where, hclName)
		return s, inner, true
	}
	s.desc, s.def, s.required = splitDoc(f.Doc.Text())
	if s.desc == "" {
		r.errorf("%s (%s): its doc comment has a Default: or Required: line but no description", where, hclName)
	}
	switch {
	case kind == "":
		s.required = "yes"
	case kind == "label":
		s.required = "yes (the block's label)"
	case s.required == "":
		s.required = "no"
	}
	return s, inner, true
}

func hclTag(f *ast.Field) (string, bool) {
	if f.Tag == nil {
		return "", false
	}
	raw, err := strconv.Unquote(f.Tag.Value)
	if err != nil {
		return "", false
	}
	return reflect.StructTag(raw).Lookup("hcl")
}

// hclType names a field's Go type as the HCL value it takes; for a
// struct (a block) it also returns the struct's name.
func hclType(e ast.Expr) (typ, structName string) {
	switch t := e.(type) {
	case *ast.StarExpr:
		return hclType(t.X)
	case *ast.ArrayType:
		inner, s := hclType(t.Elt)
		if s != "" {
			return "", s
		}
		if inner == "" {
			return "", ""
		}
		return "list(" + inner + ")", ""
	case *ast.Ident:
		switch t.Name {
		case "string":
			return "string", ""
		case "Duration":
			return "duration", ""
		case "bool":
			return "bool", ""
		case "int", "int64", "float64":
			return "number", ""
		}
		return "", t.Name // a block's struct, or a type docgen does not know
	}
	return "", ""
}

// splitDoc splits a field's doc comment into its description and its
// Default: and Required: lines (each may continue on the next lines),
// each joined into one line, without the sentence's final period.
func splitDoc(doc string) (desc, def, required string) {
	parts := map[string]*[]string{}
	var d, df, rq []string
	parts[""], parts["Default:"], parts["Required:"] = &d, &df, &rq
	cur := parts[""]
	for _, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		for _, key := range []string{"Default:", "Required:"} {
			if rest, ok := strings.CutPrefix(line, key); ok {
				cur, line = parts[key], rest
			}
		}
		*cur = append(*cur, line)
	}
	join := func(lines []string) string { return strings.TrimSuffix(oneLine(strings.Join(lines, " ")), ".") }
	return oneLine(strings.Join(d, " ")), join(df), join(rq)
}

// literalDefault says whether a default is an HCL value (a string, a
// number, a bool or a list of them) rather than words.
func literalDefault(def string) bool {
	if def == "" {
		return false
	}
	expr, diags := hclsyntax.ParseExpression([]byte(def), "default", hcl.InitialPos)
	if diags.HasErrors() {
		return false
	}
	_, diags = expr.Value(nil)
	return !diags.HasErrors()
}
