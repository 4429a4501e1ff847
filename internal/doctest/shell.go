package doctest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Session is one bash that runs a section's blocks in order, so a variable a
// block exports is there for the next, as in a reader's terminal. Each chunk
// is written to a file and sourced with stdin from /dev/null: a command that
// reads stdin gets EOF instead of swallowing the commands after it.
type Session struct {
	dir    string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	marker string
	n      int

	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{} // closed when bash's output ends
	wake chan struct{}
}

// ErrShellExited is returned when the shell ended before the chunk did (a
// Script block's failing command under set -e ends it).
var ErrShellExited = errors.New("the shell exited")

// Start starts bash in dir with env, stderr merged into stdout as a terminal
// shows them.
func Start(dir string, env []string) (*Session, error) {
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	s := &Session{dir: dir, marker: "__doctest_" + hex.EncodeToString(nonce), done: make(chan struct{}), wake: make(chan struct{}, 1)}
	s.cmd = exec.Command("bash", "--noprofile", "--norc")
	s.cmd.Dir, s.cmd.Env = dir, env
	// Its own process group, so Close ends what a block left running.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("starting bash: %w", err)
	}
	pw.Close()
	go s.read(pr)
	return s, nil
}

func (s *Session) read(r io.ReadCloser) {
	defer close(s.done)
	defer r.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			s.mu.Lock()
			s.out.Write(buf[:n])
			s.mu.Unlock()
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}
		if err != nil {
			return
		}
	}
}

// Run sources chunk and returns what it printed and its exit status. With
// errexit the chunk runs under `set -e`: a failing command ends the shell,
// and Run returns ErrShellExited with the output so far.
func (s *Session) Run(chunk string, errexit bool, timeout time.Duration) (string, int, error) {
	s.n++
	file := filepath.Join(s.dir, fmt.Sprintf(".doctest-%d.sh", s.n))
	if errexit {
		chunk = "set -e\n" + chunk + "\nset +e\n"
	}
	if err := os.WriteFile(file, []byte(chunk), 0o600); err != nil {
		return "", 0, err
	}
	defer os.Remove(file)
	end := "\n" + s.marker + " "
	line := fmt.Sprintf("source %s </dev/null; printf '\\n%s %%d\\n' $?\n", shellQuote(file), s.marker)
	if _, err := io.WriteString(s.stdin, line); err != nil {
		return s.take(len(s.peek())), 0, ErrShellExited
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		got := s.peek()
		if k := strings.Index(got, end); k >= 0 {
			if rest := got[k+len(end):]; strings.Contains(rest, "\n") {
				code, err := strconv.Atoi(strings.TrimSpace(rest[:strings.Index(rest, "\n")]))
				out := s.take(k + len(end) + strings.Index(rest, "\n") + 1)
				return out[:k], code, err
			}
		}
		select {
		case <-s.wake:
		case <-s.done:
			if !strings.Contains(s.peek(), end) {
				return s.take(len(s.peek())), 0, ErrShellExited
			}
		case <-deadline.C:
			return s.take(len(s.peek())), 0, fmt.Errorf("still running after %s", timeout)
		}
	}
}

func (s *Session) peek() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// take removes the first n bytes of the output and returns them.
func (s *Session) take(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := string(s.out.Next(n))
	return b
}

// Close ends the shell and everything it started.
func (s *Session) Close() {
	s.stdin.Close()
	if s.cmd.Process != nil {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	}
	_ = s.cmd.Wait()
	<-s.done
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
