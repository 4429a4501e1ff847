package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/contract"
)

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

func (b *backend) pathRevocationsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	after, wait, bad := feedRead(d)
	if bad != nil {
		return bad, nil
	}
	data, err := b.revocations.read(ctx, req.Storage, after, wait)
	return &logical.Response{Data: data}, err
}
