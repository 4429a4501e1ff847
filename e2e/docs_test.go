package e2e

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/doctest"
	"github.com/keybroker/keybroker/internal/vaultserver"
)

// TestDocs runs every command block of README.md and docs/ (see package
// doctest for how blocks are read) against the stack a reader has: the real
// `make dev` program, on free ports, with the binaries `make build` makes.
// Each page gets its own stack; each "## " section its own shell and
// directory, so sections stand alone.
func TestDocs(t *testing.T) {
	root, err := vaultserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	pages := docPages(t, root)
	for _, path := range pages {
		rel, _ := filepath.Rel(root, path)
		t.Run(rel, func(t *testing.T) {
			t.Parallel()
			text, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			page, err := doctest.Parse(rel, string(text))
			if err != nil {
				t.Fatal(err)
			}
			if !runs(page) {
				return
			}
			stack := startDevStack(t, root)
			for _, s := range page.Sections {
				if !sectionRuns(s) {
					continue
				}
				t.Run(cmpOrTitle(s.Title), func(t *testing.T) { runSection(t, rel, root, stack, s) })
			}
		})
	}
}

func cmpOrTitle(title string) string {
	if title == "" {
		return "top"
	}
	return title
}

// docPages is README.md and every page under docs/.
func docPages(t *testing.T, root string) []string {
	pages := []string{filepath.Join(root, "README.md")}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			pages = append(pages, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pages
}

func runs(p *doctest.Page) bool {
	for _, s := range p.Sections {
		if sectionRuns(s) {
			return true
		}
	}
	return false
}

func sectionRuns(s doctest.Section) bool {
	for _, b := range s.Blocks {
		if b.Kind != doctest.Shown && b.SkipReason == "" {
			return true
		}
	}
	return false
}

// devStack is one `make dev`: its directory (.dev), and the replacers that
// turn the addresses the docs show (make dev's defaults) into the ones it
// listens on, and back in what commands print.
type devStack struct {
	dir        string
	bin        string
	toReal     *strings.Replacer
	toDocument *strings.Replacer
}

var (
	docBinOnce sync.Once
	docBinDir  string
	docBinErr  error
)

// docBinaries builds what `make build` builds, and make dev's program, once.
func docBinaries(t *testing.T, root string) string {
	docBinOnce.Do(func() {
		docBinDir, docBinErr = os.MkdirTemp("", "keybroker-doc-bin-")
		if docBinErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X github.com/keybroker/keybroker/internal/version.Version="+vaultserver.TestPluginVersion,
			"-o", docBinDir+"/", "./cmd/...", "./scripts/dev")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			docBinErr = fmt.Errorf("building the binaries: %w\n%s", err, out)
			return
		}
		vault, err := vaultserver.FindVault()
		if err == nil {
			vault, err = filepath.Abs(vault)
		}
		if err != nil {
			docBinErr = err
			return
		}
		docBinErr = os.Symlink(vault, filepath.Join(docBinDir, "vault"))
	})
	if docBinErr != nil {
		t.Fatal(docBinErr)
	}
	return docBinDir
}

// startDevStack runs make dev's program on free ports until the test ends.
func startDevStack(t *testing.T, root string) *devStack {
	bin := docBinaries(t, root)
	dir := filepath.Join(t.TempDir(), ".dev")
	defaults := []string{"127.0.0.1:8200", "127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:9000"}
	real := devPorts(t)
	var toReal, back []string
	for i, d := range defaults {
		toReal = append(toReal, d, real[i])
		back = append(back, real[i], d)
	}
	cmd := exec.Command(filepath.Join(bin, "dev"), "-addr", real[0], "-proxy", real[1], "-auth", real[2], "-service", real[3],
		"-dir", dir, "-plugin", filepath.Join(bin, vaultserver.PluginName), "-sidecar", filepath.Join(bin, "keybroker-sidecar"),
		"-version", vaultserver.TestPluginVersion)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "VAULT_BIN="+filepath.Join(bin, "vault"))
	out, err := os.Create(filepath.Join(t.TempDir(), "make-dev.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// make dev's own Ctrl-C: it stops the sidecar and Vault.
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			for _, f := range []string{out.Name(), filepath.Join(dir, "sidecar.log")} {
				if b, err := os.ReadFile(f); err == nil {
					t.Logf("--- %s (last 3000 bytes):\n%s", filepath.Base(f), tail(b, 3000))
				}
			}
		}
	})
	env := filepath.Join(dir, "env")
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, err := os.Stat(env); err == nil {
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("make dev exited:\n%s", b)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("make dev was not ready after 3 minutes")
		}
	}
	return &devStack{dir: dir, bin: bin, toReal: strings.NewReplacer(toReal...), toDocument: strings.NewReplacer(back...)}
}

// devPorts picks make dev's four addresses on free ports. Vault also
// listens on its address's port plus one (its cluster port), so that one
// must be free too, and none of the four may be another's cluster port.
func devPorts(t *testing.T) []string {
	for attempt := 0; attempt < 50; attempt++ {
		var ls []net.Listener
		var ports []int
		for i := 0; i < 4; i++ {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ls = append(ls, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		cluster, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0]+1))
		for _, l := range ls {
			l.Close()
		}
		if err != nil {
			continue
		}
		cluster.Close()
		addrs := make([]string, len(ports))
		for i, p := range ports {
			addrs[i] = fmt.Sprintf("127.0.0.1:%d", p)
		}
		return addrs
	}
	t.Fatal("no four free ports with Vault's cluster port free beside them")
	return nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// sectionDir is a reader's checkout: the repo's top-level entries, bin/
// with the built binaries, and .dev/ of this page's stack; what a section
// writes stays in its own directory.
func sectionDir(t *testing.T, root string, stack *devStack) string {
	dir := t.TempDir()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch e.Name() {
		case "bin", ".dev", ".git", ".cluster":
			continue
		}
		if err := os.Symlink(filepath.Join(root, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][2]string{{stack.bin, "bin"}, {stack.dir, ".dev"}} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var goEnv = sync.OnceValue(func() []string {
	// A reader's Go caches, so a `go run` in a page does not start cold
	// under the section's own HOME.
	keys := []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOPROXY", "GOTOOLCHAIN"}
	out, err := exec.Command("go", append([]string{"env"}, keys...)...).Output()
	if err != nil {
		return nil
	}
	var env []string
	for i, v := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if i < len(keys) && v != "" {
			env = append(env, keys[i]+"="+v)
		}
	}
	return env
})

func runSection(t *testing.T, page, root string, stack *devStack, s doctest.Section) {
	dir := sectionDir(t, root, stack)
	env := []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH"), "TERM=dumb", "LANG=C.UTF-8"}
	env = append(env, goEnv()...)
	sh, err := doctest.Start(dir, env)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	// What make dev tells a reader to paste (or source) first.
	if out, code, err := sh.Run(". .dev/env", false, time.Minute); err != nil || code != 0 {
		t.Fatalf("sourcing .dev/env: %d %v\n%s", code, err, out)
	}
	const timeout = 2 * time.Minute
	for _, b := range s.Blocks {
		if b.SkipReason != "" {
			continue
		}
		switch b.Kind {
		case doctest.Script:
			out, code, err := sh.Run(stack.toReal.Replace(b.Script), true, timeout)
			if err != nil || code != 0 {
				t.Fatalf("%s:%d: the block failed (exit %d, %v); its output:\n%s", page, b.Line, code, err, stack.toDocument.Replace(out))
			}
		case doctest.Console:
			for _, c := range b.Commands {
				out, code, err := sh.Run(stack.toReal.Replace(c.Text), false, timeout)
				got := strings.Split(stack.toDocument.Replace(out), "\n")
				switch {
				case err != nil:
					t.Fatalf("%s:%d: $ %s\n%v; output:\n%s", page, c.Line, c.Text, err, strings.Join(got, "\n"))
				case c.WantFail && code == 0:
					t.Fatalf("%s:%d: $ %s\nsucceeded, but the page says it fails; output:\n%s", page, c.Line, c.Text, strings.Join(got, "\n"))
				case !c.WantFail && code != 0:
					t.Fatalf("%s:%d: $ %s\nexited %d; output:\n%s", page, c.Line, c.Text, code, strings.Join(got, "\n"))
				case !doctest.Match(c.Want, got):
					t.Fatalf("%s:%d: $ %s\nthe page shows:\n%s\nit printed:\n%s", page, c.Line, c.Text, strings.Join(c.Want, "\n"), strings.Join(got, "\n"))
				}
			}
		}
	}
}
