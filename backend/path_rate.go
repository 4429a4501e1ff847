package backend

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

const ratePrefix = "rates/"

// rateWindow is what all verifiers together have admitted for one lineage
// in its current window.
type rateWindow struct {
	Start   int64 `json:"start"`   // unix seconds
	Seconds int64 `json:"seconds"` // window length
	Taken   int64 `json:"taken"`
}

func (w *rateWindow) end() time.Time { return time.Unix(w.Start+w.Seconds, 0).UTC() }

func pathRate(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "rate/reserve$",
		Fields: map[string]*framework.FieldSchema{
			"id": {
				Type:        framework.TypeString,
				Description: "The credential: an API key's key_id or a JWT's jti.",
				Required:    true,
			},
			"role": {
				Type:        framework.TypeString,
				Description: "For a JWT: its role claim. Its lineage is subject within role, and the role's rate limit applies.",
			},
			"subject": {
				Type:        framework.TypeString,
				Description: "For a JWT: its sub claim.",
			},
			"units": {
				Type:        framework.TypeInt64,
				Description: "Requests to admit (1 to 1000000). Fewer are granted when fewer remain in the window.",
				Required:    true,
			},
		},
		DisplayAttrs: pathAttrs("rate-limit"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("reserve", "", b.pathRateReserve, answers(map[string]*framework.FieldSchema{
				"limited":    out(framework.TypeBool, "Whether the credential has a rate limit; when false, every unit asked is granted and nothing else is answered."),
				"granted":    out(framework.TypeInt64, "Requests granted; 0: the window is spent until window_end."),
				"limit":      out(framework.TypeInt64, "Requests all verifiers together get per window."),
				"window":     out(framework.TypeInt64, "Length of the window in seconds."),
				"window_end": out(framework.TypeTime, "When the current window ends."),
			})),
		},
		HelpSynopsis: "Take requests from a credential's cluster-wide rate limit.",
		HelpDescription: `Verifiers that keep rate limits across all of them (keybroker-sidecar's
rate_limit_scope = "cluster") take requests here in chunks. A lineage (an API
key's key_id; a JWT's subject within its role) with rate_limit r and
rate_burst b has fixed windows of w = max(1s, ceil(b/r)) seconds, at most 1h,
in each of which all verifiers together get at most max(b, floor(r x w))
requests; so in any t seconds at most that x (ceil(t/w) + 1). The limit is
the key's own, or the role's as it is now for a JWT. Near the end of a
window, grants shrink to half of what is left so that the last requests are
spread over the verifiers that ask. granted=0 says the window is spent until
window_end. limited=false says the credential has no rate limit.`,
	}
}

func (b *backend) pathRateReserve(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	id, roleName, subject, units := d.Get("id").(string), d.Get("role").(string), d.Get("subject").(string), d.Get("units").(int64)
	switch {
	case id == "":
		return logical.ErrorResponse("id is required: an API key's key_id or a JWT's jti"), nil
	case units <= 0 || units > maxRate:
		return logical.ErrorResponse("units must be between 1 and %d, got %d", maxRate, units), nil
	}
	now := time.Now().UTC()
	var l limits
	var lineage string
	if apikey.ValidateID(id) {
		k, err := b.getKey(ctx, req.Storage, id)
		switch {
		case err != nil:
			return nil, err
		case k == nil:
			return logical.ErrorResponse("no API key %q", id), nil
		case k.revoked():
			return logical.ErrorResponse("credential %q is revoked", id), nil
		case !now.Before(k.ExpiresAt):
			return logical.ErrorResponse("credential %q has expired", id), nil
		}
		l, lineage = k.limits, "key\x00"+id
	} else {
		if roleName == "" || subject == "" {
			return logical.ErrorResponse("role and subject are required for a JWT: its role and sub claims"), nil
		}
		if err := validateText("subject", subject, maxNameLength); err != nil {
			return logical.ErrorResponse(err.Error()), nil
		}
		r, err := b.getRole(ctx, req.Storage, roleName)
		if err != nil {
			return nil, err
		}
		if r == nil {
			return logical.ErrorResponse("role %q does not exist", roleName), nil
		}
		if revoked, err := b.isRevoked(ctx, req.Storage, id); err != nil || revoked {
			if err != nil {
				return nil, err
			}
			return logical.ErrorResponse("credential %q is revoked", id), nil
		}
		l, lineage = r.limits, "jwt\x00"+roleName+"\x00"+subject
	}
	window, limit := contract.RateWindow(l.RateLimit, l.RateBurst)
	if limit == 0 {
		return &logical.Response{Data: map[string]interface{}{"limited": false, "granted": units}}, nil
	}

	sum := sha256.Sum256([]byte(lineage))
	path := ratePrefix + hex.EncodeToString(sum[:])
	lock := locksutil.LockForKey(b.rateLocks, path)
	lock.Lock()
	defer lock.Unlock()
	w, err := getJSON[rateWindow](ctx, req.Storage, path)
	if err != nil {
		return nil, err
	}
	secs := int64(window / time.Second)
	if start := now.Unix() - now.Unix()%secs; w == nil || w.Start != start || w.Seconds != secs {
		w = &rateWindow{Start: start, Seconds: secs}
	}
	left := max(0, limit-w.Taken)
	grant := min(units, left)
	if left < 2*units {
		grant = min(left, max(1, left/2))
	}
	if grant > 0 {
		w.Taken += grant
		if err := putJSON(ctx, req.Storage, path, w); err != nil {
			return nil, err
		}
	}
	return &logical.Response{Data: map[string]interface{}{
		"limited":    true,
		"granted":    grant,
		"limit":      limit,
		"window":     secs,
		"window_end": w.end().Format(time.RFC3339Nano),
	}}, nil
}
