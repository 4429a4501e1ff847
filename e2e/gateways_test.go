package e2e

import (
	"bufio"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/vaultserver"
)

// readExample returns a file of examples/, as shipped.
func readExample(t *testing.T, name string) string {
	t.Helper()
	root, err := vaultserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// findBinary looks on PATH and where Debian installs it.
func findBinary(name string, also ...string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range also {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// startProcess runs a gateway binary in its own process group until the
// test ends, and waits until probe answers on base. logs are printed when
// the test fails.
func startProcess(t *testing.T, name string, dir string, env []string, base, probe string, logs []string, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	outPath := filepath.Join(dir, name+".out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		out.Close()
		if t.Failed() {
			for _, p := range append([]string{outPath}, logs...) {
				b, _ := os.ReadFile(p)
				t.Logf("%s %s:\n%s", name, filepath.Base(p), b)
			}
		}
	})
	eventually(t, 15*time.Second, name+" did not start", func() bool {
		resp, err := http.Get(base + probe)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
}

// startNginx runs nginx with conf (a whole nginx.conf) on loopback and
// returns its directory; the test is skipped when nginx is not installed.
func startNginx(t *testing.T, conf, base, probe string) {
	t.Helper()
	nginx := findBinary("nginx", "/usr/sbin/nginx")
	if nginx == "" {
		t.Skip("nginx is not installed (apt-get install nginx-light); skipping")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	errLog := filepath.Join(dir, "logs", "error.log")
	startProcess(t, "nginx", dir, nil, base, probe, []string{errLog},
		nginx, "-p", dir, "-c", confPath, "-g", "daemon off; pid "+filepath.Join(dir, "nginx.pid")+"; error_log "+errLog+";")
}

// rawGet sends a request line exactly as given (no client-side cleaning or
// escaping) with headers, and returns the status and body.
func rawGet(t *testing.T, base, method, target string, headers map[string]string) result {
	t.Helper()
	host := strings.TrimPrefix(base, "http://")
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n")
	for k, v := range headers {
		b.WriteString(k + ": " + v + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		body.WriteString(string(buf[:n]))
		if err != nil {
			break
		}
	}
	return result{resp.StatusCode, resp.Header, body.String()}
}

// forgedIdentity is a client's attempt to pass for someone: every identity
// header the sidecar defines and X-Keybroker-Reason, and
// the underscore spellings CGI-style services read as the same names, each
// "forged"; and the credential in X-API-Key (and its underscore spelling).
func forgedIdentity(key string) map[string]string {
	h := map[string]string{"X-API-Key": key, "X_API_Key": key, "X-Keybroker-Reason": "forged", "X_Keybroker_Role": "forged", "X_Keybroker_Subject": "forged"}
	for _, name := range contract.IdentityHeaders {
		h[name] = "forged"
	}
	return h
}

// noForgedIdentity fails when anything of forgedIdentity reached the
// service: a forged value or the credential, under any name.
func noForgedIdentity(t *testing.T, where string, seen http.Header, key string) {
	t.Helper()
	for k, vs := range seen {
		for _, v := range vs {
			if v == "forged" || strings.Contains(v, key) {
				t.Fatalf("%s: the service got %s: %q", where, k, v)
			}
		}
	}
}
