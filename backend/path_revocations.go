package backend

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"sync"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

// revocation is one entry of the feed. Entries are stored under a zero-padded
// sequence number, so storage lists them in feed order.
type revocation struct {
	Seq       uint64    `json:"seq"`
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	RevokedAt time.Time `json:"revoked_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// feedCounter is the feed's last sequence number and its epoch. An object,
// not a bare number: logical's JSON decoding takes a leading digit of some
// values for a compression marker.
type feedCounter struct {
	Last uint64 `json:"last"`
	// Epoch is new each time the mount starts on an active node (enable,
	// unseal, leadership change, snapshot restore). A verifier that sees it
	// change reads the feed again from 0: storage may have gone back (a
	// restored snapshot, a re-enabled mount) and sequence numbers it has
	// passed may be given again.
	Epoch string `json:"epoch,omitempty"`
}

// newFeedEpoch starts a new epoch of the feed.
func (b *backend) newFeedEpoch(ctx context.Context, s logical.Storage) error {
	b.revocationMu.Lock()
	defer b.revocationMu.Unlock()
	c, err := getJSON[feedCounter](ctx, s, revocationSeqPath)
	if err != nil {
		return err
	}
	if c == nil {
		c = &feedCounter{}
	}
	if c.Epoch, err = uuid.GenerateUUID(); err != nil {
		return fmt.Errorf("generating feed epoch: %w", err)
	}
	return putJSON(ctx, s, revocationSeqPath, c)
}

// appendRevocationLocked gives r the next sequence number and stores it. The
// caller holds revocationMu.
func (b *backend) appendRevocationLocked(ctx context.Context, s logical.Storage, r revocation) error {
	c, err := getJSON[feedCounter](ctx, s, revocationSeqPath)
	if err != nil {
		return err
	}
	if c == nil {
		c = &feedCounter{}
	}
	c.Last++
	r.Seq = c.Last
	// The counter is written first: if the entry write then fails, a number
	// is skipped, which readers tolerate; reusing one they have passed would not.
	if err := putJSON(ctx, s, revocationSeqPath, c); err != nil {
		return err
	}
	if err := putJSON(ctx, s, revocationPath(r.Seq), r); err != nil {
		return err
	}
	b.feedWake.wake()
	return nil
}

// maxFeedWait is the longest a feed read may wait for a new entry, well
// inside Vault's default max_request_duration (90s).
const maxFeedWait = 30 * time.Second

// feedWaiters lets long-polling feed reads wait for the next entry on the
// active node, where entries are appended: one channel, closed on each
// append, that every waiting read selects on. No goroutine or storage read
// per waiter per entry; see feedPages for the reads after a wake.
type feedWaiters struct {
	mu  sync.Mutex
	ch  chan struct{}
	gen uint64 // wakes so far
}

// next is closed when the next entry is appended; gen is the wakes so far,
// for reads to share only with reads that began after the same wake.
func (f *feedWaiters) next() (ch <-chan struct{}, gen uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch == nil {
		f.ch = make(chan struct{})
	}
	return f.ch, f.gen
}

func (f *feedWaiters) generation() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen
}

func (f *feedWaiters) wake() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	if f.ch != nil {
		close(f.ch)
		f.ch = nil
	}
}

func pathRevocations(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: contract.PathRevocations + "/?$",
		Fields: map[string]*framework.FieldSchema{
			contract.FieldAfter: {
				Type:        framework.TypeInt64,
				Description: "Cursor: return revocations after this one. Start with 0 (the default), then pass the previous answer's next.",
			},
			contract.FieldWait: {
				Type:        framework.TypeDurationSecond,
				Description: fmt.Sprintf("Long poll: when nothing follows after, wait up to this long (at most %s) and answer as soon as a revocation is added. Default 0: answer at once.", maxFeedWait),
			},
		},
		DisplayAttrs: pathAttrs("revocations"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: operation(b.pathRevocationsRead, answers(map[string]*framework.FieldSchema{
				"revocations": out(framework.TypeSlice, fmt.Sprintf("Revocations after the cursor in feed order, each with id (an API key's key_id or a JWT's jti), type (api_key or jwt), revoked_at and expires_at (when the credential would have expired; the entry is served until %s after it, the most leeway a verifier may allow).", contract.RevocationGrace)),
				"next":        out(framework.TypeInt64, "Cursor to pass as after on the next read."),
				"more":        out(framework.TypeBool, "Whether another read would return more now."),
				"epoch":       out(framework.TypeString, "The feed's epoch: when it changes, read again from after=0."),
				"last":        out(framework.TypeInt64, "Newest sequence number given; below the cursor, read again from after=0."),
			})),
		},
		HelpSynopsis: "Follow revoked credentials incrementally.",
		HelpDescription: fmt.Sprintf(`Returns revoked credential ids (API key_ids, later JWT jtis) in the order they
were revoked, each with the time its credential would have expired, and a
"next" cursor to pass as "after" on the next read. At most %d entries are
returned per read; "more" says whether another read would return more now.
Entries drop out %s after their credential's expires_at (the most leeway
any verifier may allow past a JWT's exp), so a verifier starting with
after=0 learns every revocation that still matters.

"epoch" changes each time the mount starts on an active node (enable,
unseal, leadership change, snapshot restore), and "last" is the newest
sequence number given. A verifier that sees a new epoch, or a last below its
cursor, must read again from after=0: storage may have gone back, and
numbers it has passed may be given again.

    vault read keybroker/revocations after=0`, contract.MaxRevocationPage, contract.RevocationGrace),
	}
}

// feedRead is a feed read's cursor and wait, or the 400 for bad ones.
func feedRead(d *framework.FieldData) (after int64, wait time.Duration, bad *logical.Response) {
	after = d.Get(contract.FieldAfter).(int64)
	if after < 0 {
		return 0, 0, logical.ErrorResponse("after must not be negative")
	}
	wait = time.Duration(d.Get(contract.FieldWait).(int)) * time.Second
	if wait < 0 || wait > maxFeedWait {
		return 0, 0, logical.ErrorResponse("wait must be between 0 and %s, got %s", maxFeedWait, wait)
	}
	return after, wait, nil
}

// waitForWake says whether woken closed within wait (false: the wait or
// the request ended first).
func waitForWake(ctx context.Context, woken <-chan struct{}, wait time.Duration) bool {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-woken:
		return true
	case <-timer.C:
	case <-ctx.Done():
	}
	return false
}

func (b *backend) pathRevocationsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	after, wait, bad := feedRead(d)
	if bad != nil {
		return bad, nil
	}
	// Taken before reading, so that an entry appended during the read
	// wakes the wait below; the read shares only with reads that began
	// after it.
	woken, gen := b.feedWake.next()
	data, err := b.feedPages(ctx, req.Storage, after, gen)
	if err != nil || wait == 0 || data["next"].(uint64) != uint64(after) || data["last"].(uint64) < uint64(after) {
		return &logical.Response{Data: data}, err
	}
	if !waitForWake(ctx, woken, wait) {
		return &logical.Response{Data: data}, nil
	}
	data, err = b.feedPages(ctx, req.Storage, after, b.feedWake.generation())
	return &logical.Response{Data: data}, err
}

// feedPages reads a page after a cursor. Reads of the same cursor at the
// same time share one storage read: every verifier that is up to date waits
// at the same cursor, so an append wakes them all into one read, not one
// each. gen is the wake generation the reader saw: a read begun before an
// append it was not woken for must not answer it.
func (b *backend) feedPages(ctx context.Context, s logical.Storage, after int64, gen uint64) (map[string]interface{}, error) {
	v, err, _ := b.feedReads.Do(strconv.FormatInt(after, 10)+"/"+strconv.FormatUint(gen, 10), func() (interface{}, error) {
		return b.feedPage(context.WithoutCancel(ctx), s, after)
	})
	if err != nil {
		return nil, err
	}
	return maps.Clone(v.(map[string]interface{})), nil // the entries are shared, read only
}

// feedPage reads the page of the feed after a cursor from storage.
func (b *backend) feedPage(ctx context.Context, s logical.Storage, after int64) (map[string]interface{}, error) {
	// The counter first: an entry appended after it is read is seen next
	// time, and last never runs ahead of what the list shows.
	c, err := getJSON[feedCounter](ctx, s, revocationSeqPath)
	if err != nil {
		return nil, err
	}
	if c == nil {
		c = &feedCounter{}
	}
	names, err := s.List(ctx, revocationEntryPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing revocations: %w", err)
	}
	// Names are zero-padded, so lexical order is feed order.
	start := sort.SearchStrings(names, fmt.Sprintf("%020d", after+1))
	now := time.Now()
	next := uint64(after)
	out := make([]map[string]interface{}, 0)
	more := false
	for _, name := range names[start:] {
		if len(out) == contract.MaxRevocationPage {
			more = true
			break
		}
		seq, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue // not written by us
		}
		next = seq
		r, err := b.getRevocation(ctx, s, name)
		if err != nil {
			return nil, err
		}
		// Kept past expiry for as long as a verifier's leeway may still
		// accept the credential: one starting now must learn of it.
		if r == nil || !now.Before(contract.RevokedUntil(r.ExpiresAt)) {
			continue
		}
		out = append(out, map[string]interface{}{
			"id":         r.ID,
			"type":       r.Type,
			"revoked_at": r.RevokedAt.UTC().Format(time.RFC3339Nano),
			"expires_at": r.ExpiresAt.UTC().Format(time.RFC3339),
		})
	}
	return map[string]interface{}{
		"revocations": out,
		"next":        next,
		"more":        more,
		"epoch":       c.Epoch,
		"last":        c.Last,
	}, nil
}

func (b *backend) getRevocation(ctx context.Context, s logical.Storage, name string) (*revocation, error) {
	return getJSON[revocation](ctx, s, revocationEntryPrefix+name)
}
