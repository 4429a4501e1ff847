package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
)

// Last used. Sidecars decide without Vault, so only they see a key used:
// each reports, once per usage_report_interval, the keys it saw since its
// last report (aggregated: when last, from where, how many times), and the
// plugin keeps last_used_at, last_used_from and a count per day on the key.

const (
	// maxUsageEntries bounds one report.
	maxUsageEntries = 10000
	// usageDays is how many days of counts a key keeps.
	usageDays = 30
	// maxUsageCount bounds one report's count for a key: more requests
	// than a sidecar could serve in a day.
	maxUsageCount = 1 << 40
)

// keyUse is one day's requests of a key, as sidecars reported them.
type keyUse struct {
	Day   string `json:"day"` // YYYY-MM-DD, UTC
	Count int64  `json:"count"`
}

// usageEntry is one key in a sidecar's report.
type usageEntry struct {
	KeyID string `json:"key_id"`
	Last  int64  `json:"last"` // Unix seconds
	From  string `json:"from"`
	Count int64  `json:"count"`
}

func pathKeyUsage(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "key-usage$",
		Fields: map[string]*framework.FieldSchema{
			"usage": {
				Type:        framework.TypeString,
				Description: fmt.Sprintf("JSON array of {key_id, last (Unix seconds), from (client address), count}: the API keys a verifier saw used since its last report, at most %d.", maxUsageEntries),
			},
		},
		DisplayAttrs: pathAttrs("key-usage"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("report", "", b.pathKeyUsageWrite, answers(map[string]*framework.FieldSchema{
				"recorded": out(framework.TypeInt, "Keys whose last use was recorded."),
				"skipped":  out(framework.TypeInt, "Entries skipped: not a key_id, a count or time that makes no sense, or a key unknown, revoked or expired."),
			})),
		},
		HelpSynopsis: "Verifiers: report which API keys were used (for last_used_at).",
		HelpDescription: `keybroker-sidecar calls this once per usage_report_interval with the keys
it let through since its last call. The plugin keeps, on each key,
last_used_at, last_used_from and a count per day (the last 30 days), shown
by keys/id/<key_id>; keys/id/ lists keys unused for a while with
unused_for. Entries that make no sense, and keys unknown, revoked or
expired, are skipped (counted in skipped), not the report. Each entry
recorded is one storage write: a report costs as many writes as keys it
names.`,
	}
}

func (b *backend) pathKeyUsageWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	var entries []usageEntry
	if err := json.Unmarshal([]byte(d.Get("usage").(string)), &entries); err != nil {
		return logical.ErrorResponse("usage must be a JSON array of {key_id, last, from, count}: %v", err), nil
	}
	if len(entries) > maxUsageEntries {
		return logical.ErrorResponse("usage: at most %d keys per report, got %d", maxUsageEntries, len(entries)), nil
	}
	// An entry that does not make sense is skipped, not the report: one
	// bad entry (a verifier's clock ahead, say) must not make a verifier
	// resend the same report for ever.
	now := time.Now()
	recorded, skipped := 0, 0
	for _, e := range entries {
		if !validUse(e, now) {
			skipped++
			continue
		}
		ok, err := b.recordUse(ctx, req.Storage, e)
		if err != nil {
			return nil, err
		}
		if ok {
			recorded++
		} else {
			skipped++
		}
	}
	return &logical.Response{Data: map[string]interface{}{"recorded": recorded, "skipped": skipped}}, nil
}

// validUse: a key_id, a count, a time not ahead of Vault's clock by more
// than the skew verifiers may have (clamped to now below), an address.
func validUse(e usageEntry, now time.Time) bool {
	if !apikey.ValidateID(e.KeyID) || e.Count < 1 || e.Count > maxUsageCount || e.Last <= 0 || time.Unix(e.Last, 0).After(now.Add(5*time.Minute)) {
		return false
	}
	if e.From != "" {
		if _, err := netip.ParseAddr(e.From); err != nil {
			return false
		}
	}
	return true
}

// recordUse adds one report's use to its key, under the lock revocations
// take, so that a revocation meanwhile is never written over.
func (b *backend) recordUse(ctx context.Context, s logical.Storage, e usageEntry) (bool, error) {
	b.revocationMu.Lock()
	defer b.revocationMu.Unlock()
	k, err := b.getKey(ctx, s, e.KeyID)
	now := time.Now().UTC()
	if err != nil || k == nil || k.revoked() || !now.Before(k.ExpiresAt) {
		// Expired keys too: tidy may be deleting them, and a write here
		// would bring one back.
		return false, err
	}
	at := minTime(time.Unix(e.Last, 0).UTC(), now)
	if at.Before(k.CreatedAt.Add(-time.Minute)) {
		return false, nil // before the key existed
	}
	if at.After(k.LastUsedAt) {
		k.LastUsedAt, k.LastUsedFrom = at, e.From
	}
	day := at.Format(time.DateOnly)
	i, found := slices.BinarySearchFunc(k.Uses, day, func(u keyUse, d string) int { return strings.Compare(u.Day, d) })
	if found {
		k.Uses[i].Count = min(k.Uses[i].Count, math.MaxInt64-e.Count) + e.Count // saturating
	} else {
		k.Uses = slices.Insert(k.Uses, i, keyUse{Day: day, Count: e.Count})
	}
	if len(k.Uses) > usageDays {
		k.Uses = k.Uses[len(k.Uses)-usageDays:] // the newest days
	}
	// Not a change of the key's record: verifiers do not decide on it.
	return true, b.putKey(ctx, s, k)
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
