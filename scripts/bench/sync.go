package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/vault/api"
)

// The sync section: how long a fresh sidecar takes to hold every key
// record, at N and 2N keys (N is -keys; from -keys 200000 up, -keys/2 and
// -keys), so that the growth shows (it should be linear), projected to a
// million from 2N. With -keys 1000000 it measures the million itself:
//
//	make bench BENCHFLAGS="-keys 1000000 -only sync"
//
// It mints what the main run did not (orphan keys of role bulk, as the
// scale rows do). Last, it reloads the plugin (what a leadership change
// does: a new backend, its record index empty) and times a fresh sidecar
// again, every following sidecar reading the snapshot again beside it.
func init() {
	sections = append(sections, section{name: "sync", run: (*bench).syncSection})
}

// syncMintWorkers is how many mintKeys run at once to fill the gap.
const syncMintWorkers = 3

func (b *bench) syncSection(ctx context.Context) error {
	small, big := b.o.keys, 2*b.o.keys
	if b.o.keys >= 200_000 {
		small, big = b.o.keys/2, b.o.keys
	}
	if _, err := b.v.Client.Logical().WriteWithContext(ctx, "keybroker/roles/bulk", map[string]interface{}{"scopes": "read", "orphan": true, "ttl": "24h"}); err != nil {
		return err
	}
	upstream := startUpstream()
	defer upstream.Close()
	var at [2]syncRun
	for i, n := range []int{small, big} {
		if err := b.mintUpTo(ctx, n); err != nil {
			return err
		}
		r, err := b.timeSync(ctx, fmt.Sprintf("sync-%d", i), upstream.Addr)
		if err != nil {
			return err
		}
		at[i] = r
		b.note(fmt.Sprintf("Key-record sync of a fresh sidecar at %d keys minted: %s", n, r))
	}
	perRecord := func(r syncRun) float64 { return r.took.Seconds() / r.records }
	projected := perRecord(at[1]) * 1e6
	b.target(target{"key-record sync, projected to 1M records from the larger run", projected, 60, true, "s"})
	b.target(target{"sync time per record, larger run / smaller (linear: 1)", perRecord(at[1]) / perRecord(at[0]), 1.25, true, "x"})
	if at[1].records >= 1e6 {
		b.target(target{"key-record sync, 1M records", at[1].took.Seconds(), 60, true, "s"})
		b.target(target{"sidecar RSS holding 1M records", float64(at[1].rss) / (1 << 20), 512, true, " MiB"})
	}
	b.coldSync(ctx, upstream.Addr)
	return nil
}

// coldSync times a fresh sidecar's sync just after the plugin is reloaded:
// its record index empty, as on a new active node, every following sidecar
// reading the snapshot again too. A note, not a target: it fails the
// section only in its note.
func (b *bench) coldSync(ctx context.Context, upstream string) {
	what := "Key-record sync of a fresh sidecar just after the plugin was reloaded (its record index empty, as on a new active node; every following sidecar reading the snapshot again too)"
	if _, err := b.v.Client.Sys().ReloadPluginWithContext(ctx, &api.ReloadPluginInput{Mounts: []string{"keybroker"}}); err != nil {
		b.note(fmt.Sprintf("%s: not measured, reloading the plugin failed: %v", what, err))
		return
	}
	// The reload is done once the mount answers again.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err := b.v.Client.Logical().ReadWithContext(ctx, "keybroker/config"); err == nil {
			break
		}
	}
	cold, err := b.timeSync(ctx, "sync-cold", upstream)
	if err != nil {
		b.note(fmt.Sprintf("%s: not measured: %v", what, err))
		return
	}
	b.note(fmt.Sprintf("%s: %s", what, cold))
}

// note adds a note, and logs it at once (a long section's figures are not
// lost to a later failure).
func (b *bench) note(s string) {
	log("%s", s)
	b.notes = append(b.notes, s)
}

// syncRun is one fresh sidecar's sync.
type syncRun struct {
	records float64
	took    time.Duration // from the process's start to holding every record
	gauge   float64       // the sidecar's own keybroker_sidecar_key_records_sync_seconds
	rss     int64
}

func (r syncRun) String() string {
	return fmt.Sprintf("%.0f records in %s from start (its own sync_seconds: %.1f s), %.1f µs a record, peak RSS %.1f MiB",
		r.records, r.took.Round(time.Millisecond), r.gauge, 1e6*r.took.Seconds()/r.records, float64(r.rss)/(1<<20))
}

// timeSync starts a fresh sidecar and waits until it has read the whole
// snapshot.
func (b *bench) timeSync(ctx context.Context, name, upstream string) (syncRun, error) {
	log("a fresh sidecar (%s) reads the key-record snapshot", name)
	start := time.Now()
	sc, err := b.startSidecar(ctx, name, upstream, "")
	if err != nil {
		if logged, rerr := os.ReadFile(filepath.Join(b.dir, name+".log")); rerr == nil {
			err = fmt.Errorf("%w; its log ends: %s", err, logged[max(0, len(logged)-1500):])
		}
		return syncRun{}, err
	}
	defer stop(sc.cmd)
	for deadline := start.Add(15 * time.Minute); gauge(sc.auth, "keybroker_sidecar_key_records_sync_seconds") == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return syncRun{}, fmt.Errorf("sidecar %s did not read the snapshot within 15 minutes", name)
		}
	}
	r := syncRun{took: time.Since(start), records: gauge(sc.auth, "keybroker_sidecar_key_records"),
		gauge: gauge(sc.auth, "keybroker_sidecar_key_records_sync_seconds")}
	if r.rss, err = peakRSS(sc.cmd.Process.Pid); err != nil {
		return r, err
	}
	return r, nil
}

// mintUpTo mints keys of role bulk until the run holds n of them (those
// the main run minted count), syncMintWorkers mintKeys at once.
func (b *bench) mintUpTo(ctx context.Context, n int) error {
	missing := n - len(b.keys)
	if missing <= 0 {
		return nil
	}
	log("minting %d keys, to %d", missing, n)
	start := time.Now()
	got := make([][]string, syncMintWorkers)
	errs := make(chan error, syncMintWorkers)
	for w := range got {
		go func() {
			var err error
			got[w], err = b.mintKeys(ctx, nil, missing/syncMintWorkers+min(1, max(0, missing%syncMintWorkers-w)))
			errs <- err
		}()
	}
	for range got {
		if err := <-errs; err != nil {
			return err
		}
	}
	for _, g := range got {
		b.keys = append(b.keys, g...)
	}
	took := time.Since(start)
	b.note(fmt.Sprintf("%d keys minted in %s (%.0f a second) for the sync section", missing, took.Round(time.Second), float64(missing)/took.Seconds()))
	return nil
}
