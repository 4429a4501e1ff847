package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/keybroker/keybroker/internal/dpoptest"
)

// The DPoP section: the sidecar's whole decision of a DPoP-bound request
// against its floor (one signature check, a hash, a replay insert), both
// as Go benchmarks, for ES256 and EdDSA proof keys; row (a) with an EdDSA
// proof beside the main run's a-dpop (ES256); the sidecar's CPU per
// request in each, against a bearer JWT's through the same kind of
// sidecar; and the best (a-dpop) / (a) the floor allows on this machine.
func init() {
	sections = append(sections, section{name: "dpop", run: (*bench).dpop})
}

// dpopAlgs are the proof algorithms measured: ES256, what clients send
// most, and EdDSA, whose signature check is cheaper.
var dpopAlgs = []string{"ES256", "EdDSA"}

// dpopRowOf is the row of each alg.
var dpopRowOf = map[string]string{"ES256": "a-dpop", "EdDSA": "a-dpop-eddsa"}

// dpopBenchRuns is -benchtime for the Go benchmarks: the decision's
// benchmark signs its proofs ahead and one lineage may hold 15,625 live
// ones in the default replay cache.
const dpopBenchRuns = "8000x"

// dpopOrigin is what the DPoP rows' sidecars take as their public origin:
// the proofs' htu.
const dpopOrigin = "https://api.bench"

// dpopCPU is the sidecar's CPU time per request in each DPoP row and in
// the bearer row beside them (a-dpop-bearer, or a when the section runs
// alone), in µs: what other load on the machine changes less than
// requests/s.
var dpopCPU = map[string]float64{}

func (b *bench) dpop(ctx context.Context) error {
	gb, err := b.dpopGoBenchmarks()
	if err != nil {
		return err
	}
	floor := gb.floor
	for _, alg := range dpopAlgs {
		b.target(target{"DPoP decision / floor, " + alg + " (Go benchmarks)", gb.ratio[alg], 1.5, true, "x"})
		b.notes = append(b.notes, fmt.Sprintf("DPoP, %s proof (Go benchmarks, %d rounds of %s runs each, one goroutine, nothing else of the bench running): floor %.1f µs, the sidecar's whole decision %.1f µs (the fastest of each), decision / floor %.2fx (the median round) (go test -run '^$' -bench 'DPoPFloor|DecideDPoPJWT' -benchtime %s ./jwtverify ./sidecar)",
			alg, dpopRounds, dpopBenchRuns, floor[alg]/1e3, gb.decide[alg]/1e3, gb.ratio[alg], dpopBenchRuns))
	}
	bearer, err := b.dpopRows(ctx)
	if err != nil {
		return err
	}
	b.target(target{"(a-dpop-eddsa) / (a): DPoP-bound JWT, EdDSA proof", b.rows["a-dpop-eddsa"].rps / b.rows["a"].rps, 0.5, false, "x"})
	b.notes = append(b.notes, dpopCeilingNote(b.rows, floor), dpopCPUNote(bearer))
	return nil
}

// dpopRows runs a bearer row through a sidecar configured as the DPoP
// rows' are (row a when the section runs alone, else a-dpop-bearer), then
// a-dpop when the section runs alone, then a-dpop-eddsa. It returns the
// bearer row's id.
func (b *bench) dpopRows(ctx context.Context) (string, error) {
	upstream := startUpstream()
	defer upstream.Close()
	bearer := "a-dpop-bearer"
	_, full := b.rows["a"]
	if !full {
		bearer = "a"
		if _, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/roles/bench", map[string]interface{}{
			"scopes": "read", "audiences": "svc", "ttl": "24h", "token_ttl": "1h"}); err != nil {
			return "", err
		}
	}
	sc, err := b.startSidecar(ctx, "dpop-bearer", upstream.Addr, dpopSidecarConfig)
	if err != nil {
		return "", err
	}
	defer stop(sc.cmd)
	jwt, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/token/bench", nil)
	if err != nil {
		return "", err
	}
	if err := b.wrkCPU(sc, func() {
		b.wrk(bearer, "(a) through a sidecar configured as the DPoP rows': a bearer JWT", sc.auth+"/verify/r", []string{"Authorization: Bearer " + jwt.Data["token"].(string)}, "")
	}, bearer); err != nil {
		return "", err
	}
	if !full {
		if err := b.dpopRow(ctx, upstream.Addr, "ES256"); err != nil {
			return "", err
		}
	}
	return bearer, b.dpopRow(ctx, upstream.Addr, "EdDSA")
}

// dpopSidecarConfig is the DPoP rows' sidecar: a replay cache that holds
// every proof of a row.
const dpopSidecarConfig = "public_origin = \"" + dpopOrigin + "\"\ndpop_replay_cache_size = 10000000"

// dpopRow is row (a) with a DPoP-bound token: every request carries a
// fresh proof signed with alg, signed ahead of the run (wrk cannot sign)
// and read from a file per wrk thread, so the sidecar checks one signature
// and one replay entry per request on top of the cached token.
func (b *bench) dpopRow(ctx context.Context, upstream, alg string) error {
	id := dpopRowOf[alg]
	sc, err := b.startSidecar(ctx, id, upstream, dpopSidecarConfig)
	if err != nil {
		return err
	}
	defer stop(sc.cmd)
	k, err := dpoptest.Generate(alg)
	if err != nil {
		return err
	}
	tok, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/token/bench", map[string]interface{}{"dpop_jkt": k.JKT})
	if err != nil {
		return err
	}
	token := tok.Data["token"].(string)
	// About what two cores verify in the run, with room: one ES256 check
	// is ~70 µs (go test -bench DPoPFloor ./jwtverify).
	n := int(min(40_000, b.rows["a"].rps) * b.o.duration.Seconds())
	files, err := b.signProofs(k, id, token, n)
	if err != nil {
		return err
	}
	script := b.script(id+".lua", fmt.Sprintf(`
local threads = 0
function setup(thread) threads = threads + 1; thread:set("file", threads == 1 and %q or %q) end
local f
function init(args) f = io.open(file) end
function request()
  local p = f:read("*l")
  if not p then f:seek("set"); p = f:read("*l") end -- out of proofs: replays, counted as non-2xx
  wrk.headers["DPoP"] = p -- with the -H headers: a table given to wrk.format replaces them
  return wrk.format()
end
`, files[0], files[1]))
	return b.wrkCPU(sc, func() {
		b.wrk(id, "(a) DPoP-bound: a fresh "+alg+" proof per request", sc.auth+"/verify/r", []string{"Authorization: DPoP " + token}, script)
	}, id)
}

// signProofs writes n proofs of k for token, one a line, in two files:
// one per wrk thread.
func (b *bench) signProofs(k *dpoptest.Key, id, token string, n int) ([2]string, error) {
	log("signing %d DPoP proofs", n)
	var files [2]string
	now := time.Now()
	var g errgroup.Group
	for t := range files {
		files[t] = filepath.Join(b.dir, fmt.Sprintf("%s-proofs-%d.txt", id, t+1))
		g.Go(func() error {
			var sb strings.Builder
			for range n / 2 {
				p, err := k.Sign("GET", dpopOrigin+"/r", token, now, nil)
				if err != nil {
					return err
				}
				sb.WriteString(p)
				sb.WriteByte('\n')
			}
			return os.WriteFile(files[t], []byte(sb.String()), 0o644)
		})
	}
	return files, g.Wait()
}

// wrkCPU runs row id (run) and records the sidecar's CPU time per
// request in it.
func (b *bench) wrkCPU(sc *sidecarProc, run func(), id string) error {
	before, err := dpopProcCPU(sc.cmd.Process.Pid)
	if err != nil {
		return err
	}
	run()
	after, err := dpopProcCPU(sc.cmd.Process.Pid)
	if err != nil {
		return err
	}
	if r := b.rows[id]; r.rps > 0 {
		dpopCPU[id] = (after - before).Seconds() * 1e6 / (r.rps * b.o.duration.Seconds())
	}
	return nil
}

// dpopProcCPU is a process's user and system CPU time so far, from
// /proc/<pid>/stat (in clock ticks of 1/100 s).
func dpopProcCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 12th and 13th of them.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// dpopCeilingNote says how close to (a) a DPoP row can come on this
// machine: a bearer request costs it cores / rps(a) (wrk's share
// included); a DPoP request costs at least that plus the floor.
func dpopCeilingNote(rows map[string]row, floor map[string]float64) string {
	cores := float64(runtime.NumCPU())
	bearer := cores / rows["a"].rps * 1e6 // µs of the machine per bearer request
	var parts []string
	for _, alg := range dpopAlgs {
		f, id := floor[alg]/1e3, dpopRowOf[alg]
		parts = append(parts, fmt.Sprintf("with %s, %.0f / (%.0f + %.1f) = %.2fx at best (measured %.2fx, row %s)",
			alg, bearer, bearer, f, bearer/(bearer+f), rows[id].rps/rows["a"].rps, id))
	}
	return fmt.Sprintf("DPoP ceiling: a bearer request (row a) costs this machine %.0f cores / %.0f req/s = %.0f µs, wrk's share included; a DPoP request adds at least the floor: %s",
		cores, rows["a"].rps, bearer, strings.Join(parts, "; "))
}

// dpopCPUNote compares the sidecar's CPU per request in the DPoP rows
// with the bearer row beside them.
func dpopCPUNote(bearer string) string {
	return fmt.Sprintf("DPoP, the sidecar's CPU per request (/proc, over each row): bearer JWT %.1f µs (row %s), ES256 proof %.1f µs (a-dpop), EdDSA proof %.1f µs (a-dpop-eddsa)",
		dpopCPU[bearer], bearer, dpopCPU["a-dpop"], dpopCPU["a-dpop-eddsa"])
}

// benchLine is a line of go test -bench output: name, runs, ns/op.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op`)

// dpopRounds is how many times the floor and the decision are measured,
// one after the other, so that both see the machine alike.
const dpopRounds = 5

// dpopBench is what the Go benchmarks measured, by alg: the fastest
// floor and decision in ns (the least disturbed by the rest of the
// machine), and the median of each round's decision / floor.
type dpopBench struct {
	floor, decide, ratio map[string]float64
}

// dpopGoBenchmarks builds the test binaries of jwtverify and sidecar and
// runs BenchmarkDPoPFloor and BenchmarkDecideDPoPJWT in turn, dpopRounds
// times.
func (b *bench) dpopGoBenchmarks() (dpopBench, error) {
	log("go test -bench DPoPFloor|DecideDPoPJWT, %d rounds", dpopRounds)
	pkgs := []struct{ dir, bench string }{{"jwtverify", "BenchmarkDPoPFloor"}, {"sidecar", "BenchmarkDecideDPoPJWT"}}
	bins := map[string]string{}
	for _, p := range pkgs {
		bins[p.dir] = filepath.Join(b.dir, p.dir+".test")
		if out, err := exec.Command("go", "test", "-c", "-o", bins[p.dir], "./"+p.dir).CombinedOutput(); err != nil {
			return dpopBench{}, fmt.Errorf("go test -c ./%s: %w\n%s", p.dir, err, out)
		}
	}
	r := dpopBench{floor: map[string]float64{}, decide: map[string]float64{}, ratio: map[string]float64{}}
	ratios := map[string][]float64{}
	for range dpopRounds {
		round := map[string]map[string]float64{}
		for _, p := range pkgs {
			cmd := exec.Command(bins[p.dir], "-test.run", "^$", "-test.bench", "^"+p.bench+"$", "-test.benchtime", dpopBenchRuns)
			cmd.Dir = p.dir // as go test runs it
			out, err := cmd.CombinedOutput()
			if err != nil {
				return dpopBench{}, fmt.Errorf("%s: %w\n%s", p.bench, err, out)
			}
			round[p.bench] = parseBench(out)
		}
		for _, alg := range dpopAlgs {
			f, d := round["BenchmarkDPoPFloor"][alg], round["BenchmarkDecideDPoPJWT"][alg]
			if f == 0 || d == 0 {
				return dpopBench{}, fmt.Errorf("the Go benchmarks gave no %s result", alg)
			}
			r.floor[alg], r.decide[alg] = minNonZero(r.floor[alg], f), minNonZero(r.decide[alg], d)
			ratios[alg] = append(ratios[alg], d/f)
		}
	}
	for alg, rs := range ratios {
		slices.Sort(rs)
		r.ratio[alg] = rs[len(rs)/2]
	}
	return r, nil
}

// parseBench reads go test -bench output: ns/op by sub-benchmark name.
func parseBench(out []byte) map[string]float64 {
	ns := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := benchLine.FindStringSubmatch(line); m != nil {
			_, alg, _ := strings.Cut(m[1], "/")
			ns[alg], _ = strconv.ParseFloat(m[2], 64)
		}
	}
	return ns
}

func minNonZero(a, b float64) float64 {
	if a == 0 {
		return b
	}
	return min(a, b)
}
