package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// The fan-out section: a fleet of N sidecars following both feeds through
// one Vault, simulated by one follower process holding N long polls on
// each feed (follower.go), at each N of fanoutSizes. At each N it measures
// the plugin's and Vault's CPU and memory while the fleet is idle, the
// mint row's throughput, and the revocation latency a real sidecar sees,
// and compares them with N = 0.
func init() {
	sections = append(sections, section{name: "fanout", run: (*bench).fanout})
}

const (
	// fanoutIdle is the idle window: more than the key-record wait (10 s),
	// so that every follower's held reads end and are sent again in it.
	fanoutIdle = 12 * time.Second
	fanoutMint = 5 * time.Second
	// fanoutCatchUp is how long the fleet may take to read the changes of
	// the mint row.
	fanoutCatchUp = 3 * time.Minute
	// fanoutRevocations is how many revocations the real sidecar times at
	// each N (the main row times 100).
	fanoutRevocations = 30
	// fanoutSizesEnv overrides fanoutSizes, e.g. "0,100,1000" while working.
	fanoutSizesEnv = "KEYBROKER_FANOUT_SIZES"
	// fanoutNoAuditEnv, set, turns Vault's audit device off for the
	// section: to tell the audit's share of what a follower costs Vault.
	fanoutNoAuditEnv = "KEYBROKER_FANOUT_NO_AUDIT"
)

var fanoutSizes = []int{0, 100, 1000, 5000}

// fanoutPoint is what one N measured. CPU is in cores (CPU seconds per
// second) over the idle window.
type fanoutPoint struct {
	n                             int
	pluginCPU, vaultCPU, fleetCPU float64
	pluginRSS, vaultRSS           int64   // with the fleet holding its reads, idle
	pluginRSS0, vaultRSS0         int64   // before the fleet started
	answers                       float64 // feed reads answered per second, idle
	mintRPS                       float64
	mintPluginCPU, mintVaultCPU   float64
	mintAnswers                   float64       // feed reads answered per second during the mint row
	catchUp                       time.Duration // from the mint row's end until no follower is behind
	revP50, revP99                time.Duration
	failed                        string // what stopped the measurement at this N
	errors                        int64
	lastError                     string
}

// fanoutProcs are the processes measured: the plugin and the Vault that
// runs it.
type fanoutProcs struct{ plugin, vault int }

func (b *bench) fanout(ctx context.Context) error {
	sizes, err := parseSizes(os.Getenv(fanoutSizesEnv))
	if err != nil {
		return err
	}
	if _, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/roles/bench", map[string]interface{}{
		"scopes": "read", "audiences": "svc", "ttl": "24h", "token_ttl": "1h"}); err != nil {
		return err
	}
	if os.Getenv(fanoutNoAuditEnv) != "" {
		if err := b.v.Client.Sys().DisableAuditWithContext(ctx, "file"); err != nil {
			return err
		}
		b.notes = append(b.notes, "fan-out: run with Vault's audit device off ("+fanoutNoAuditEnv+")")
	}
	if roles := os.Getenv(followRolesEnv); roles != "" {
		b.notes = append(b.notes, "fan-out: the followers hold only the records of roles "+roles+" ("+followRolesEnv+")")
	}
	policy, err := os.ReadFile("examples/policies/sidecar.hcl")
	if err != nil {
		return err
	}
	// One token for the whole fleet: Vault looks a token up per request
	// whichever it is, and N AppRole logins would measure logins.
	fleet, err := b.v.LoginAs(ctx, "fanout-fleet", string(policy))
	if err != nil {
		return err
	}
	upstream := startUpstream()
	defer upstream.Close()
	sc, err := b.startSidecar(ctx, "fanout", upstream.Addr, "")
	if err != nil {
		return err
	}
	defer stop(sc.cmd)
	var points []fanoutPoint
	for _, n := range sizes {
		log("fan-out: %d followers", n)
		p, err := b.fanoutAt(ctx, n, fleet.Token(), sc.proxy)
		if err != nil {
			// What broke is the finding: report it with what was measured.
			log("fan-out: %d followers: %v", n, err)
			p.failed = err.Error()
		}
		points = append(points, p)
	}
	b.fanoutReport(points)
	return nil
}

func parseSizes(s string) ([]int, error) {
	if s == "" {
		return fanoutSizes, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s: %q is not a number of followers", fanoutSizesEnv, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// findProcs finds the plugin by its binary in this run's plugin directory,
// and Vault as its parent; again at each N, should Vault have restarted it.
func (b *bench) findProcs() (fanoutProcs, error) {
	plugin, err := processOf(filepath.Join(b.v.PluginDir, vaultserver.PluginName))
	if err != nil {
		return fanoutProcs{}, err
	}
	vault, err := parentPID(plugin)
	return fanoutProcs{plugin, vault}, err
}

// fanoutAt measures one N: the fleet idle, then the mint row, then the
// revocations, with the fleet holding its reads throughout.
func (b *bench) fanoutAt(ctx context.Context, n int, token, proxy string) (fanoutPoint, error) {
	p := fanoutPoint{n: n}
	procs, err := b.findProcs()
	if err != nil {
		return p, err
	}
	// Memory is counted from just before the fleet starts: what earlier
	// rows left in the heap is not the fleet's.
	if p.pluginRSS0, err = rss(procs.plugin); err != nil {
		return p, err
	}
	if p.vaultRSS0, err = rss(procs.vault); err != nil {
		return p, err
	}
	fl, err := startFleet(ctx, n, b.v.Addr, token, b.v.Mount)
	if err != nil {
		return p, err
	}
	defer fl.stop()
	if err := fl.waitReady(3 * time.Minute); err != nil {
		return p, err
	}
	time.Sleep(3 * time.Second) // the first reads' answers settle

	w := b.window(procs, fl)
	time.Sleep(fanoutIdle)
	p.pluginCPU, p.vaultCPU, p.fleetCPU, p.answers = w.end()
	if p.pluginRSS, err = rss(procs.plugin); err != nil {
		return p, err
	}
	if p.vaultRSS, err = rss(procs.vault); err != nil {
		return p, err
	}

	id := fmt.Sprintf("fanout-mint-%d", n)
	w = b.window(procs, fl)
	b.wrkFor(id, fmt.Sprintf("mint keybroker/keys/<role>, %d followers holding reads", n), b.v.Addr+"/v1/keybroker/keys/bench",
		[]string{"X-Vault-Token: " + b.v.RootToken}, b.postScript(`{"name":"bench"}`), fanoutMint)
	p.mintPluginCPU, p.mintVaultCPU, _, p.mintAnswers = w.end()
	p.mintRPS = b.rows[id].rps
	if p.catchUp, err = fl.waitCaughtUp(fanoutCatchUp); err != nil {
		return p, err
	}

	if p.revP50, p.revP99, err = b.fanoutRevocations(ctx, proxy); err != nil {
		return p, err
	}
	s := fl.latest()
	p.errors, p.lastError = s.Errors, s.LastError
	return p, nil
}

// cpuWindow is CPU and feed answers from a start to an end.
type cpuWindow struct {
	procs                   fanoutProcs
	fl                      *fleet
	start                   time.Time
	plugin, vault, fleetCPU time.Duration
	answers                 int64
}

func (b *bench) window(procs fanoutProcs, fl *fleet) *cpuWindow {
	w := &cpuWindow{procs: procs, fl: fl, start: time.Now()}
	w.plugin, _ = cpuTime(procs.plugin)
	w.vault, _ = cpuTime(procs.vault)
	w.fleetCPU = fl.cpu()
	w.answers = fl.latest().Answers
	return w
}

// end returns the cores each used since the start, and the feed answers
// per second.
func (w *cpuWindow) end() (plugin, vault, fleet, answers float64) {
	secs := time.Since(w.start).Seconds()
	p, _ := cpuTime(w.procs.plugin)
	v, _ := cpuTime(w.procs.vault)
	cores := func(d time.Duration) float64 { return d.Seconds() / secs }
	return cores(p - w.plugin), cores(v - w.vault), cores(w.fl.cpu() - w.fleetCPU), float64(w.fl.latest().Answers-w.answers) / secs
}

// fleet is the follower process (none for N = 0).
type fleet struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	last   followerStats
	lastAt time.Time // when last came
	done   chan struct{}
}

func startFleet(ctx context.Context, n int, addr, token, mount string) (*fleet, error) {
	fl := &fleet{done: make(chan struct{})}
	if n == 0 {
		fl.last.Ready = true
		close(fl.done)
		return fl, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	fl.cmd = exec.CommandContext(ctx, self)
	fl.cmd.Env = append(os.Environ(), followerEnv+"="+strconv.Itoa(n), "VAULT_ADDR="+addr, "VAULT_TOKEN="+token, "KEYBROKER_MOUNT="+mount)
	fl.cmd.Stderr = os.Stderr
	fl.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := fl.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := fl.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(fl.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var s followerStats
			if json.Unmarshal(sc.Bytes(), &s) == nil {
				fl.mu.Lock()
				fl.last, fl.lastAt = s, time.Now()
				fl.mu.Unlock()
			}
		}
	}()
	return fl, nil
}

func (fl *fleet) latest() followerStats {
	s, _ := fl.latestAt()
	return s
}

func (fl *fleet) latestAt() (followerStats, time.Time) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.last, fl.lastAt
}

func (fl *fleet) waitReady(within time.Duration) error {
	for deadline := time.Now().Add(within); !fl.latest().Ready; {
		select {
		case <-fl.done:
			return fmt.Errorf("the follower process ended before its reads were out")
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s := fl.latest()
			return fmt.Errorf("followers not ready after %s: %d errors, last %q", within, s.Errors, s.LastError)
		}
	}
	return nil
}

// waitCaughtUp waits until the follower process says, after the call,
// that no follower is behind on the key-record changes, and says how long
// that took.
func (fl *fleet) waitCaughtUp(within time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		s, at := fl.latestAt()
		if fl.cmd == nil || (at.After(start) && s.Behind == 0) {
			return time.Since(start), nil
		}
		if time.Since(start) > within {
			return 0, fmt.Errorf("%d followers still behind on the key-record changes %s after the mint row", s.Behind, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (fl *fleet) cpu() time.Duration {
	if fl.cmd == nil {
		return 0
	}
	d, _ := cpuTime(fl.cmd.Process.Pid)
	return d
}

func (fl *fleet) stop() {
	if fl.cmd == nil {
		return
	}
	stop(fl.cmd)
	<-fl.done
	time.Sleep(2 * time.Second) // Vault lets go of the connections
}

// fanoutReport adds the section's table (as a note: its columns are not
// wrk's) and its targets.
func (b *bench) fanoutReport(points []fanoutPoint) {
	var sb strings.Builder
	sb.WriteString("fan-out: N followers, each holding a read on both feeds as a sidecar does (one process, one token). CPU in cores; idle: no change for 12 s; mint: during the mint row.\n\n")
	sb.WriteString("| followers | feed answers/s idle | plugin CPU idle | Vault CPU idle | followers' CPU | plugin RSS MiB (+ fleet) | Vault RSS MiB (+ fleet) | mint key/s | ×N=0 | plugin CPU mint | Vault CPU mint | feed answers/s mint | fleet caught up s | revocation p50 / p99 ms | ×N=0 (p99) | follower errors |\n")
	sb.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var base *fanoutPoint
	for i := range points {
		if points[i].n == 0 {
			base = &points[i]
		}
	}
	ratio := func(a, c float64) string {
		if base == nil || c == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/c)
	}
	for _, p := range points {
		if p.failed != "" {
			// The row holds what was measured before (zeros after).
			b.notes = append(b.notes, fmt.Sprintf("fan-out %d followers: stopped: %s", p.n, p.failed))
		}
		var bm, bp float64
		if base != nil {
			bm, bp = base.mintRPS, base.revP99.Seconds()
		}
		fmt.Fprintf(&sb, "| %d | %.1f | %.3f | %.3f | %.3f | %.1f (%+.1f) | %.1f (%+.1f) | %.0f | %s | %.2f | %.2f | %.0f | %.1f | %s / %s | %s | %d |\n",
			p.n, p.answers, p.pluginCPU, p.vaultCPU, p.fleetCPU, mib(p.pluginRSS), mib(p.pluginRSS-p.pluginRSS0), mib(p.vaultRSS), mib(p.vaultRSS-p.vaultRSS0), p.mintRPS, ratio(p.mintRPS, bm),
			p.mintPluginCPU, p.mintVaultCPU, p.mintAnswers, p.catchUp.Seconds(), ms(p.revP50), ms(p.revP99), ratio(p.revP99.Seconds(), bp), p.errors)
		if p.lastError != "" {
			b.notes = append(b.notes, fmt.Sprintf("fan-out %d followers: last follower error: %s", p.n, p.lastError))
		}
	}
	b.notes = append(b.notes, sb.String())
	b.fanoutTargets(base, points)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// fanoutTargets: see BENCHMARKS.md "Fan-out" for why these.
func (b *bench) fanoutTargets(base *fanoutPoint, points []fanoutPoint) {
	if base == nil {
		return
	}
	for _, p := range points {
		if p.n == 0 {
			continue
		}
		if p.failed != "" {
			b.target(target{fmt.Sprintf("fan-out %d: measured (the fleet held its reads, the sidecar saw revocations)", p.n), 0, 1, false, ""})
			continue
		}
		per := float64(p.pluginRSS-p.pluginRSS0) / float64(p.n) / 1024
		b.target(target{fmt.Sprintf("fan-out %d: plugin RSS growth per follower", p.n), per, 64, true, " KiB"})
		b.target(target{fmt.Sprintf("fan-out %d: plugin + Vault CPU idle, per 1000 followers", p.n),
			(p.pluginCPU + p.vaultCPU - base.pluginCPU - base.vaultCPU) * 1000 / float64(p.n), 0.1, true, " cores"})
		if p.n <= 1000 {
			b.target(target{fmt.Sprintf("fan-out %d: mint key / none", p.n), p.mintRPS / base.mintRPS, 0.8, false, "x"})
		} else {
			b.target(target{fmt.Sprintf("fan-out %d: mint key / none", p.n), p.mintRPS / base.mintRPS, 0.5, false, "x"})
		}
		b.target(target{fmt.Sprintf("fan-out %d: revocation p99", p.n), p.revP99.Seconds(), max(0.1, 2*base.revP99.Seconds()), true, "s"})
	}
}

// fanoutRevocations times fanoutRevocations revocations seen by the real
// sidecar, ten at a time, as the main row does (b.oneRevocation), except
// that a fresh key may take a while to pass: with thousands of followers
// Vault answers the sidecar's first verify of it late, and that is not
// what is timed.
func (b *bench) fanoutRevocations(ctx context.Context, proxy string) (p50, p99 time.Duration, err error) {
	var mu sync.Mutex
	var lat []time.Duration
	var g errgroup.Group
	for range 10 {
		g.Go(func() error {
			for range fanoutRevocations / 10 {
				d, err := b.fanoutRevocation(ctx, proxy)
				if err != nil {
					return err
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, 0, err
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[(len(lat)*99)/100], nil
}

func (b *bench) fanoutRevocation(ctx context.Context, proxy string) (time.Duration, error) {
	c := b.v.Client
	s, err := c.Logical().WriteWithContext(ctx, "keybroker/keys/bench", map[string]interface{}{"name": "revoke-me"})
	if err != nil {
		return 0, err
	}
	key := s.Data["key"].(string)
	for start := time.Now(); get(proxy+"/r", key) != 200; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			return 0, fmt.Errorf("a fresh key did not pass the sidecar within a minute")
		}
	}
	// At a random moment, as in b.oneRevocation.
	time.Sleep(time.Duration(rand.Int64N(int64(1100 * time.Millisecond))))
	if err := c.Sys().RevokeWithContext(ctx, s.LeaseID); err != nil {
		return 0, err
	}
	start := time.Now()
	for time.Since(start) < time.Minute {
		if get(proxy+"/r", key) == 401 {
			return time.Since(start), nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("revoked key still allowed after a minute")
}
