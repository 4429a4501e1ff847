package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

// The DPoP section: the sidecar's whole decision of a DPoP-bound request
// against its floor (one signature check, a hash, a replay insert), both
// as Go benchmarks, for ES256 and EdDSA proof keys; row (a) with an EdDSA
// proof beside the main run's (a-dpop, ES256); and what the floor allows
// (a-dpop) / (a) to reach on this machine at best.
func init() {
	sections = append(sections, section{name: "dpop", run: (*bench).dpop})
}

// dpopAlgs are the proof algorithms measured: ES256, what clients send
// most, and EdDSA, whose signature check is cheaper.
var dpopAlgs = []string{"ES256", "EdDSA"}

// dpopBenchRuns is -benchtime for the Go benchmarks: the decision's
// benchmark signs its proofs ahead and one lineage may hold 15,625 live
// ones in the default replay cache.
const dpopBenchRuns = "8000x"

func (b *bench) dpop(ctx context.Context) error {
	floor, decide, err := dpopGoBenchmarks()
	if err != nil {
		return err
	}
	for _, alg := range dpopAlgs {
		b.target(target{"DPoP decision / floor, " + alg + " (Go benchmarks)", decide[alg] / floor[alg], 1.5, true, "x"})
		b.notes = append(b.notes, fmt.Sprintf("DPoP, %s proof (Go benchmarks, fastest of 3 runs of %s, one goroutine, nothing else of the bench running): floor %.1f µs, the sidecar's whole decision %.1f µs (go test -run '^$' -bench 'DPoPFloor|DecideDPoPJWT' -benchtime %s ./jwtverify ./sidecar)",
			alg, dpopBenchRuns, floor[alg]/1e3, decide[alg]/1e3, dpopBenchRuns))
	}
	if err := b.dpopRows(ctx); err != nil {
		return err
	}
	b.target(target{"(a-dpop-eddsa) / (a): DPoP-bound JWT, EdDSA proof", b.rows["a-dpop-eddsa"].rps / b.rows["a"].rps, 0.5, false, "x"})
	b.notes = append(b.notes, dpopCeilingNote(b.rows, floor))
	return nil
}

// dpopRows runs a-dpop-eddsa, and (a) and a-dpop first when the section
// runs alone.
func (b *bench) dpopRows(ctx context.Context) error {
	upstream := startUpstream()
	defer upstream.Close()
	if _, ok := b.rows["a"]; !ok {
		if _, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/roles/bench", map[string]interface{}{
			"scopes": "read", "audiences": "svc", "ttl": "24h", "token_ttl": "1h"}); err != nil {
			return err
		}
		sc, err := b.startSidecar(ctx, "dpop-bearer", upstream.Addr, "")
		if err != nil {
			return err
		}
		defer stop(sc.cmd)
		jwt, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/token/bench", nil)
		if err != nil {
			return err
		}
		b.wrk("a", "sidecar /verify, agent JWT", sc.auth+"/verify/r", []string{"Authorization: Bearer " + jwt.Data["token"].(string)}, "")
		if err := b.dpopRow(ctx, upstream.Addr, "a-dpop", "ES256"); err != nil {
			return err
		}
	}
	return b.dpopRow(ctx, upstream.Addr, "a-dpop-eddsa", "EdDSA")
}

// dpopCeilingNote says how close to (a) a DPoP row can come on this
// machine: a bearer request costs it cores / rps(a) (wrk's share
// included); a DPoP request costs at least that plus the floor.
func dpopCeilingNote(rows map[string]row, floor map[string]float64) string {
	cores := float64(runtime.NumCPU())
	bearer := cores / rows["a"].rps * 1e6 // µs of the machine per bearer request
	var parts []string
	for _, alg := range dpopAlgs {
		f := floor[alg] / 1e3
		id := map[string]string{"ES256": "a-dpop", "EdDSA": "a-dpop-eddsa"}[alg]
		parts = append(parts, fmt.Sprintf("with %s, %.0f / (%.0f + %.1f) = %.2fx at best (measured %.2fx, row %s)",
			alg, bearer, bearer, f, bearer/(bearer+f), rows[id].rps/rows["a"].rps, id))
	}
	return fmt.Sprintf("DPoP ceiling: a bearer request (row a) costs this machine %.0f cores / %.0f req/s = %.0f µs, wrk's share included; a DPoP request adds at least the floor: %s",
		cores, rows["a"].rps, bearer, strings.Join(parts, "; "))
}

// benchLine is a line of go test -bench output: name, runs, ns/op.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op`)

// dpopGoBenchmarks runs BenchmarkDPoPFloor and BenchmarkDecideDPoPJWT
// three times each and returns the fastest ns/op of each by alg: the
// least disturbed by whatever else the machine does.
func dpopGoBenchmarks() (floor, decide map[string]float64, err error) {
	log("go test -bench DPoPFloor|DecideDPoPJWT")
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^(BenchmarkDPoPFloor|BenchmarkDecideDPoPJWT)$",
		"-benchtime", dpopBenchRuns, "-count", "3", "./jwtverify", "./sidecar")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, nil, fmt.Errorf("go test -bench: %w\n%s", err, out)
	}
	floor, decide = map[string]float64{}, map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ns, _ := strconv.ParseFloat(m[2], 64)
		name, alg, _ := strings.Cut(m[1], "/")
		into := map[string]map[string]float64{"BenchmarkDPoPFloor": floor, "BenchmarkDecideDPoPJWT": decide}[name]
		if into == nil {
			continue
		}
		if old, ok := into[alg]; !ok || ns < old {
			into[alg] = ns
		}
	}
	for _, alg := range dpopAlgs {
		if floor[alg] == 0 || decide[alg] == 0 {
			return nil, nil, fmt.Errorf("go test -bench gave no %s result:\n%s", alg, out)
		}
	}
	return floor, decide, nil
}
