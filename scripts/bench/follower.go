package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/contract"
)

// The fan-out section's followers run in a process of their own (this
// binary, re-executed with followerEnv set), so that their CPU is not the
// bench's, and so that they hold their connections like N sidecars would:
// one connection per held read.
const (
	followerEnv = "KEYBROKER_BENCH_FOLLOWERS" // how many; set: run as followers
	// followRolesEnv: the followers hold only these roles' records (a
	// sidecar's key_replica_roles), e.g. "other" for a fleet that serves
	// none of the minted keys.
	followRolesEnv = "KEYBROKER_FANOUT_ROLES"
	// The sidecar's defaults (sidecar/vault.go, feed_keyrecords.go):
	// revocations held up to 20 s, key records up to max_stale/3 = 10 s, a
	// 100 ms pause after a page of changes, and revocation_poll_interval
	// (1 s) after an answer that came early with nothing new.
	followRevocationWait = 20 * time.Second
	followKeyRecordWait  = 10 * time.Second
	followBatch          = 100 * time.Millisecond
	followPoll           = time.Second
	// followRamp followers start each tenth of a second.
	followRamp = 25
	// beyondLast is a cursor past every change: a read of the changes after
	// it answers resync with the newest change and the epoch, the cursor a
	// sidecar that has just read the snapshot follows from, without reading
	// the records (the followers stand for sidecars already in sync; a
	// snapshot page after a high key_id may come from a listing ten minutes
	// old, and every follower would catch up ten minutes of changes).
	beyondLast = 1 << 62
)

func init() {
	if os.Getenv(followerEnv) == "" {
		return
	}
	if err := runFollowers(); err != nil {
		fmt.Fprintln(os.Stderr, "followers:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// followerStats is what the follower process prints, once a second.
type followerStats struct {
	Ready     bool   `json:"ready"`   // every follower has sent its first held read
	Answers   int64  `json:"answers"` // feed reads answered, both feeds
	Changes   int64  `json:"changes"` // key-record reads that brought changes
	Revoked   int64  `json:"revoked"` // revocations received, over all followers
	Errors    int64  `json:"errors"`  // reads that failed
	Held      int64  `json:"held"`    // reads out now
	Behind    int64  `json:"behind"`  // followers whose last page of changes was not the newest
	LastError string `json:"last_error,omitempty"`
}

// followers are N simulated sidecars following both feeds of one Vault.
type followers struct {
	client *http.Client
	base   string // <addr>/v1/<mount>/
	token  string
	stats  followerStats
	errMu  sync.Mutex
	sent   atomic.Int64 // followers whose both feeds have a held read out
}

func runFollowers() error {
	n, err := strconv.Atoi(os.Getenv(followerEnv))
	if err != nil || n <= 0 {
		return fmt.Errorf("%s=%q: want a number of followers", followerEnv, os.Getenv(followerEnv))
	}
	f := &followers{
		// One connection per held read, as N sidecars have.
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * n, MaxIdleConns: 2 * n, IdleConnTimeout: time.Minute}},
		base:   os.Getenv("VAULT_ADDR") + "/v1/" + os.Getenv("KEYBROKER_MOUNT") + "/",
		token:  os.Getenv("VAULT_TOKEN"),
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(2)
		var started sync.WaitGroup
		started.Add(2)
		go func() { defer wg.Done(); f.followRevocations(ctx, &started) }()
		go func() { defer wg.Done(); f.followKeyRecords(ctx, &started) }()
		go func() { started.Wait(); f.sent.Add(1) }()
		if i%followRamp == followRamp-1 {
			// A fleet does not start in one instant; at this pace 5,000
			// take 20 s (faster, this machine's Vault falls behind and
			// every follower's first held read times out).
			time.Sleep(time.Second / 10)
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	enc := json.NewEncoder(os.Stdout)
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-tick.C:
			s := f.snapshot()
			s.Ready = f.sent.Load() == int64(n)
			_ = enc.Encode(s)
		}
	}
}

func (f *followers) snapshot() followerStats {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return followerStats{Answers: atomic.LoadInt64(&f.stats.Answers), Changes: atomic.LoadInt64(&f.stats.Changes),
		Revoked: atomic.LoadInt64(&f.stats.Revoked), Errors: atomic.LoadInt64(&f.stats.Errors),
		Held: atomic.LoadInt64(&f.stats.Held), Behind: atomic.LoadInt64(&f.stats.Behind), LastError: f.stats.LastError}
}

// followRevocations follows the revocation feed as the sidecar does
// (sidecar/feed_revocations.go): from cursor 0 at once, then held reads.
func (f *followers) followRevocations(ctx context.Context, started *sync.WaitGroup) {
	var cursor uint64
	var wait time.Duration
	once := sync.OnceFunc(started.Done)
	defer once()
	for ctx.Err() == nil {
		var page contract.FeedPage
		q := url.Values{contract.FieldAfter: {strconv.FormatUint(cursor, 10)}}
		asked := time.Now()
		if wait > 0 {
			once()
		}
		if !f.read(ctx, contract.PathRevocations, q, wait, &page) {
			wait = 0
			sleep(ctx, retryWait())
			continue
		}
		atomic.AddInt64(&f.stats.Revoked, int64(len(page.Revocations)))
		nothingNew := page.Next == cursor
		if page.Last < cursor {
			page.Next = 0 // storage went back: from the start
		}
		cursor = page.Next
		pace(ctx, page.More, wait, nothingNew, asked)
		wait = followRevocationWait
	}
}

// followKeyRecords follows the key-record changes as the sidecar does
// (sidecar/feed_keyrecords.go followChanges), from the newest change.
func (f *followers) followKeyRecords(ctx context.Context, started *sync.WaitGroup) {
	once := sync.OnceFunc(started.Done)
	defer once()
	for ctx.Err() == nil {
		var start contract.KeyRecordsPage
		q := url.Values{contract.FieldAfter: {strconv.FormatUint(beyondLast, 10)}, contract.FieldEpoch: {"-"}}
		if !f.read(ctx, contract.PathKeyRecords, q, 0, &start) {
			sleep(ctx, retryWait())
			continue
		}
		cursor, epoch := start.Last, start.Epoch
		var wait time.Duration
		behind := false
		for ctx.Err() == nil {
			var page contract.KeyRecordsPage
			q := url.Values{contract.FieldAfter: {strconv.FormatUint(cursor, 10)}, contract.FieldEpoch: {epoch}}
			if roles := os.Getenv(followRolesEnv); roles != "" {
				q.Set(contract.FieldRoles, roles)
			}
			asked := time.Now()
			if wait > 0 {
				once()
			}
			if !f.read(ctx, contract.PathKeyRecords, q, wait, &page) {
				wait = 0
				sleep(ctx, retryWait())
				continue
			}
			if page.Resync || page.Epoch != epoch {
				if behind {
					atomic.AddInt64(&f.stats.Behind, -1)
				}
				break
			}
			nothingNew := page.Next == cursor
			cursor = page.Next
			if now := cursor < page.Last; now != behind {
				behind = now
				atomic.AddInt64(&f.stats.Behind, map[bool]int64{true: 1, false: -1}[now])
			}
			pace(ctx, page.More, wait, nothingNew, asked)
			if !nothingNew && !page.More {
				atomic.AddInt64(&f.stats.Changes, 1)
				sleep(ctx, followBatch)
			}
			wait = followKeyRecordWait
		}
	}
}

// retryWait is the sidecar's wait after a failed read (feedHealth.retryIn):
// followPoll spread over [followPoll/2, 3*followPoll/2).
func retryWait() time.Duration { return followPoll/2 + rand.N(followPoll) }

// pace is the sidecar's paceFeed with long polls on.
func pace(ctx context.Context, more bool, wait time.Duration, nothingNew bool, asked time.Time) {
	if !more && wait > 0 && nothingNew && time.Since(asked) < wait/2 {
		sleep(ctx, followPoll)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// read GETs a feed path with the headers the sidecar's Vault client sends,
// decoding the answer's data into out.
func (f *followers) read(ctx context.Context, path string, q url.Values, wait time.Duration, out any) bool {
	if wait > 0 {
		q.Set(contract.FieldWait, strconv.FormatInt(int64(wait/time.Second), 10))
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+5*time.Second)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.base+path+"?"+q.Encode(), nil)
	if err != nil {
		return f.fail(err)
	}
	req.Header.Set("X-Vault-Token", f.token)
	req.Header.Set("X-Vault-Request", "true")
	atomic.AddInt64(&f.stats.Held, 1)
	resp, err := f.client.Do(req)
	atomic.AddInt64(&f.stats.Held, -1)
	if err != nil {
		if ctx.Err() != nil && wait == 0 {
			return false
		}
		return f.fail(err)
	}
	defer resp.Body.Close()
	var body struct {
		Data json.RawMessage `json:"data"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return f.fail(fmt.Errorf("%s: %d %s", path, resp.StatusCode, b))
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return f.fail(err)
	}
	if err := json.Unmarshal(body.Data, out); err != nil {
		return f.fail(err)
	}
	atomic.AddInt64(&f.stats.Answers, 1)
	return true
}

func (f *followers) fail(err error) bool {
	atomic.AddInt64(&f.stats.Errors, 1)
	f.errMu.Lock()
	f.stats.LastError = err.Error()
	f.errMu.Unlock()
	return false
}
