package backend

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/errgroup"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// The key-record feed lets a verifier hold what it needs of every live API
// key and verify keys without asking Vault: a snapshot, read in pages by
// key_id, then the changes since, by cursor.
//
// The changes are kept in memory on the active node, where every write to a
// key happens (mint, renewal, revocation, budget change), not in storage: a
// mint costs no extra storage write, and a change's record is read from
// storage when a verifier asks for it, so it is the key as it is then. The
// price is that the changes end with the process: each backend instance
// starts a new epoch, and a verifier that sees a new epoch reads the
// snapshot again (a leadership change, a plugin restart, a reload), keeping
// what it holds until the new snapshot replaces it.
const (
	// keyChangesHeld is how many changes the active node keeps; a verifier
	// further behind reads the snapshot again.
	keyChangesHeld = 1 << 17
	// A new snapshot starts from a listing of keys/ at most this old;
	// later pages of it may use an older one, down to keyListingMaxAge.
	keyListingFresh  = 15 * time.Second
	keyListingMaxAge = 10 * time.Minute
	// expiredRecordGrace: the snapshot still has keys expired this
	// recently, so that a verifier answers "expired" for them, as
	// keybroker/verify does, rather than "invalid".
	expiredRecordGrace = 5 * time.Minute
	// snapshotScan is the most key_ids one snapshot page reads when a
	// filter passes few of them.
	snapshotScan = 5 * contract.MaxKeyRecordPage
	// keyReadConcurrency is how many storage reads one page makes at once.
	keyReadConcurrency = 8
	// maxRecordFilter is the most roles or tenants a reader may name.
	maxRecordFilter = 100
)

// keyChanges are the ids of the keys changed on this node, in order.
type keyChanges struct {
	epoch string
	wake  feedWaiters

	mu   sync.Mutex
	last uint64
	ring []string // ring[seq % keyChangesHeld]; "" marks a tenant ceiling change
}

func newKeyChanges() *keyChanges {
	epoch, err := uuid.GenerateUUID()
	if err != nil {
		// Only a broken random source gets here; a time-based epoch is
		// still new for this process.
		epoch = "t" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return &keyChanges{epoch: epoch}
}

// add records that key id changed (after the change is stored) and wakes
// the readers waiting for a change.
func (c *keyChanges) add(id string) {
	c.mu.Lock()
	if c.ring == nil {
		c.ring = make([]string, keyChangesHeld)
	}
	c.last++
	c.ring[c.last%keyChangesHeld] = id
	c.mu.Unlock()
	c.wake.wake()
}

func (c *keyChanges) lastSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// keyChange is a changed key and the first change of it in a page.
type keyChange struct {
	id  string
	seq uint64
}

// since returns the distinct keys changed after cursor after, in at most n
// changes, with the cursor past them and the newest change. held is false
// when after is older than what is kept, or newer than any change (from
// another epoch).
func (c *keyChanges) since(after uint64, n int) (changed []keyChange, next, last uint64, held bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	last = c.last
	if after > last || last-after > keyChangesHeld {
		return nil, after, last, false
	}
	next = min(last, after+uint64(n))
	seen := make(map[string]bool, next-after)
	for seq := after + 1; seq <= next; seq++ {
		if id := c.ring[seq%keyChangesHeld]; id != "" && !seen[id] { // "": a tenant ceiling, read with every page
			seen[id] = true
			changed = append(changed, keyChange{id, seq})
		}
	}
	return changed, next, last, true
}

// keyListing is a sorted listing of keys/ for snapshots, shared by every
// reader, with the change cursor read just before it was taken: a key
// missing from it was stored later, and so changed after that cursor.
type keyListing struct {
	ids    []string
	cursor uint64
	at     time.Time
}

func pathKeyRecords(b *backend) []*framework.Path {
	filters := map[string]*framework.FieldSchema{
		contract.FieldRoles: {
			Type:        framework.TypeCommaStringSlice,
			Description: fmt.Sprintf("Only keys of these roles (at most %d). Default: every role.", maxRecordFilter),
		},
		contract.FieldTenants: {
			Type:        framework.TypeCommaStringSlice,
			Description: fmt.Sprintf("Only keys of these tenants (at most %d). Default: every tenant.", maxRecordFilter),
		},
	}
	changes := map[string]*framework.FieldSchema{
		contract.FieldAfter: {
			Type:        framework.TypeInt64,
			Description: "Cursor: the changes after this one. Start with the snapshot's cursor, then pass the previous answer's next.",
		},
		contract.FieldEpoch: {
			Type:        framework.TypeString,
			Description: "The epoch the cursor belongs to; when it is not the current one the answer says resync.",
		},
		contract.FieldWait: {
			Type:        framework.TypeDurationSecond,
			Description: fmt.Sprintf("Long poll: when nothing follows after, wait up to this long (at most %s) and answer as soon as a key changes. Default 0: answer at once.", maxFeedWait),
		},
	}
	snapshot := map[string]*framework.FieldSchema{
		contract.FieldAfterID: {
			Type:        framework.TypeString,
			Description: "Page cursor: the records of key_ids after this one. Start with none, then pass the previous answer's next_id.",
		},
	}
	for k, v := range filters {
		changes[k], snapshot[k] = v, v
	}
	return []*framework.Path{
		{
			Pattern:      contract.PathKeyRecordsSnapshot + "/?$",
			Fields:       snapshot,
			DisplayAttrs: pathAttrs("key-records-snapshot"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathKeyRecordsSnapshot, answers(keyRecordsAnswerFields())),
			},
			HelpSynopsis:    "Read every live API key's record, for a verifier, in pages.",
			HelpDescription: keyRecordsHelp,
		},
		{
			Pattern:      contract.PathKeyRecords + "/?$",
			Fields:       changes,
			DisplayAttrs: pathAttrs("key-record-changes"),
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: operation(b.pathKeyRecordsChanges, answers(keyRecordsAnswerFields())),
			},
			HelpSynopsis:    "Follow changes to API key records, for a verifier.",
			HelpDescription: keyRecordsHelp,
		},
	}
}

var keyRecordsHelp = fmt.Sprintf(`A verifier (keybroker-sidecar) holds a record of each live API key, so it
verifies keys without asking Vault: key_id, the SHA-256 of the key (never the
key), role, scopes, bound_cidrs, tenant, expires_at, revoked, suspended (on
its own), and the key's budget and rate limit (no name or metadata: a
verifier does not decide on them). Each answer also lists metered_tenants,
the tenants with a budget ceiling: a key is metered when its budget.units is
above 0 or its tenant is among them; and suspended_roles: a key of one of
them is refused as suspended, whatever its record says.

key-records/snapshot returns the records in pages of at most %d (and about
4 MB) by key_id:
start with no after_id, then pass each answer's next_id while more is true.
Then follow key-records from the first page's cursor, passing the epoch with
it (required with after > 0): each change is the
changed key's record as it is when read (mint, renewal, revocation, budget
change), or gone for a key no longer stored. Changes are kept in memory on
the active node, the last %d of them: an answer with resync=true (the cursor
is older than that, or of another epoch) means read the snapshot again. The
epoch is new each time the mount starts on a node.

roles and tenants limit both to the keys of those roles or tenants, for a
verifier that serves only them; it then refuses every other key. Expired
keys drop out %s after they expire; a verifier drops them itself.

    vault read keybroker/key-records/snapshot
    vault read keybroker/key-records after=<cursor> epoch=<epoch> wait=20s`, contract.MaxKeyRecordPage, keyChangesHeld, expiredRecordGrace)

// recordFilter is a reader's roles and tenants.
type recordFilter struct{ roles, tenants []string }

func parseRecordFilter(d *framework.FieldData) (recordFilter, error) {
	f := recordFilter{roles: d.Get(contract.FieldRoles).([]string), tenants: d.Get(contract.FieldTenants).([]string)}
	for field, names := range map[string][]string{"roles": f.roles, "tenants": f.tenants} {
		if len(names) > maxRecordFilter {
			return f, fmt.Errorf("%s: at most %d names, got %d", field, maxRecordFilter, len(names))
		}
		for _, n := range names {
			if err := validateText(field, n, maxNameLength); err != nil || strings.TrimSpace(n) == "" {
				return f, fmt.Errorf("%s: %q is not a name", field, n)
			}
		}
	}
	return f, nil
}

func (f recordFilter) passes(k *keyEntry) bool {
	return (len(f.roles) == 0 || slices.Contains(f.roles, k.Role)) &&
		(len(f.tenants) == 0 || slices.Contains(f.tenants, k.Tenant))
}

func (f recordFilter) String() string {
	return strings.Join(f.roles, ",") + "\x00" + strings.Join(f.tenants, ",")
}

func (b *backend) pathKeyRecordsChanges(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	after, wait, bad := feedRead(d)
	if bad != nil {
		return bad, nil
	}
	f, err := parseRecordFilter(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	epoch := d.Get(contract.FieldEpoch).(string)
	if after > 0 && epoch == "" {
		return logical.ErrorResponse("epoch is required with after: pass the epoch of the answer the cursor came from"), nil
	}
	c := b.keyChanges
	// Taken before reading, so that a change during the read wakes the
	// wait below; the read shares only with reads that began after it.
	woken, gen := c.wake.next()
	page, err := b.keyChangesPageShared(ctx, req.Storage, uint64(after), epoch, f, gen)
	if err != nil || wait == 0 || page.Resync || page.Next != uint64(after) {
		return keyRecordsResponse(page), err
	}
	if !waitForWake(ctx, woken, wait) {
		return keyRecordsResponse(page), nil
	}
	page, err = b.keyChangesPageShared(ctx, req.Storage, uint64(after), epoch, f, c.wake.generation())
	return keyRecordsResponse(page), err
}

// keyChangesPageShared is keyChangesPage, with reads of the same cursor and
// filter at the same time sharing one: every verifier that is up to date
// waits at the same cursor, so a change wakes them all into one read. gen is
// the wake generation the reader saw: a read begun before a change it was
// not woken for must not answer it.
func (b *backend) keyChangesPageShared(ctx context.Context, s logical.Storage, after uint64, epoch string, f recordFilter, gen uint64) (*contract.KeyRecordsPage, error) {
	key := fmt.Sprintf("changes\x00%d\x00%d\x00%s\x00%s", after, gen, epoch, f)
	v, err, _ := b.keyRecordReads.Do(key, func() (interface{}, error) {
		return b.keyChangesPage(context.WithoutCancel(ctx), s, after, epoch, f)
	})
	if err != nil {
		return nil, err
	}
	return v.(*contract.KeyRecordsPage), nil // shared, read only
}

func (b *backend) keyChangesPage(ctx context.Context, s logical.Storage, after uint64, epoch string, f recordFilter) (*contract.KeyRecordsPage, error) {
	c := b.keyChanges
	page := &contract.KeyRecordsPage{Epoch: c.epoch, Records: []contract.KeyRecord{}, MeteredTenants: []string{}, SuspendedRoles: []string{}}
	changed, next, last, held := c.since(after, contract.MaxKeyRecordPage)
	page.Next, page.Last = next, last
	if !held || (epoch != "" && epoch != c.epoch) {
		page.Resync, page.Next = true, after
		return page, nil
	}
	ids := make([]string, len(changed))
	for i, ch := range changed {
		ids[i] = ch.id
	}
	keys, err := b.getKeys(ctx, s, ids)
	if err != nil {
		return nil, err
	}
	size := 0
	for i, k := range keys {
		rec := contract.KeyRecord{KeyID: ids[i], Gone: true}
		if k != nil {
			if !f.passes(k) {
				continue
			}
			rec = k.record()
		}
		if size += recordSize(k); size > contract.MaxKeyRecordPageBytes && len(page.Records) > 0 {
			// The page ends before this key's first change; the
			// next read starts there.
			page.Next = changed[i].seq - 1
			break
		}
		page.Records = append(page.Records, rec)
	}
	page.More = page.Next < last
	// Every page says which tenants are metered and which roles are
	// suspended: a ceiling change or a role's suspension wakes readers,
	// and they learn it from the lists, not from records.
	if page.MeteredTenants, err = s.List(ctx, tenantPrefix); err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	if page.SuspendedRoles, err = suspendedRoles(ctx, s, f); err != nil {
		return nil, err
	}
	return page, nil
}

func (b *backend) pathKeyRecordsSnapshot(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	afterID := d.Get(contract.FieldAfterID).(string)
	if afterID != "" && !apikey.ValidateID(afterID) {
		return logical.ErrorResponse("after_id %q is not a key_id (12 base62 characters)", afterID), nil
	}
	f, err := parseRecordFilter(d)
	if err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	maxAge := keyListingMaxAge
	if afterID == "" {
		maxAge = keyListingFresh
	}
	l, err := b.keyListingNoOlder(ctx, req.Storage, maxAge)
	if err != nil {
		return nil, err
	}
	// Every sidecar reading the snapshot (all of them, after a failover)
	// walks the same pages of the same listing: they share the reads.
	key := fmt.Sprintf("snapshot\x00%d\x00%s\x00%s", l.at.UnixNano(), afterID, f)
	v, err, _ := b.keyRecordReads.Do(key, func() (interface{}, error) {
		return b.snapshotPage(context.WithoutCancel(ctx), req.Storage, l, afterID, f)
	})
	if err != nil {
		return nil, err
	}
	return keyRecordsResponse(v.(*contract.KeyRecordsPage)), nil
}

// snapshotPage reads the page of listing l after key_id afterID: at most
// MaxKeyRecordPage records, about MaxKeyRecordPageBytes, and snapshotScan
// key_ids looked at.
func (b *backend) snapshotPage(ctx context.Context, s logical.Storage, l *keyListing, afterID string, f recordFilter) (*contract.KeyRecordsPage, error) {
	page := &contract.KeyRecordsPage{Epoch: b.keyChanges.epoch, Cursor: l.cursor, Records: []contract.KeyRecord{}}
	i := sort.SearchStrings(l.ids, afterID)
	if i < len(l.ids) && l.ids[i] == afterID {
		i++
	}
	now := time.Now()
	size, scanned, full := 0, 0, false
	for i < len(l.ids) && scanned < snapshotScan && len(page.Records) < contract.MaxKeyRecordPage && !full {
		ids := l.ids[i : i+min(contract.MaxKeyRecordPage-len(page.Records), len(l.ids)-i, snapshotScan-scanned)]
		keys, err := b.getKeys(ctx, s, ids)
		if err != nil {
			return nil, err
		}
		for j, k := range keys {
			if k != nil && f.passes(k) && now.Before(k.ExpiresAt.Add(expiredRecordGrace)) {
				if size += recordSize(k); size > contract.MaxKeyRecordPageBytes && len(page.Records) > 0 {
					full = true
					break
				}
				page.Records = append(page.Records, k.record())
			}
			page.NextID = ids[j]
			i++
			scanned++
		}
	}
	page.More = i < len(l.ids)
	var err error
	if page.MeteredTenants, err = s.List(ctx, tenantPrefix); err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	if page.SuspendedRoles, err = suspendedRoles(ctx, s, f); err != nil {
		return nil, err
	}
	return page, nil
}

// recordSize bounds the JSON size of k's record (nil: a gone record),
// counting each character of its variable strings as the six of their
// longest escape.
func recordSize(k *keyEntry) int {
	n := 400 // key_id, hash, expiry, limits and the field names
	if k == nil {
		return n
	}
	for _, s := range k.Scopes {
		n += 6*len(s) + 3
	}
	for _, c := range k.BoundCIDRs {
		n += 6*len(c) + 3
	}
	return n + 6*(len(k.Role)+len(k.Tenant))
}

// keyListingNoOlder returns the shared listing of keys/, taking a new one
// when it is older than maxAge. Readers asking at the same time share one.
func (b *backend) keyListingNoOlder(ctx context.Context, s logical.Storage, maxAge time.Duration) (*keyListing, error) {
	b.keyListMu.Lock()
	l := b.keyList
	b.keyListMu.Unlock()
	if l != nil && time.Since(l.at) < maxAge {
		return l, nil
	}
	v, err, _ := b.keyRecordReads.Do("listing", func() (interface{}, error) {
		cursor := b.keyChanges.lastSeq() // before the listing: see keyListing
		ids, err := s.List(context.WithoutCancel(ctx), keyPrefix)
		if err != nil {
			return nil, fmt.Errorf("listing keys: %w", err)
		}
		sort.Strings(ids)
		l := &keyListing{ids: ids, cursor: cursor, at: time.Now()}
		b.keyListMu.Lock()
		b.keyList = l
		b.keyListMu.Unlock()
		return l, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*keyListing), nil
}

// dropIdleKeyListing lets the listing go once no snapshot could use it.
func (b *backend) dropIdleKeyListing(now time.Time) {
	b.keyListMu.Lock()
	defer b.keyListMu.Unlock()
	if b.keyList != nil && now.Sub(b.keyList.at) >= keyListingMaxAge {
		b.keyList = nil
	}
}

// getKeys reads the keys with these ids, a few at a time; a missing key is
// nil in its place.
func (b *backend) getKeys(ctx context.Context, s logical.Storage, ids []string) ([]*keyEntry, error) {
	keys := make([]*keyEntry, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(keyReadConcurrency)
	for i, id := range ids {
		if !apikey.ValidateID(id) {
			continue // not written by us
		}
		g.Go(func() error {
			k, err := getKey(gctx, s, id)
			keys[i] = k
			return err
		})
	}
	return keys, g.Wait()
}

// record is what a verifier keeps of k.
func (k *keyEntry) record() contract.KeyRecord {
	budget, rate := k.limits.claims(true)
	return contract.KeyRecord{
		KeyID:      k.ID,
		Hash:       hex.EncodeToString(k.Hash),
		Role:       k.Role,
		Scopes:     nonNil(k.Scopes),
		BoundCIDRs: k.BoundCIDRs,
		Tenant:     k.Tenant,
		ExpiresAt:  k.ExpiresAt.UTC().Format(time.RFC3339),
		Revoked:    k.revoked(),
		Budget:     budget,
		RateLimit:  rate,
		JKT:        k.JKT,
		// Its own suspension only: its role's comes in the page's
		// suspended_roles, so that resuming a role changes no record.
		Suspended:  !k.SuspendedAt.IsZero(),
		ReplacedBy: k.ReplacedBy,
	}
}

// keyRecordsAnswerFields describe keyRecordsResponse, the answer of both
// the snapshot and the changes.
func keyRecordsAnswerFields() map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"records": out(framework.TypeSlice, "Key records: key_id, hash (hex SHA-256 of the key), role, scopes, bound_cidrs, tenant, expires_at, revoked, budget, rate_limit and jkt; "+
			"in the changes, gone=true with only key_id for a key no longer stored."),
		"metered_tenants": out(framework.TypeStringSlice, "Tenants with a budget ceiling: their keys are metered."),
		"suspended_roles": out(framework.TypeStringSlice, "Suspended roles (of the roles asked for): their keys are refused, whatever their records say."),
		"epoch":           out(framework.TypeString, "Epoch of the changes, new each time the mount starts on a node; pass it with the cursor."),
		"next":            out(framework.TypeInt64, "Changes: the cursor to pass as after next time."),
		"last":            out(framework.TypeInt64, "Changes: the newest change."),
		"more":            out(framework.TypeBool, "Whether another read returns more now: the next changes, or the snapshot's next page."),
		"resync":          out(framework.TypeBool, "Changes: the cursor is older than the changes held, or of another epoch; read the snapshot again."),
		"next_id":         out(framework.TypeString, "Snapshot: the after_id of the next page."),
		"cursor":          out(framework.TypeInt64, "Snapshot: the cursor to follow key-records from."),
	}
}

func keyRecordsResponse(p *contract.KeyRecordsPage) *logical.Response {
	if p == nil {
		return nil
	}
	return &logical.Response{Data: map[string]interface{}{
		"records":         p.Records,
		"metered_tenants": p.MeteredTenants,
		"suspended_roles": p.SuspendedRoles,
		"epoch":           p.Epoch,
		"next":            p.Next,
		"last":            p.Last,
		"more":            p.More,
		"resync":          p.Resync,
		"next_id":         p.NextID,
		"cursor":          p.Cursor,
	}}
}
