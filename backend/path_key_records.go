package backend

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

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
			Description: fmt.Sprintf("Long poll: when nothing follows after, wait up to this long (at most %s) and answer as soon as a key changes (within %s; with roles or tenants, a key of theirs). Default 0: answer at once.", maxFeedWait, keyChangesWakeGap),
		},
	}
	snapshot := map[string]*framework.FieldSchema{
		contract.FieldAfterID: {
			Type:        framework.TypeString,
			Description: "Page cursor: the records of key_ids after this one. Start with none, then pass the previous answer's next_id.",
		},
		contract.FieldFormat: {
			Type: framework.TypeString,
			Description: fmt.Sprintf("%q: the records packed in one base64 string (packed), up to %d a page, for verifiers that read it (keybroker-sidecar); "+
				"any other value, or none: JSON records, as before. A format this plugin does not know is answered in JSON, so a newer verifier still reads an older plugin.",
				contract.FormatPacked1, contract.MaxPackedKeyRecordPage),
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
				logical.ReadOperation: operation(b.pathKeyRecordsSnapshot, answers(snapshotAnswerFields())),
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
With format=packed1 a page holds up to %d records in one base64 string,
packed (what keybroker-sidecar asks for: a million keys through Vault cost
what Vault does per string). The active node keeps the records in memory,
exactly as stored: a snapshot reads storage only for keys changed since it
last read them, or after the mount started on the node.
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
    vault read keybroker/key-records after=<cursor> epoch=<epoch> wait=20s`, contract.MaxKeyRecordPage, contract.MaxPackedKeyRecordPage, keyChangesHeld, expiredRecordGrace)

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
	a, err := b.keyRecords.readChanges(ctx, req.Storage, uint64(after), epoch, f, wait)
	if err != nil {
		return nil, err
	}
	resp := keyRecordsResponse(a.page)
	resp.Data["records"] = a.records // encoded once for every reader of the page
	return resp, nil
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
	packed := d.Get(contract.FieldFormat).(string) == contract.FormatPacked1
	page, err := b.keyRecords.readSnapshot(ctx, req.Storage, afterID, f, packed, maxAge)
	if err != nil {
		return nil, err
	}
	return keyRecordsResponse(page), nil
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

// snapshotAnswerFields are keyRecordsAnswerFields and a packed page's.
func snapshotAnswerFields() map[string]*framework.FieldSchema {
	f := keyRecordsAnswerFields()
	f["format"] = out(framework.TypeString, "packed1 when the records are in packed (records then empty); absent for JSON records.")
	f["packed"] = out(framework.TypeString, "With format packed1: the page's records, base64 (layout: contract/keyrecords_packed.go).")
	return f
}

func keyRecordsResponse(p *contract.KeyRecordsPage) *logical.Response {
	if p == nil {
		return nil
	}
	resp := &logical.Response{Data: map[string]interface{}{
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
	if p.Format != "" {
		resp.Data["format"], resp.Data["packed"] = p.Format, p.Packed
	}
	return resp
}
