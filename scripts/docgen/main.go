// Command docgen is `make docs`: it writes the reference pages under
// docs/reference/ from the code they describe, the sidecar's settings from
// the doc comments of its config structs and the plugin's paths from their
// framework.Path definitions. Its test regenerates them in memory and fails
// when a committed page differs, so a page cannot go stale.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	root := flag.String("root", "", "the repository's root (default: the directory of go.mod above the working directory)")
	flag.Parse()
	if err := run(*root); err != nil {
		fmt.Fprintln(os.Stderr, "docgen:", err)
		os.Exit(1)
	}
}

func run(root string) error {
	if root == "" {
		var err error
		if root, err = repoRoot(); err != nil {
			return err
		}
	}
	for _, p := range pages {
		b, err := p.render(root)
		if err != nil {
			return fmt.Errorf("%s: %w", p.file, err)
		}
		path := filepath.Join(root, p.file)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
		fmt.Println("wrote", p.file)
	}
	return nil
}

// page is one generated file, named relative to the repository's root.
type page struct {
	file   string
	render func(root string) ([]byte, error)
}

var pages = []page{
	{"docs/reference/sidecar-config.md", sidecarConfigPage},
	{"docs/reference/plugin-paths.md", pluginPathsPage},
}

// repoRoot is the nearest directory at or above the working directory
// that holds go.mod: make docs runs at the root, go test in scripts/docgen.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod at or above the working directory")
		}
		dir = parent
	}
}
