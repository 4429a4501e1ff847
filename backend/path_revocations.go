package backend

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

const (
	revocationSeqPath     = "revocations/seq"
	revocationEntryPrefix = "revocations/entries/"
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

func revocationPath(seq uint64) string {
	return fmt.Sprintf("%s%020d", revocationEntryPrefix, seq)
}

// appendRevocationLocked gives r the next sequence number and stores it. The
// caller holds revocationMu.
func (b *backend) appendRevocationLocked(ctx context.Context, s logical.Storage, r revocation) error {
	// An object, not a bare number: logical's JSON decoding takes a leading
	// digit of some values for a compression marker.
	type counter struct {
		Last uint64 `json:"last"`
	}
	c, err := getJSON[counter](ctx, s, revocationSeqPath)
	if err != nil {
		return err
	}
	if c == nil {
		c = &counter{}
	}
	c.Last++
	r.Seq = c.Last
	// The counter is written first: if the entry write then fails, a number
	// is skipped, which readers tolerate; reusing one they have passed would not.
	if err := putJSON(ctx, s, revocationSeqPath, c); err != nil {
		return err
	}
	return putJSON(ctx, s, revocationPath(r.Seq), r)
}

func pathRevocations(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "revocations/?$",
		Fields: map[string]*framework.FieldSchema{
			"after": {
				Type:        framework.TypeInt64,
				Description: "Cursor: return revocations after this one. Start with 0 (the default), then pass the previous answer's next.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{Callback: b.pathRevocationsRead},
		},
		HelpSynopsis: "Follow revoked credentials incrementally.",
		HelpDescription: fmt.Sprintf(`Returns revoked credential ids (API key_ids, later JWT jtis) in the order they
were revoked, each with the time its credential would have expired, and a
"next" cursor to pass as "after" on the next read. At most %d entries are
returned per read; "more" says whether another read would return more now.
Entries drop out once their credential would have expired anyway, so a
verifier starting with after=0 learns every revocation that still matters.

    vault read keybroker/revocations after=0`, contract.MaxRevocationPage),
	}
}

func (b *backend) pathRevocationsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	after := d.Get("after").(int64)
	if after < 0 {
		return logical.ErrorResponse("after must not be negative"), nil
	}
	names, err := req.Storage.List(ctx, revocationEntryPrefix)
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
		r, err := b.getRevocation(ctx, req.Storage, name)
		if err != nil {
			return nil, err
		}
		if r == nil || !now.Before(r.ExpiresAt) {
			continue
		}
		out = append(out, map[string]interface{}{
			"id":         r.ID,
			"type":       r.Type,
			"revoked_at": r.RevokedAt.UTC().Format(time.RFC3339Nano),
			"expires_at": r.ExpiresAt.UTC().Format(time.RFC3339),
		})
	}
	return &logical.Response{Data: map[string]interface{}{
		"revocations": out,
		"next":        next,
		"more":        more,
	}}, nil
}

func (b *backend) getRevocation(ctx context.Context, s logical.Storage, name string) (*revocation, error) {
	return getJSON[revocation](ctx, s, revocationEntryPrefix+name)
}
