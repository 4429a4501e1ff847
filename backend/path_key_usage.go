package backend

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// Last used. Sidecars decide without Vault, so only they see a key used:
// each reports, once per usage_report_interval, the keys it saw since its
// last report (aggregated: when last, from where, how many times), and the
// plugin keeps last_used_at, last_used_from and a count per day per key.
//
// A report's cost is bounded whatever its size: the use of keys is kept in
// usageShards entries (a key's shard is a hash of its key_id), and a report
// reads and writes each shard it touches once, under that shard's own
// lock, never under the lock revocations take: a 10,000-key report is at
// most 256 writes (and one for its id), and a revocation never waits for
// one. A report carries a report_id, kept an hour or two: the same report
// sent again (a retry after a lost answer) is answered duplicate and
// counted once.

const (
	// maxUsageEntries bounds one report.
	maxUsageEntries = contract.MaxKeyUsageEntries
	// usageDays is how many days of counts a key keeps.
	usageDays = 30
	// maxUsageCount bounds one report's count for a key: more requests
	// than a sidecar could serve in a day.
	maxUsageCount = 1 << 40

	// usageShards: a report writes at most this many entries; each holds
	// the use of about 1/usageShards of the keys used.
	usageShards = 256
	// usageShardMaxBytes keeps a shard well within integrated storage's
	// 1 MiB entry limit: past it, the oldest daily counts go first.
	usageShardMaxBytes = 768 << 10
	maxReportIDLength  = contract.MaxReportIDLength
	secondsPerDay      = 24 * 60 * 60
)

// usageShard holds the use of the keys whose key_id hashes to it.
type usageShard struct {
	Keys map[string]*keyUsage `json:"keys"`
}

// keyUsage is one key's use, in a shard: kept short, there are many.
type keyUsage struct {
	Last int64  `json:"l"` // Unix seconds
	From string `json:"f,omitempty"`
	// Days are [day (since 1970-01-01, UTC), requests], oldest first, the
	// newest usageDays of them.
	Days [][2]int64 `json:"u"`
}

// usageReportMark says a report (by its report_id) was recorded, or which
// shards of it were when its recording failed half-way.
type usageReportMark struct {
	Complete bool     `json:"complete,omitempty"`
	Done     []string `json:"done,omitempty"`
}

// keyUse is one day's requests of a key, as sidecars reported them.
type keyUse struct {
	Day   string `json:"day"` // YYYY-MM-DD, UTC
	Count int64  `json:"count"`
}

// usageEntry is one key in a sidecar's report.
type usageEntry = contract.KeyUse

func pathKeyUsage(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: contract.PathKeyUsage + "$",
		Fields: map[string]*framework.FieldSchema{
			contract.FieldUsage: {
				Type:        framework.TypeString,
				Description: fmt.Sprintf("JSON array of {key_id, last (Unix seconds), from (client address), count}: the API keys a verifier saw used since its last report, at most %d.", maxUsageEntries),
			},
			contract.FieldReportID: {
				Type:        framework.TypeString,
				Description: fmt.Sprintf("The report's id (1 to %d letters, digits, '-', '_'), random per report and the same when the report is sent again: a report already recorded with this id in the last hour is answered duplicate and not counted again. Without it, a report sent twice counts twice.", maxReportIDLength),
			},
		},
		DisplayAttrs: pathAttrs("key-usage"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("report", "", b.pathKeyUsageWrite, answers(map[string]*framework.FieldSchema{
				contract.FieldRecorded:  out(framework.TypeInt, "Keys whose last use was recorded."),
				contract.FieldSkipped:   out(framework.TypeInt, "Entries skipped: not a key_id, a count or time that makes no sense, or a key unknown, revoked or expired."),
				contract.FieldDuplicate: out(framework.TypeBool, "The report_id was recorded already: nothing was counted again."),
			})),
		},
		HelpSynopsis: "Verifiers: report which API keys were used (for last_used_at).",
		HelpDescription: `keybroker-sidecar calls this once per usage_report_interval with the keys
it let through since its last call. The plugin keeps, on each key,
last_used_at, last_used_from and a count per day (the last 30 days), shown
by keys/id/<key_id>; keys/id/ lists keys unused for a while with
unused_for. Entries that make no sense, and keys unknown, revoked or
expired, are skipped (counted in skipped), not the report.

A report costs one read of each key it names and at most 257 storage writes
however many keys it names: uses are kept in 256 shards by key_id, each
written once per report under its own lock (never the lock revocations
take), and the report_id once. A report sent again with the same report_id
within the hour is answered duplicate=true and counted once.`,
	}
}

// pathKeyUsageWrite adapts a key-usage report into recordKeyUsage.
func (b *backend) pathKeyUsageWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	ans, err := b.meters.recordKeyUsage(ctx, req.Storage, req.EntityID, b.Logger(), contract.KeyUsageReport{
		Usage:    d.Get(contract.FieldUsage).(string),
		ReportID: d.Get(contract.FieldReportID).(string),
	})
	return respond(ans.Data, err)
}

// recordKeyUsage records a verifier's report of the keys it saw used;
// entity is the verifier's Vault entity, under which its report ids are
// kept.
func (mt *meters) recordKeyUsage(ctx context.Context, s logical.Storage, entity string, log hclog.Logger, in contract.KeyUsageReport) (*contract.KeyUsageAnswer, error) {
	var entries []usageEntry
	if err := json.Unmarshal([]byte(in.Usage), &entries); err != nil {
		return nil, refuse("usage must be a JSON array of {key_id, last, from, count}: %v", err)
	}
	if len(entries) > maxUsageEntries {
		return nil, refuse("usage: at most %d keys per report, got %d", maxUsageEntries, len(entries))
	}
	if in.ReportID != "" && !validReportID(in.ReportID) {
		return nil, refuse("report_id must be 1 to %d letters, digits, '-' or '_'", maxReportIDLength)
	}
	now := time.Now()
	rep := usageRecording{}
	if in.ReportID != "" {
		// Each verifier's ids apart: one that learnt another's id (a
		// log line) cannot have that one's report taken as a duplicate.
		rep.id = reportIDOf(entity, in.ReportID)
		// Held until the report is recorded: the same report sent again
		// meanwhile waits, then finds it recorded.
		l := locksutil.LockForKey(mt.usageReportLocks, rep.id)
		l.Lock()
		defer l.Unlock()
		var err error
		if rep.markPath, rep.mark, err = findUsageReport(ctx, s, rep.id, now); err != nil {
			return nil, err
		}
		if rep.mark != nil && rep.mark.Complete {
			return &contract.KeyUsageAnswer{Duplicate: true}, nil
		}
	}
	byShard, skipped, err := usesByShard(ctx, s, entries, now)
	if err != nil {
		return nil, err
	}
	if err := mt.recordShards(ctx, s, rep, byShard, now.UTC(), log); err != nil {
		return nil, err
	}
	return &contract.KeyUsageAnswer{Recorded: len(entries) - skipped, Skipped: skipped}, nil
}

// usageRecording is a report being recorded: its id (as kept: see
// reportIDOf; "" for a report without one), and the mark of a first
// attempt, if any, and where it is kept.
type usageRecording struct {
	id, markPath string
	mark         *usageReportMark
}

// usesByShard sorts the entries worth recording by the shard that keeps
// them, and counts the others.
//
// An entry that does not make sense is skipped, not the report: one bad
// entry (a verifier's clock ahead, say) must not make a verifier resend
// the same report for ever.
func usesByShard(ctx context.Context, s logical.Storage, entries []usageEntry, now time.Time) (map[string][]usageEntry, int, error) {
	valid := make([]usageEntry, 0, len(entries))
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		if validUse(e, now) {
			valid = append(valid, e)
			ids = append(ids, e.KeyID)
		}
	}
	skipped := len(entries) - len(valid)
	// Read without any lock: a key revoked meanwhile has this use kept
	// beside it, which changes nothing a verifier decides on.
	keys, err := getKeys(ctx, s, ids)
	if err != nil {
		return nil, 0, err
	}
	byShard := map[string][]usageEntry{}
	nowUTC := now.UTC()
	for i, e := range valid {
		k := keys[i]
		if k == nil || k.revoked() || !nowUTC.Before(k.ExpiresAt) || time.Unix(e.Last, 0).Before(k.CreatedAt.Add(-time.Minute)) {
			skipped++ // unknown, revoked, expired, or a use before the key existed
			continue
		}
		shard := usageShardPath(e.KeyID)
		byShard[shard] = append(byShard[shard], e)
	}
	return byShard, skipped, nil
}

// recordShards adds each shard's uses to it, but those a first attempt
// of the report recorded, then marks the report recorded.
func (mt *meters) recordShards(ctx context.Context, s logical.Storage, rep usageRecording, byShard map[string][]usageEntry, now time.Time, log hclog.Logger) error {
	shards := slices.Sorted(maps.Keys(byShard))
	var done []string
	if rep.mark != nil {
		done = rep.mark.Done
	}
	for _, shard := range shards {
		if slices.Contains(done, shard) {
			continue // recorded by this report's first attempt
		}
		if err := mt.addUsage(ctx, s, shard, byShard[shard], now, log); err != nil {
			if rep.id != "" && len(done) > 0 {
				// Its retry records only the rest (best effort: the
				// storage just failed).
				_ = putJSON(ctx, s, rep.markPath, &usageReportMark{Done: done})
			}
			return err
		}
		done = append(done, shard)
	}
	if rep.id != "" && len(shards) > 0 {
		// A report that recorded nothing leaves no mark: sent again, it
		// records nothing again, and a caller cannot write an entry per
		// request with empty reports.
		return putJSON(ctx, s, rep.markPath, &usageReportMark{Complete: true})
	}
	return nil
}

// validUse: a key_id, a count, a time not ahead of Vault's clock by more
// than the skew verifiers may have (clamped to now below), an address.
func validUse(e usageEntry, now time.Time) bool {
	if !apikey.ValidateID(e.KeyID) || e.Count < 1 || e.Count > maxUsageCount || e.Last <= 0 || time.Unix(e.Last, 0).After(now.Add(5*time.Minute)) {
		return false
	}
	if e.From != "" {
		// An address, written as Go writes it: no zone, which could be
		// any length and hold control characters that would bloat a shard
		// and reach an operator's terminal.
		a, err := netip.ParseAddr(e.From)
		if err != nil || a.Zone() != "" || a.String() != e.From {
			return false
		}
	}
	return true
}

// reportIDOf is where a verifier's report_id is remembered: under a hash
// of the caller's Vault entity (its token's when it has none), so that the
// ids of two verifiers never meet.
func reportIDOf(entity, id string) string {
	sum := sha256.Sum256([]byte(entity))
	return hex.EncodeToString(sum[:8]) + "-" + id
}

func validReportID(id string) bool {
	if len(id) == 0 || len(id) > maxReportIDLength {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// usageShardPath is the shard that holds key id's use.
func usageShardPath(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return fmt.Sprintf("%s%02x", usageShardPrefix, h.Sum32()%usageShards)
}

// addUsage adds a report's entries of one shard to it, under the shard's
// lock (two reports at once each add theirs).
func (mt *meters) addUsage(ctx context.Context, s logical.Storage, shard string, entries []usageEntry, now time.Time, log hclog.Logger) error {
	l := locksutil.LockForKey(mt.usageLocks, shard)
	l.Lock()
	defer l.Unlock()
	sh, err := getJSON[usageShard](ctx, s, shard)
	if err != nil {
		return err
	}
	if sh == nil {
		sh = &usageShard{}
	}
	if sh.Keys == nil {
		sh.Keys = make(map[string]*keyUsage, len(entries))
	}
	for _, e := range entries {
		u := sh.Keys[e.KeyID]
		if u == nil {
			u = &keyUsage{}
			sh.Keys[e.KeyID] = u
		}
		u.add(minTime(time.Unix(e.Last, 0).UTC(), now), e.From, e.Count)
	}
	v, err := json.Marshal(sh)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", shard, err)
	}
	if len(v) > usageShardMaxBytes {
		// Hundreds of thousands of keys in use: keep what each was last
		// used at and from (what unused_for decides on), and fewer days
		// of counts, rather than fail at the storage's entry limit.
		for days := usageDays / 2; len(v) > usageShardMaxBytes && days >= 1; days /= 2 {
			for _, u := range sh.Keys {
				if len(u.Days) > days {
					u.Days = u.Days[len(u.Days)-days:]
				}
			}
			if v, err = json.Marshal(sh); err != nil {
				return fmt.Errorf("encoding %s: %w", shard, err)
			}
		}
		log.Warn("so many keys are in use that their oldest daily counts were dropped to keep their last use", "shard", shard, "keys", len(sh.Keys))
	}
	if err := s.Put(ctx, &logical.StorageEntry{Key: shard, Value: v}); err != nil {
		return fmt.Errorf("storing %s: %w", shard, err)
	}
	return nil
}

func (u *keyUsage) add(at time.Time, from string, count int64) {
	if at.Unix() > u.Last {
		u.Last, u.From = at.Unix(), from
	}
	day := at.Unix() / secondsPerDay
	i, found := slices.BinarySearchFunc(u.Days, day, func(d [2]int64, t int64) int { return cmp.Compare(d[0], t) })
	if found {
		u.Days[i][1] = min(u.Days[i][1], math.MaxInt64-count) + count // saturating
	} else {
		u.Days = slices.Insert(u.Days, i, [2]int64{day, count})
	}
	if len(u.Days) > usageDays {
		u.Days = u.Days[len(u.Days)-usageDays:] // the newest days
	}
}

// findUsageReport finds report id's mark, in this hour's bucket or the
// last's; path is where it is, or where to write it.
func findUsageReport(ctx context.Context, s logical.Storage, id string, now time.Time) (path string, mark *usageReportMark, err error) {
	hour := now.Unix() / 3600
	for _, h := range []int64{hour, hour - 1} {
		p := fmt.Sprintf("%s%d/%s", usageReportPrefix, h, id)
		if mark, err = getJSON[usageReportMark](ctx, s, p); err != nil || mark != nil {
			return p, mark, err
		}
	}
	return fmt.Sprintf("%s%d/%s", usageReportPrefix, hour, id), nil, nil
}

// usageOf reads the use of the keys ids, each shard once.
func usageOf(ctx context.Context, s logical.Storage, ids []string) (map[string]*keyUsage, error) {
	shards := map[string]*usageShard{}
	uses := map[string]*keyUsage{}
	for _, id := range ids {
		p := usageShardPath(id)
		sh, read := shards[p]
		if !read {
			var err error
			if sh, err = getJSON[usageShard](ctx, s, p); err != nil {
				return nil, err
			}
			shards[p] = sh
		}
		if sh != nil && sh.Keys[id] != nil {
			uses[id] = sh.Keys[id]
		}
	}
	return uses, nil
}

// withUsage adds u, the key's use from its shard, to what k's record holds
// (keys used before uses were kept in shards hold theirs), for a read: k is
// not written back.
func (k *keyEntry) withUsage(u *keyUsage) {
	if u == nil {
		return
	}
	if at := time.Unix(u.Last, 0).UTC(); at.After(k.LastUsedAt) {
		k.LastUsedAt, k.LastUsedFrom = at, u.From
	}
	uses := slices.Clone(k.Uses)
	for _, d := range u.Days {
		day := time.Unix(d[0]*secondsPerDay, 0).UTC().Format(time.DateOnly)
		i, found := slices.BinarySearchFunc(uses, day, func(u keyUse, d string) int { return strings.Compare(u.Day, d) })
		if found {
			uses[i].Count = min(uses[i].Count, math.MaxInt64-d[1]) + d[1]
		} else {
			uses = slices.Insert(uses, i, keyUse{Day: day, Count: d[1]})
		}
	}
	if len(uses) > usageDays {
		uses = uses[len(uses)-usageDays:]
	}
	k.Uses = uses
}

// tidyUsage drops the use of keys no longer stored, and report ids older
// than the window.
func (mt *meters) tidyUsage(ctx context.Context, s logical.Storage, now time.Time) error {
	ids, err := s.List(ctx, keyPrefix)
	if err != nil {
		return fmt.Errorf("listing keys: %w", err)
	}
	live := make(map[string]bool, len(ids))
	for _, id := range ids {
		live[id] = true
	}
	shards, err := s.List(ctx, usageShardPrefix)
	if err != nil {
		return fmt.Errorf("listing key use: %w", err)
	}
	for _, name := range shards {
		if err := mt.tidyUsageShard(ctx, s, usageShardPrefix+name, live); err != nil {
			return err
		}
	}
	hours, err := s.List(ctx, usageReportPrefix)
	if err != nil {
		return fmt.Errorf("listing key-usage reports: %w", err)
	}
	for _, h := range hours {
		n, err := strconv.ParseInt(strings.TrimSuffix(h, "/"), 10, 64)
		if err == nil && n >= now.Unix()/3600-1 {
			continue // still in the window
		}
		marks, err := s.List(ctx, usageReportPrefix+h)
		if err != nil {
			return fmt.Errorf("listing key-usage reports: %w", err)
		}
		for _, m := range marks {
			if err := s.Delete(ctx, usageReportPrefix+h+m); err != nil {
				return fmt.Errorf("deleting a key-usage report id: %w", err)
			}
		}
	}
	return nil
}

func (mt *meters) tidyUsageShard(ctx context.Context, s logical.Storage, shard string, live map[string]bool) error {
	l := locksutil.LockForKey(mt.usageLocks, shard)
	l.Lock()
	defer l.Unlock()
	sh, err := getJSON[usageShard](ctx, s, shard)
	if err != nil || sh == nil {
		return err
	}
	changed := false
	for id := range sh.Keys {
		if live[id] {
			continue
		}
		// Not in the listing: gone, or minted since (a Get tells).
		if k, err := getKey(ctx, s, id); err != nil {
			return err
		} else if k == nil {
			delete(sh.Keys, id)
			changed = true
		}
	}
	switch {
	case len(sh.Keys) == 0:
		if err := s.Delete(ctx, shard); err != nil {
			return fmt.Errorf("deleting %s: %w", shard, err)
		}
	case changed:
		return putJSON(ctx, s, shard, sh)
	}
	return nil
}

// usageData adds a key's last use to a read.
func (k *keyEntry) usageData(data map[string]interface{}) {
	uses := make([]map[string]interface{}, 0, len(k.Uses))
	for _, u := range k.Uses {
		uses = append(uses, map[string]interface{}{"day": u.Day, "count": u.Count})
	}
	data["uses"] = uses
	if !k.LastUsedAt.IsZero() {
		data["last_used_at"], data["last_used_from"] = k.LastUsedAt.Format(time.RFC3339), k.LastUsedFrom
	}
}

// unusedFor says whether a key was not used for d: never used since it was
// minted at least d ago, or last used at least d ago.
func (k *keyEntry) unusedFor(d time.Duration, now time.Time) bool {
	last := k.LastUsedAt
	if last.IsZero() {
		last = k.CreatedAt
	}
	return now.Sub(last) >= d
}
