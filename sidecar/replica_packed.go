package sidecar

import (
	"encoding/base64"
	"fmt"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/contract"
)

// applyPacked stores the records of a packed snapshot page
// (contract.FormatPacked1), as apply does a JSON page's: each shape the
// page lists is parsed once, and a record the sidecar cannot read (or of a
// shape it cannot) removes the key. A page it cannot unpack at all is an
// error: the snapshot is not read, and keys go to Vault meanwhile.
func (r *keyReplica) applyPacked(packed string, gen uint32) (bad int, err error) {
	raw, err := base64.StdEncoding.DecodeString(packed)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", contract.ErrPacked, err)
	}
	shapes, recs, err := contract.UnpackKeyRecords(raw)
	if err != nil {
		return 0, err
	}
	parsedShapes := make([]*keyShape, len(shapes))
	for i := range shapes {
		s := &shapes[i]
		// Keyed as a JSON record of the same shape, so that the records
		// the changes bring share it.
		parsedShapes[i], _ = parseShape(&contract.KeyRecord{Role: s.Role, Tenant: s.Tenant, Scopes: s.Scopes,
			BoundCIDRs: s.BoundCIDRs, Budget: s.Budget, RateLimit: s.RateLimit, JKT: s.JKT})
	}
	parsed := make([]*replicaRecord, len(recs))
	ids := make([]string, len(recs))
	for i := range recs {
		pr := &recs[i]
		ids[i] = pr.KeyID
		sh := parsedShapes[pr.Shape]
		if sh == nil || !apikey.ValidateID(pr.KeyID) || (pr.ReplacedBy != "" && !apikey.ValidateID(pr.ReplacedBy)) {
			bad++
			continue // removed
		}
		parsed[i] = &replicaRecord{hash: pr.Hash, expires: pr.ExpiresAt, revoked: pr.Revoked, suspended: pr.Suspended,
			replacedBy: pr.ReplacedBy, shape: sh}
	}
	r.applyParsed(ids, parsed, gen)
	return bad, nil
}
