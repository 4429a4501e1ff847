package e2e

import (
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// findNginx looks on PATH and where Debian installs it.
func findNginx() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
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

// A real nginx with auth_request to the sidecar, configured from the shipped
// examples/nginx.conf with only its ports changed.
func TestNginxAuthRequest(t *testing.T) {
	nginx := findNginx()
	if nginx == "" {
		t.Skip("nginx is not installed (apt-get install nginx-light); skipping the nginx auth_request test")
	}
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	e := startSidecar(t, v, nil)

	root, err := vaultserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(root, "examples", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	upstream, _ := url.Parse(e.upstream.URL)
	auth, _ := url.Parse(e.auth)
	port := freePort(t)
	conf := strings.NewReplacer(
		"listen 8088;", "listen 127.0.0.1:"+port+";",
		"server 127.0.0.1:9000;", "server "+upstream.Host+";",
		"http://127.0.0.1:8081/verify", "http://"+auth.Host+"/verify",
	).Replace(string(example))
	if conf == string(example) {
		t.Fatal("examples/nginx.conf no longer has the ports this test rewrites")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginx, "-p", dir, "-c", confPath, "-g", "daemon off; pid "+filepath.Join(dir, "nginx.pid")+"; error_log "+filepath.Join(dir, "logs", "error.log")+";")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := os.Create(filepath.Join(dir, "nginx.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGQUIT)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "logs", "error.log"))
			t.Logf("nginx error log:\n%s", b)
		}
	})
	base := "http://127.0.0.1:" + port
	eventually(t, 10*time.Second, "nginx did not start", func() bool {
		resp, err := http.Get(base + "/public")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})

	minted := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "through nginx"})
	key := minted.Data["key"].(string)
	r := call(t, base, "GET", "/read/items", map[string]string{"X-API-Key": key, "X-Keybroker-Role": "forged"}, "")
	if r.status != http.StatusOK || r.body != "upstream ok" {
		t.Fatalf("allowed request through nginx: %d %s", r.status, r.body)
	}
	seen := e.seen()
	if seen.Get("X-Keybroker-Role") != "svc" || seen.Get("X-Keybroker-Subject") != "key:"+minted.Data["key_id"].(string) || seen.Get("X-Api-Key") != "" {
		t.Fatalf("upstream behind nginx saw %v", seen)
	}
	for _, tc := range []struct {
		name, method, path string
		headers            map[string]string
		status             int
	}{
		{"no credential", "GET", "/read", nil, 401},
		{"insufficient scope", "POST", "/write", map[string]string{"X-API-Key": key}, 403},
		{"credential in query (400 mapped to 403)", "GET", "/read?access_token=x", nil, 403},
		{"no route", "GET", "/elsewhere", map[string]string{"X-API-Key": key}, 403},
	} {
		if r := call(t, base, tc.method, tc.path, tc.headers, ""); r.status != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, r.status, tc.status)
		}
	}

	// A budget of 2 at the route's cost of 1: the third request is denied
	// with 403 (nginx passes no 429), the reason and Retry-After.
	write(t, v.Client, "keybroker/roles/metered", map[string]interface{}{"scopes": "read", "budget": 2})
	metered := write(t, v.Client, "keybroker/keys/metered", map[string]interface{}{"name": "metered"}).Data["key"].(string)
	for i, want := range []string{"1", "0"} {
		r := call(t, base, "GET", "/read", map[string]string{"X-API-Key": metered}, "")
		if r.status != 200 || r.header.Get("X-Budget-Remaining") != want {
			t.Fatalf("metered request %d: %d, X-Budget-Remaining %q, want 200 and %s", i, r.status, r.header.Get("X-Budget-Remaining"), want)
		}
	}
	r = call(t, base, "GET", "/read", map[string]string{"X-API-Key": metered}, "")
	if r.status != 403 || r.header.Get("X-Keybroker-Reason") != "budget_exhausted" || r.header.Get("Retry-After") == "" {
		t.Fatalf("exhausted through nginx: %d, reason %q, Retry-After %q", r.status, r.header.Get("X-Keybroker-Reason"), r.header.Get("Retry-After"))
	}
}
