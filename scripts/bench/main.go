// Command bench is `make bench`: it starts the real stack on loopback (Vault
// with the plugin, keybroker-sidecar processes, a trivial upstream), drives
// every throughput row with wrk, and prints one Markdown table in which every
// figure comes from this run on this machine.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/internal/vaultserver"
)

type options struct {
	plugin, sidecar, version string
	duration                 time.Duration
	conns, keys, revocations int
	// only names the sections (see sections) to run alone, without the
	// main rows: a quick loop while working on one of them.
	only string
}

// section is a part of the run kept in its own file, which registers it in
// sections from an init func. It adds its rows with wrk/wrkFor and its
// targets with b.target, and runs after the main rows (or alone, -only).
type section struct {
	name string
	run  func(b *bench, ctx context.Context) error
}

var sections []section

func main() {
	var o options
	flag.StringVar(&o.plugin, "plugin", "bin/vault-plugin-secrets-keybroker", "plugin binary")
	flag.StringVar(&o.sidecar, "sidecar", "bin/keybroker-sidecar", "sidecar binary")
	flag.StringVar(&o.version, "version", "v0.1.0-dev", "version the plugin binary reports")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk run")
	flag.IntVar(&o.conns, "conns", 32, "wrk connections")
	flag.IntVar(&o.keys, "keys", 100_000, "keys stored for the scale rows")
	flag.IntVar(&o.revocations, "revocations", 100, "revocations timed")
	flag.StringVar(&o.only, "only", "", "comma-separated sections to run alone: "+sectionNames())
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "make bench:", err)
		os.Exit(1)
	}
}

// row is one wrk measurement.
type row struct {
	name     string
	rps      float64
	p50, p99 time.Duration
}

type bench struct {
	o       options
	dir     string
	v       *vaultserver.Server
	rows    map[string]row
	order   []string
	notes   []string
	started time.Time
	// floodCalls is the Vault calls one client's forged keys caused: with
	// random key_ids (what an attacker who does not read the format sends,
	// and every stamp but the last 30 s), and stamped with the current time.
	floodCalls, floodNowCalls float64
	// keys are the API keys of role bulk minted so far (the scale rows',
	// then the sync section's).
	keys []string
	// idleCalls is Vault requests per second from three idle sidecars.
	idleCalls float64
	// targets are the sections' targets, printed after the main ones.
	targets []target
}

// target is one line of the targets table: got against want, at least or
// at most.
type target struct {
	what   string
	got    float64
	want   float64
	atMost bool
	unit   string
}

// target adds a line to the targets table.
func (b *bench) target(t target) { b.targets = append(b.targets, t) }

func sectionNames() string {
	var names []string
	for _, s := range sections {
		names = append(names, s.name)
	}
	return strings.Join(names, ",")
}

// sectionsLast are the sections that run after the others, in this
// order: the sync section mints keys that every following sidecar is sent,
// and the fan-out section leaves Vault holding a fleet's memory (a GiB at
// 5,000 followers) and catching up on its answers; the mint rows, which
// compare the plugin's mints with Vault's token create, run before both.
var sectionsLast = []string{"sync", "fanout"}

// runSections runs the sections -only names (all of them when full): the
// others in the order they registered, then sectionsLast.
func (b *bench) runSections(ctx context.Context, full bool) error {
	rank := func(name string) int { return slices.Index(sectionsLast, name) }
	slices.SortStableFunc(sections, func(x, y section) int { return rank(x.name) - rank(y.name) })
	want := map[string]bool{}
	for _, n := range strings.Split(b.o.only, ",") {
		want[strings.TrimSpace(n)] = true
	}
	for _, s := range sections {
		if !full && !want[s.name] {
			continue
		}
		log("section %s", s.name)
		if err := s.run(b, ctx); err != nil {
			return fmt.Errorf("section %s: %w", s.name, err)
		}
	}
	return nil
}

func run(o options) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk is not installed: apt-get install wrk")
	}
	dir, err := os.MkdirTemp("", "keybroker-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	b := &bench{o: o, dir: dir, rows: map[string]row{}, started: time.Now()}
	log("starting Vault")
	if b.v, err = vaultserver.Start(ctx, vaultserver.Options{Dir: dir, PluginBinary: o.plugin, PluginVersion: o.version}); err != nil {
		return err
	}
	defer b.v.Stop()
	if o.only != "" {
		if err := b.runSections(ctx, false); err != nil {
			return err
		}
		b.reportSections()
		return nil
	}
	return b.run(ctx)
}

func log(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[bench] "+format+"\n", args...)
}

func (b *bench) run(ctx context.Context) error {
	c := b.v.Client
	for path, data := range map[string]map[string]interface{}{
		"keybroker/roles/bench": {"scopes": "read", "audiences": "svc", "ttl": "24h", "token_ttl": "1h"},
		"keybroker/roles/bulk":  {"scopes": "read", "orphan": true, "ttl": "24h"},
		"keybroker/roles/metered": {"scopes": "read", "audiences": "svc", "token_ttl": "1h",
			"budget": int64(1e15), "max_cost_per_request": 1},
		"auth/token/roles/bench": {"allowed_policies": "default", "orphan": true},
	} {
		if _, err := c.Logical().WriteWithContext(ctx, path, data); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	upstream := startUpstream()
	defer upstream.Close()

	warm, err := b.startSidecar(ctx, "warm", upstream.Addr, "")
	if err != nil {
		return err
	}
	defer stop(warm.cmd)
	cold, err := b.startSidecar(ctx, "cold", upstream.Addr, `key_replica = false`+"\n"+`key_cache_ttl = "1ns"`+"\n"+`max_stale = "1ns"`)
	if err != nil {
		return err
	}
	defer stop(cold.cmd)

	jwt, err := c.Logical().WriteWithContext(ctx, "keybroker/token/bench", nil)
	if err != nil {
		return err
	}
	key, err := c.Logical().WriteWithContext(ctx, "keybroker/keys/bench", map[string]interface{}{"name": "hot"})
	if err != nil {
		return err
	}
	hotKey := key.Data["key"].(string)

	idle, err := b.startSidecar(ctx, "idle", upstream.Addr, "")
	if err != nil {
		return err
	}
	defer stop(idle.cmd)
	log("minting 1000 keys")
	keys, err := b.mintKeys(ctx, nil, 1000)
	if err != nil {
		return err
	}
	if err := holds(warm.auth, len(keys)+1, time.Minute); err != nil {
		return err
	}
	vaultURL := b.v.Addr
	tokenHdr := "X-Vault-Token: " + b.v.RootToken

	b.wrk("a", "sidecar /verify, agent JWT", warm.auth+"/verify/r", []string{"Authorization: Bearer " + jwt.Data["token"].(string)}, "")
	if err := b.dpopRow(ctx, upstream.Addr, "ES256"); err != nil {
		return err
	}
	metered, err := c.Logical().WriteWithContext(ctx, "keybroker/token/metered", nil)
	if err != nil {
		return err
	}
	before := vaultCalls(warm.auth)
	b.wrk("a-metered", "(a) with a budget: a hold and a settlement per request", warm.auth+"/verify/r", []string{"Authorization: Bearer " + metered.Data["token"].(string)}, "")
	after := vaultCalls(warm.auth)
	b.notes = append(b.notes, fmt.Sprintf("row a-metered: %.0f requests cost %.0f budget/reserve and %.0f budget/report calls to Vault",
		b.rows["a-metered"].rps*b.o.duration.Seconds(), after["reserve"]-before["reserve"], after["report"]-before["report"]))
	b.wrk("b", "sidecar /verify, API key, the same key each request", warm.auth+"/verify/r", []string{"X-API-Key: " + hotKey}, "")
	before = vaultCalls(warm.auth)
	b.wrk("c", "sidecar /verify, a different API key each request (cold), from the replica", warm.auth+"/verify/r", nil, b.cycleScript(keys))
	after = vaultCalls(warm.auth)
	b.notes = append(b.notes, fmt.Sprintf("row c: %.0f requests over %d keys cost %.0f key-usage reports to Vault (one per usage_report_interval, 1m by default, whatever the traffic)",
		b.rows["c"].rps*b.o.duration.Seconds(), len(keys), after["key_usage"]-before["key_usage"]))
	b.wrk("c-vault", "(c) without a replica: keybroker/verify each request", cold.auth+"/verify/r", nil, b.cycleScript(keys))
	b.wrk("d", "sidecar /verify, no-auth route (ceiling)", warm.auth+"/verify/public", nil, "")
	flood, err := b.startSidecar(ctx, "flood", upstream.Addr, "")
	if err != nil {
		return err
	}
	// Flood a sidecar that holds the records, as every sidecar does a
	// moment after it starts; before that it asks Vault, within the
	// flood guard's bound.
	if err := holds(flood.auth, len(keys)+1, time.Minute); err != nil {
		return err
	}
	log("flooding a sidecar with forged API keys from one client")
	b.floodCalls = b.flood(flood.auth, b.o.duration, "random key_ids", func() time.Time {
		return time.Unix(rand.Int64N(1<<31), 0) // any second: 30 s of 29 years are near now
	})
	stop(flood.cmd)
	// A fresh sidecar: the first flood's client is throttled for a while.
	if flood, err = b.startSidecar(ctx, "flood-now", upstream.Addr, ""); err != nil {
		return err
	}
	if err := holds(flood.auth, len(keys)+1, time.Minute); err != nil {
		return err
	}
	b.floodNowCalls = b.flood(flood.auth, b.o.duration, "key_ids stamped now", time.Now)
	stop(flood.cmd)
	b.wrk("e", "Vault auth/token/lookup-self (Vault token as API key)", vaultURL+"/v1/auth/token/lookup-self", []string{tokenHdr}, "")
	b.wrk("f", "Vault keybroker/verify called directly", vaultURL+"/v1/keybroker/verify", []string{tokenHdr}, b.postScript(fmt.Sprintf(`{"credential":%q}`, hotKey)))
	b.rows["b-1k"], b.rows["c-1k"], b.rows["c-vault-1k"] = b.rows["b"], b.rows["c"], b.rows["c-vault"]

	// The mint rows are section mint (mint.go).

	log("timing %d revocations", b.o.revocations)
	revP50, revP99, err := b.revocations(ctx, warm.proxy)
	if err != nil {
		return err
	}

	log("minting up to %d keys", b.o.keys)
	mintStart := time.Now()
	if keys, err = b.mintKeys(ctx, keys, b.o.keys); err != nil {
		return err
	}
	b.notes = append(b.notes, fmt.Sprintf("%d keys minted in %s for the scale rows", b.o.keys, time.Since(mintStart).Round(time.Second)))
	if err := holds(warm.auth, len(keys), 5*time.Minute); err != nil {
		return err
	}
	b.wrk("b-100k", fmt.Sprintf("(b) with %dk keys stored", b.o.keys/1000), warm.auth+"/verify/r", []string{"X-API-Key: " + hotKey}, "")
	b.wrk("c-100k", fmt.Sprintf("(c) with %dk keys stored", b.o.keys/1000), warm.auth+"/verify/r", nil, b.cycleScript(keys))
	b.wrk("c-vault-100k", fmt.Sprintf("(c-vault) with %dk keys stored", b.o.keys/1000), cold.auth+"/verify/r", nil, b.cycleScript(keys))
	// (f) again, to tell the sidecar's share of any slowdown from Vault's.
	b.wrk("f-100k", fmt.Sprintf("(f) with %dk keys stored", b.o.keys/1000), vaultURL+"/v1/keybroker/verify", []string{tokenHdr}, b.postScript(fmt.Sprintf(`{"credential":%q}`, hotKey)))

	b.keys = keys // the sync section times a fresh sidecar's sync of them
	// A third follower for the idle count below (the sync section's are
	// fresh ones).
	syncer, err := b.startSidecar(ctx, "idle-2", upstream.Addr, "")
	if err != nil {
		return err
	}
	defer stop(syncer.cmd)
	if err := holds(syncer.auth, len(keys), 5*time.Minute); err != nil {
		return err
	}

	log("showing the warm sidecar %d distinct keys", len(keys))
	if err := see(warm.auth, keys); err != nil {
		return err
	}
	rss, err := peakRSS(warm.cmd.Process.Pid)
	if err != nil {
		return err
	}

	const quiet = 30 * time.Second // more than one long poll's wait
	log("counting the Vault requests of three idle sidecars for %s", quiet)
	three := []string{warm.auth, idle.auth, syncer.auth}
	idleBefore := allVaultCalls(three)
	time.Sleep(quiet)
	b.idleCalls = (allVaultCalls(three) - idleBefore) / quiet.Seconds()
	if err := b.runSections(ctx, true); err != nil {
		return err
	}
	b.report(revP50, revP99, rss, len(keys))
	return nil
}

// flood sends well-formed forged API keys (a valid checksum, unknown to
// Vault) to auth from one client over 64 connections for d, and records the
// Vault calls they caused.
// The stated bound: failed_auth_burst + failed_auth_rate x t calls (10 + 1/s).
func (b *bench) flood(auth string, d time.Duration, what string, stamp func() time.Time) float64 {
	before := vaultCalls(auth)["verify"]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var sent, throttled atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				forged, _, err := apikey.GenerateAt(nil, "kb", stamp())
				if err != nil {
					return
				}
				req, _ := http.NewRequest("GET", auth+"/verify/r", nil)
				req.Header.Set("X-API-Key", forged)
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				sent.Add(1)
				if resp.StatusCode == http.StatusTooManyRequests {
					throttled.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	calls := vaultCalls(auth)["verify"] - before
	b.notes = append(b.notes, fmt.Sprintf("forged-key flood (%s), one client, 64 connections, %s: %d requests answered (%d with 429 too_many_failures), %.0f Vault verify calls; bound 10 + 1/s x %.0fs = %.0f",
		what, d, sent.Load(), throttled.Load(), calls, d.Seconds(), 10+d.Seconds()))
	return calls
}

// holds waits until the sidecar at auth holds n key records.
func holds(auth string, n int, within time.Duration) error {
	for deadline := time.Now().Add(within); ; time.Sleep(50 * time.Millisecond) {
		if gauge(auth, "keybroker_sidecar_key_records") >= float64(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecar %s holds %.0f key records after %s, want %d", auth, gauge(auth, "keybroker_sidecar_key_records"), within, n)
		}
	}
}

// gauge reads one unlabelled sample from the sidecar's metrics.
func gauge(auth, name string) float64 {
	resp, err := http.Get(auth + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// allVaultCalls sums every Vault request (every operation, every result)
// of the sidecars.
func allVaultCalls(auths []string) float64 {
	re := regexp.MustCompile(`^keybroker_sidecar_vault_requests_total\{[^}]*\} (\S+)$`)
	total := 0.0
	for _, auth := range auths {
		resp, err := http.Get(auth + "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				v, _ := strconv.ParseFloat(m[1], 64)
				total += v
			}
		}
		resp.Body.Close()
	}
	return total
}

type sidecarProc struct {
	cmd         *exec.Cmd
	proxy, auth string
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startSidecar runs bin/keybroker-sidecar as its own process, so its memory
// is its own, logged in with the shipped policy.
func (b *bench) startSidecar(ctx context.Context, name, upstream, extra string) (*sidecarProc, error) {
	policy, err := os.ReadFile("examples/policies/sidecar.hcl")
	if err != nil {
		return nil, err
	}
	roleID, secretID, err := b.v.AppRole(ctx, "sidecar-"+name, "keybroker-sidecar", string(policy))
	if err != nil {
		return nil, err
	}
	secretFile := filepath.Join(b.dir, name+"-secret-id")
	if err := os.WriteFile(secretFile, []byte(secretID), 0o600); err != nil {
		return nil, err
	}
	p := &sidecarProc{proxy: freeAddr(), auth: freeAddr()}
	conf := fmt.Sprintf(`listen = %q
auth_listen = %q
upstream = "http://%s"
audiences = ["svc"]
log_level = "warn"
gateway = "envoy"
trusted_proxies = ["127.0.0.1"]
%s
vault {
  address = %q
  role_id = %q
  secret_id_file = %q
}
route "/public" {
  public = true
}
route "/r" {
  scopes = ["read"]
}
`, p.proxy, p.auth, upstream, extra, b.v.Addr, roleID, secretFile)
	confPath := filepath.Join(b.dir, name+".hcl")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(b.o.sidecar, "-config", confPath)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	p.proxy, p.auth = "http://"+p.proxy, "http://"+p.auth
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err := http.Get(p.auth + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			stop(p.cmd)
			return nil, fmt.Errorf("sidecar %s did not become ready", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// vaultCalls reads the sidecar's successful Vault requests by operation.
func vaultCalls(auth string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(auth + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	re := regexp.MustCompile(`^keybroker_sidecar_vault_requests_total\{op="(\w+)",result="ok"\} (\S+)$`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			out[m[1]], _ = strconv.ParseFloat(m[2], 64)
		}
	}
	return out
}

func stop(cmd *exec.Cmd) {
	if cmd != nil && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		_ = cmd.Wait()
	}
}

func startUpstream() *http.Server {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Addr: l.Addr().String(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})}
	go func() { _ = srv.Serve(l) }()
	return srv
}

// mintKeys mints orphan keys (no leases: 100k leases would load Vault's
// expiration manager, which is not what the scale rows measure) until there
// are n.
func (b *bench) mintKeys(ctx context.Context, have []string, n int) ([]string, error) {
	var mu sync.Mutex
	var firstErr error
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				s, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/keys/bulk", map[string]interface{}{"name": "bulk"})
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					have = append(have, s.Data["key"].(string))
				}
				mu.Unlock()
			}
		}()
	}
	for i := len(have); i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return have, firstErr
}

func (b *bench) script(name, body string) string {
	p := filepath.Join(b.dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		panic(err)
	}
	return p
}

// cycleScript makes wrk send the keys in turn, one per request, each thread
// from its own starting point.
func (b *bench) cycleScript(keys []string) string {
	kf := b.script("keys.txt", strings.Join(keys, "\n")+"\n")
	return b.script("cycle.lua", fmt.Sprintf(`
local keys = {}
for line in io.lines(%q) do keys[#keys + 1] = line end
local i = 0
function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)); i = math.random(#keys) end
function request()
  i = i %% #keys + 1
  return wrk.format(nil, nil, {["X-API-Key"] = keys[i]})
end
`, kf))
}

func (b *bench) postScript(body string) string {
	return b.script(fmt.Sprintf("post-%d.lua", time.Now().UnixNano()), fmt.Sprintf(`
wrk.method = "POST"
wrk.body = %q
wrk.headers["Content-Type"] = "application/json"
`, body))
}

func (b *bench) wrk(id, name, url string, headers []string, script string) {
	b.wrkFor(id, name, url, headers, script, b.o.duration)
}

func (b *bench) wrkFor(id, name, url string, headers []string, script string, d time.Duration) {
	secs := max(1, int(d.Round(time.Second).Seconds())) // wrk takes whole seconds
	args := []string{"-t2", "-c" + strconv.Itoa(b.o.conns), "-d" + strconv.Itoa(secs) + "s", "--latency"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	if script != "" {
		args = append(args, "-s", script)
	}
	args = append(args, url)
	log("%s: %s", id, name)
	out, err := exec.Command("wrk", args...).CombinedOutput()
	r := row{name: name}
	if err != nil {
		b.notes = append(b.notes, fmt.Sprintf("row %s: wrk failed: %v", id, err))
	}
	r.rps, r.p50, r.p99 = parseWrk(string(out))
	if m := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`).FindStringSubmatch(string(out)); m != nil {
		b.notes = append(b.notes, fmt.Sprintf("row %s: %s non-2xx responses", id, m[1]))
	}
	b.rows[id] = r
	b.order = append(b.order, id)
}

var (
	rpsRe = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	pctRe = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
)

func parseWrk(out string) (rps float64, p50, p99 time.Duration) {
	if m := rpsRe.FindStringSubmatch(out); m != nil {
		rps, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range pctRe.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9}[m[3]]
		d := time.Duration(v * unit)
		if m[1] == "50" {
			p50 = d
		} else {
			p99 = d
		}
	}
	return rps, p50, p99
}

// revocations times, for each of n keys, from "vault lease revoke"
// returning until the sidecar's proxy denies the key.
func (b *bench) revocations(ctx context.Context, proxy string) (p50, p99 time.Duration, err error) {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	errc := make(chan error, 10)
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < b.o.revocations/10; i++ {
				d, err := b.oneRevocation(ctx, proxy)
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, 0, err
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2], lat[(len(lat)*99)/100], nil
}

func (b *bench) oneRevocation(ctx context.Context, proxy string) (time.Duration, error) {
	c := b.v.Client
	s, err := c.Logical().WriteWithContext(ctx, "keybroker/keys/bench", map[string]interface{}{"name": "revoke-me"})
	if err != nil {
		return 0, err
	}
	key := s.Data["key"].(string)
	if code := get(proxy+"/r", key); code != 200 {
		return 0, fmt.Errorf("fresh key answered %d", code)
	}
	// Revoke at a random moment: a revocation right after the previous
	// denial would lock step with the sidecar's poll and always wait a full
	// interval, which real revocations do not.
	time.Sleep(time.Duration(rand.Int64N(int64(1100 * time.Millisecond))))
	if err := c.Sys().RevokeWithContext(ctx, s.LeaseID); err != nil {
		return 0, err
	}
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		if get(proxy+"/r", key) == 401 {
			return time.Since(start), nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("revoked key still allowed after 10s")
}

func get(url, key string) int {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// see sends each key once to the sidecar's /verify.
func see(auth string, keys []string) error {
	var wg sync.WaitGroup
	ch := make(chan string)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var bad int64
	var mu sync.Mutex
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range ch {
				req, _ := http.NewRequest("GET", auth+"/verify/r", nil)
				req.Header.Set("X-API-Key", k)
				resp, err := client.Do(req)
				if err != nil || resp.StatusCode != 200 {
					mu.Lock()
					bad++
					mu.Unlock()
				}
				if resp != nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	for _, k := range keys {
		ch <- k
	}
	close(ch)
	wg.Wait()
	if bad > 0 {
		return fmt.Errorf("%d of %d keys were not allowed", bad, len(keys))
	}
	return nil
}

// peakRSS reads VmHWM, the process's peak resident set, in bytes.
func peakRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", pid)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/1e6) }

func (b *bench) report(revP50, revP99 time.Duration, rss int64, seen int) {
	r := b.rows
	host, _ := os.Hostname()
	fmt.Printf("## keybroker benchmarks\n\nRun %s on %s: %d CPUs, %s/%s, %s; wrk -t2 -c%d, %s per row; everything on loopback, sharing the machine with wrk.\n\n",
		b.started.UTC().Format(time.RFC3339), host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), b.o.conns, b.o.duration)
	b.printRows()
	fmt.Printf("\nRevocation propagation (vault lease revoke returned -> sidecar denies), %d revocations: p50 %s ms, p99 %s ms\n", b.o.revocations, ms(revP50), ms(revP99))
	fmt.Printf("Sidecar peak RSS (VmHWM) after %d distinct API keys were seen: %.1f MiB\n", seen, float64(rss)/(1<<20))
	fmt.Printf("Vault requests caused by 3 idle sidecars following both feeds: %.2f per second\n\n", b.idleCalls)

	ratio := func(a, c float64) float64 {
		if c == 0 {
			return 0
		}
		return a / c
	}
	targets := []target{
		{"(a) / (e)", ratio(r["a"].rps, r["e"].rps), 20, false, "x"},
		{"(a) / (d): JWT", ratio(r["a"].rps, r["d"].rps), 0.9, false, "x"},
		{"(a-dpop) / (a): DPoP-bound JWT", ratio(r["a-dpop"].rps, r["a"].rps), 0.5, false, "x"},
		{"(b) / (e)", ratio(r["b"].rps, r["e"].rps), 20, false, "x"},
		{"(b) / (d): the same key", ratio(r["b"].rps, r["d"].rps), 0.9, false, "x"},
		{"(c) / (d): a different key each request", ratio(r["c"].rps, r["d"].rps), 0.7, false, "x"},
		{"(c-vault) / (e)", ratio(r["c-vault"].rps, r["e"].rps), 1, false, "x"},
		{"revocation p99", revP99.Seconds(), 0.1, true, "s"},
		{"(b) p50 100k / 1k", ratio(float64(r["b-100k"].p50), float64(r["b-1k"].p50)), 1.5, true, "x"},
		{"(c) p50 100k / 1k", ratio(float64(r["c-100k"].p50), float64(r["c-1k"].p50)), 1.5, true, "x"},
		{"(c-vault) p50 100k / 1k", ratio(float64(r["c-vault-100k"].p50), float64(r["c-vault-1k"].p50)), 1.5, true, "x"},
		{"sidecar RSS", float64(rss) / (1 << 20), 128, true, " MiB"},
		{"forged keys, random key_ids: Vault calls", b.floodCalls, 0, true, ""},
		{"forged keys, key_ids stamped now: Vault calls, one client", b.floodNowCalls, 10 + b.o.duration.Seconds(), true, ""},
	}
	printTargets(append(targets, b.targets...))
	b.printNotes()
}

// reportSections is the report of a run of -only sections: their rows,
// targets and notes.
func (b *bench) reportSections() {
	b.printRows()
	fmt.Println()
	printTargets(b.targets)
	b.printNotes()
}

func (b *bench) printRows() {
	fmt.Println("| row | what | requests/s | p50 ms | p99 ms |")
	fmt.Println("|---|---|---:|---:|---:|")
	for _, id := range b.order {
		x := b.rows[id]
		fmt.Printf("| %s | %s | %.0f | %s | %s |\n", id, x.name, x.rps, ms(x.p50), ms(x.p99))
	}
}

func printTargets(targets []target) {
	fmt.Println("| target | measured | wanted | met |")
	fmt.Println("|---|---:|---:|---|")
	for _, t := range targets {
		met := t.got >= t.want
		op := ">="
		if t.atMost {
			met, op = t.got <= t.want, "<="
		}
		fmt.Printf("| %s | %.2f%s | %s %.2f%s | %v |\n", t.what, t.got, t.unit, op, t.want, t.unit, map[bool]string{true: "yes", false: "**no**"}[met])
	}
}

func (b *bench) printNotes() {
	for _, n := range b.notes {
		fmt.Println("\n- " + n)
	}
	fmt.Printf("\nWhole run: %s\n", time.Since(b.started).Round(time.Second))
}
