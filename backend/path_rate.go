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
		Pattern: contract.PathRateReserve + "$",
		Fields: map[string]*framework.FieldSchema{
			contract.FieldID: {
				Type:        framework.TypeString,
				Description: "The credential: an API key's key_id or a JWT's jti.",
				Required:    true,
			},
			contract.FieldRole: {
				Type:        framework.TypeString,
				Description: "For a JWT: its role claim. Its lineage is subject within role, and the role's rate limit applies.",
			},
			contract.FieldSubject: {
				Type:        framework.TypeString,
				Description: "For a JWT: its sub claim.",
			},
			contract.FieldUnits: {
				Type:        framework.TypeInt64,
				Description: "Requests to admit (1 to 1000000). Fewer are granted when fewer remain in the window.",
				Required:    true,
			},
		},
		DisplayAttrs: pathAttrs("rate-limit"),
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: operationAs("reserve", "", b.pathRateReserve, answers(map[string]*framework.FieldSchema{
				contract.FieldLimited:   out(framework.TypeBool, "Whether the credential has a rate limit; when false, every unit asked is granted and nothing else is answered."),
				contract.FieldGranted:   out(framework.TypeInt64, "Requests granted; 0: the window is spent until window_end."),
				contract.FieldLimit:     out(framework.TypeInt64, "Requests all verifiers together get per window."),
				contract.FieldWindow:    out(framework.TypeInt64, "Length of the window in seconds."),
				contract.FieldWindowEnd: out(framework.TypeTime, "When the current window ends."),
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

// pathRateReserve adapts a rate/reserve request into reserveRate.
func (b *backend) pathRateReserve(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	ans, err := b.meters.reserveRate(ctx, req.Storage, contract.RateReserve{
		ID:      d.Get(contract.FieldID).(string),
		Units:   d.Get(contract.FieldUnits).(int64),
		Role:    d.Get(contract.FieldRole).(string),
		Subject: d.Get(contract.FieldSubject).(string),
	})
	return respond(ans.Data, err)
}

// reserveRate takes up to in.Units requests from the current window of the
// credential's lineage.
func (mt *meters) reserveRate(ctx context.Context, s logical.Storage, in contract.RateReserve) (*contract.RateAnswer, error) {
	switch {
	case in.ID == "":
		return nil, refuse("id is required: an API key's key_id or a JWT's jti")
	case in.Units <= 0 || in.Units > maxRate:
		return nil, refuse("units must be between 1 and %d, got %d", maxRate, in.Units)
	}
	now := time.Now().UTC()
	l, lineage, err := rateLineage(ctx, s, in, now)
	if err != nil {
		return nil, err
	}
	window, limit := contract.RateWindow(l.RateLimit, l.RateBurst)
	if limit == 0 {
		return &contract.RateAnswer{Limited: false, Granted: in.Units}, nil
	}
	return mt.takeFromWindow(ctx, s, lineage, window, limit, in.Units, now)
}

// rateLineage is the limits that apply to in's credential and its lineage
// (an API key's key_id, a JWT's subject within its role): the key's own,
// or the role's as it is now. A key unknown, revoked or expired, or a JWT
// revoked or of no role, is refused.
func rateLineage(ctx context.Context, s logical.Storage, in contract.RateReserve, now time.Time) (limits, string, error) {
	if apikey.ValidateID(in.ID) {
		k, err := getKey(ctx, s, in.ID)
		switch {
		case err != nil:
			return limits{}, "", err
		case k == nil:
			return limits{}, "", refuse("no API key %q", in.ID)
		case k.revoked():
			return limits{}, "", refuse("credential %q is revoked", in.ID)
		case !now.Before(k.ExpiresAt):
			return limits{}, "", refuse("credential %q has expired", in.ID)
		}
		return k.limits, "key\x00" + in.ID, nil
	}
	if in.Role == "" || in.Subject == "" {
		return limits{}, "", refuse("role and subject are required for a JWT: its role and sub claims")
	}
	if err := validateText("subject", in.Subject, maxNameLength); err != nil {
		return limits{}, "", refuse("%s", err.Error())
	}
	r, err := getRole(ctx, s, in.Role)
	if err != nil {
		return limits{}, "", err
	}
	if r == nil {
		return limits{}, "", refuse("role %q does not exist", in.Role)
	}
	revoked, err := isRevoked(ctx, s, in.ID)
	switch {
	case err != nil:
		return limits{}, "", err
	case revoked:
		return limits{}, "", refuse("credential %q is revoked", in.ID)
	}
	return r.limits, "jwt\x00" + in.Role + "\x00" + in.Subject, nil
}

// takeFromWindow grants up to units of the limit of lineage's current
// window: all of them while twice as many are left, then half of what is
// left, so that the last requests are spread over the verifiers that ask.
func (mt *meters) takeFromWindow(ctx context.Context, s logical.Storage, lineage string, window time.Duration, limit, units int64, now time.Time) (*contract.RateAnswer, error) {
	sum := sha256.Sum256([]byte(lineage))
	path := ratePrefix + hex.EncodeToString(sum[:])
	lock := locksutil.LockForKey(mt.rateLocks, path)
	lock.Lock()
	defer lock.Unlock()
	w, err := getJSON[rateWindow](ctx, s, path)
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
		if err := putJSON(ctx, s, path, w); err != nil {
			return nil, err
		}
	}
	return &contract.RateAnswer{Limited: true, Granted: grant, Limit: limit, Window: secs, WindowEnd: w.end().Format(time.RFC3339Nano)}, nil
}
