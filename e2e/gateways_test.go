package e2e

import (
	"bufio"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"go.yaml.in/yaml/v3"

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

// rotationHeaders are what the sidecar tells a rotated API key's client:
// its successor's key_id and when the old key stops working. For clients
// only: a service must never get a client's copies.
var rotationHeaders = []string{"X-Keybroker-Key-Replaced-By", "X-Keybroker-Key-Expires"}

// cgiSpellings is name in every mix of '-' and '_' at its separators, the
// mixes in turn as written, lower case and upper case: every name a
// CGI-style server (PHP, WSGI, Rack) reads as the same HTTP_<NAME>
// variable, as a client may send it.
func cgiSpellings(name string) []string {
	var seps []int
	for i := 0; i < len(name); i++ {
		if name[i] == '-' || name[i] == '_' {
			seps = append(seps, i)
		}
	}
	var out []string
	for mask := 0; mask < 1<<len(seps); mask++ {
		b := []byte(name)
		for j, i := range seps {
			b[i] = '-'
			if mask&(1<<j) != 0 {
				b[i] = '_'
			}
		}
		switch s := string(b); mask % 3 {
		case 0:
			out = append(out, s)
		case 1:
			out = append(out, strings.ToLower(s))
		default:
			out = append(out, strings.ToUpper(s))
		}
	}
	return out
}

// forgedIdentity is a client's attempt to pass for someone, in raw header
// names (send it with rawGet, which keeps them as written): every identity
// header the sidecar defines, X-Keybroker-Reason and the rotation headers,
// each in every spelling cgiSpellings gives, all "forged"; the credential
// in X-API-Key, and in X-API-Key's spellings with '_' (a spelling with
// '-' only would be the same header twice, which the sidecar refuses).
func forgedIdentity(key string) map[string]string {
	h := map[string]string{"X-API-Key": key}
	for _, s := range cgiSpellings("X-API-Key") {
		if strings.Contains(s, "_") {
			h[s] = key
		}
	}
	names := append([]string{contract.HeaderReason}, contract.IdentityHeaders()...)
	for _, name := range append(names, rotationHeaders...) {
		for _, s := range cgiSpellings(name) {
			h[s] = "forged"
		}
	}
	return h
}

// rotateKey rotates an API key of role with data (grace, ...). The one
// place the e2e gateway tests spell the rotate path.
func rotateKey(t *testing.T, c *api.Client, role, keyID string, data map[string]interface{}) *api.Secret {
	t.Helper()
	return write(t, c, "keybroker/keys/"+role+"/id/"+keyID+"/rotate", data)
}

// rotationThroughGateway rotates key (of role svc) with a grace and checks,
// through the gateway at base in front of e, that the old key's client is
// told its successor and the end of its grace, whatever rotation headers
// it forged itself; that the successor's client is told nothing; and that
// the service never gets a rotation header, forged or the sidecar's.
func rotationThroughGateway(t *testing.T, v *vaultserver.Server, e *sidecarEnv, base, where, key, keyID string) {
	t.Helper()
	rot := rotateKey(t, v.Client, "svc", keyID, map[string]interface{}{"grace": "1h"})
	newKey, newID := rot.Data["key"].(string), rot.Data["key_id"].(string)
	var r result
	eventually(t, 3*time.Second, where+": the old key's client was never told its successor", func() bool {
		r = rawGet(t, base, "GET", "/read/items", forgedIdentity(key))
		return r.header.Get("X-Keybroker-Key-Replaced-By") == newID
	})
	if r.status != 200 || r.header.Get("X-Keybroker-Key-Expires") != rot.Data["grace_ends"] ||
		len(r.header.Values("X-Keybroker-Key-Replaced-By")) != 1 || len(r.header.Values("X-Keybroker-Key-Expires")) != 1 {
		t.Fatalf("%s: old key during its grace: %d, Replaced-By %q, Expires %q, want 200, %s, %v",
			where, r.status, r.header.Values("X-Keybroker-Key-Replaced-By"), r.header.Values("X-Keybroker-Key-Expires"), newID, rot.Data["grace_ends"])
	}
	noRotationHeaders(t, where+", rotated key", e.seen())
	noForgedIdentity(t, where+", rotated key", e.seen(), key)
	r = rawGet(t, base, "GET", "/read/items", forgedIdentity(newKey))
	if r.status != 200 || r.header.Get("X-Keybroker-Key-Replaced-By") != "" || r.header.Get("X-Keybroker-Key-Expires") != "" {
		t.Fatalf("%s: successor: %d %v", where, r.status, r.header)
	}
	if e.seen().Get("X-Keybroker-Key-Id") != newID {
		t.Fatalf("%s: the service saw %v for the successor", where, e.seen())
	}
	noRotationHeaders(t, where+", successor", e.seen())
	noForgedIdentity(t, where+", successor", e.seen(), newKey)
}

// noRotationHeaders fails when a header CGI reads as a rotation header
// reached the service.
func noRotationHeaders(t *testing.T, where string, seen http.Header) {
	t.Helper()
	noneNamed(t, where, seen, rotationHeaders)
}

// noneNamed fails when a header CGI reads as one of names reached the
// service.
func noneNamed(t *testing.T, where string, seen http.Header, names []string) {
	t.Helper()
	for k := range seen {
		for _, name := range names {
			if cgiName(k) == cgiName(name) {
				t.Fatalf("%s: the service got %s: %q", where, k, seen[k])
			}
		}
	}
}

// routingOverrideHeaders name another path or method than the request's
// own (the sidecar's default strip_headers): a framework that honours one
// (IIS URL Rewrite, Symfony, Express's method-override, ...) serves a route
// other than the one the sidecar checked. Behind nginx, Caddy and Traefik
// the gateway must drop them.
var routingOverrideHeaders = contract.RoutingOverrides()

// withForgedRoute adds to h (raw header names, for rawGet) a client's
// attempt to have the service serve another route than the one checked:
// every routing override in every spelling cgiSpellings gives, each as
// written, in lower case and in upper case (a gateway that deletes one
// name per mix of '-' and '_' must take every case of it).
func withForgedRoute(h map[string]string) map[string]string {
	for _, name := range routingOverrideHeaders {
		v := "/read/admin"
		if strings.Contains(strings.ToLower(name), "method") {
			v = "DELETE"
		}
		for _, s := range cgiSpellings(name) {
			h[s], h[strings.ToLower(s)], h[strings.ToUpper(s)] = v, v, v
		}
	}
	return h
}

// noRoutingOverrides fails when a header CGI reads as a routing override
// reached the service.
func noRoutingOverrides(t *testing.T, where string, seen http.Header) {
	t.Helper()
	noneNamed(t, where, seen, routingOverrideHeaders)
}

// cgiName is the CGI variable a header name becomes.
func cgiName(name string) string {
	return "HTTP_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// noForgedIdentity fails when anything of forgedIdentity reached the
// service: a forged value or the credential, under any name, or an
// X-Keybroker-* header the sidecar did not set, in any spelling.
func noForgedIdentity(t *testing.T, where string, seen http.Header, key string) {
	t.Helper()
	for k, vs := range seen {
		for _, v := range vs {
			if v == "forged" || strings.Contains(v, key) {
				t.Fatalf("%s: the service got %s: %q", where, k, v)
			}
		}
		if strings.HasPrefix(cgiName(k), "HTTP_X_KEYBROKER_") && !slices.Contains(contract.IdentityHeaders(), k) {
			t.Fatalf("%s: the service got %s: %q", where, k, vs)
		}
	}
}

// No Traefik here to run: examples/traefik.yml is read as Traefik reads it.
// Its authResponseHeadersRegex (Go regexp, as in Traefik) must take every
// spelling of every header the sidecar defines from the client (Traefik
// matches it against the canonical names Go's server stores), and the
// headers middlewares of the router must delete every spelling of the
// credential and of every routing override. Traefik deletes a
// customRequestHeaders entry set to "" with Go's Header.Del, which
// canonicalises the name as Go's server canonicalised the client's: an
// entry stands for every case of its mix of '-' and '_', no more.
func TestTraefikExampleCoversEverySpelling(t *testing.T) {
	var conf struct {
		HTTP struct {
			Middlewares map[string]struct {
				ForwardAuth struct {
					AuthResponseHeadersRegex string `yaml:"authResponseHeadersRegex"`
				} `yaml:"forwardAuth"`
				Headers struct {
					CustomRequestHeaders map[string]string `yaml:"customRequestHeaders"`
				} `yaml:"headers"`
			} `yaml:"middlewares"`
			Routers map[string]struct {
				Middlewares []string `yaml:"middlewares"`
			} `yaml:"routers"`
		} `yaml:"http"`
	}
	if err := yaml.Unmarshal([]byte(readExample(t, "traefik.yml")), &conf); err != nil {
		t.Fatal(err)
	}
	re, err := regexp.Compile(conf.HTTP.Middlewares["keybroker"].ForwardAuth.AuthResponseHeadersRegex)
	if err != nil || re.String() == "" {
		t.Fatalf("keybroker middleware's authResponseHeadersRegex: %q %v", re, err)
	}
	names := append(append([]string{contract.HeaderReason}, contract.IdentityHeaders()...), rotationHeaders...)
	for _, name := range names {
		for _, s := range cgiSpellings(name) {
			if !re.MatchString(http.CanonicalHeaderKey(s)) {
				t.Errorf("the client's %s (%s) reaches the service behind Traefik", s, http.CanonicalHeaderKey(s))
			}
		}
	}
	chain := conf.HTTP.Routers["service"].Middlewares
	if !slices.Contains(chain, "keybroker") {
		t.Fatalf("the service router does not ask the sidecar: middlewares %q", chain)
	}
	// What the router's headers middlewares delete, and the credential's
	// only after the sidecar has read it.
	deleted := map[string]bool{}
	afterAuth := map[string]bool{}
	auth := false
	for _, m := range chain {
		auth = auth || m == "keybroker"
		for k, v := range conf.HTTP.Middlewares[m].Headers.CustomRequestHeaders {
			if v == "" {
				deleted[http.CanonicalHeaderKey(k)] = true
				afterAuth[http.CanonicalHeaderKey(k)] = auth
			}
		}
	}
	for _, name := range []string{"Authorization", "DPoP", "X-API-Key"} {
		for _, s := range cgiSpellings(name) {
			if !deleted[http.CanonicalHeaderKey(s)] {
				t.Errorf("the service router leaves the credential's %s to the service", s)
			} else if !afterAuth[http.CanonicalHeaderKey(s)] {
				t.Errorf("the service router deletes the credential's %s before the sidecar reads it", s)
			}
		}
	}
	for _, name := range routingOverrideHeaders {
		for _, s := range cgiSpellings(name) {
			if !deleted[http.CanonicalHeaderKey(s)] {
				t.Errorf("the service router leaves the client's %s (%s) to the service", s, http.CanonicalHeaderKey(s))
			}
		}
	}
}
