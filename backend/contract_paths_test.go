package backend

import (
	"testing"

	"github.com/keybroker/keybroker/contract"
)

// Every path contract names for a verifier is one the plugin serves, with
// the request fields contract names: a rename on one side only fails here,
// not at a sidecar in production.
func TestContractPathsServed(t *testing.T) {
	e := newTestEnv(t)
	for path, fields := range map[string][]string{
		contract.PathVerify:             {contract.FieldCredential, contract.FieldRemoteAddr},
		contract.PathRevocations:        {contract.FieldAfter, contract.FieldWait},
		contract.PathKeyRecords:         {contract.FieldAfter, contract.FieldEpoch, contract.FieldWait, contract.FieldRoles, contract.FieldTenants},
		contract.PathKeyRecordsSnapshot: {contract.FieldAfterID, contract.FieldRoles, contract.FieldTenants},
		contract.PathJWKS:               nil,
		contract.PathOpenIDDiscovery:    nil,
		contract.PathBudgetReserve:      {contract.FieldID, contract.FieldUnits, contract.FieldMinUnits, contract.FieldTTL, contract.FieldHolder},
		contract.PathBudgetReport:       {contract.FieldReservationID, contract.FieldUsed, contract.FieldRelease},
		contract.PathRateReserve:        {contract.FieldID, contract.FieldUnits, contract.FieldRole, contract.FieldSubject},
		contract.PathKeyUsage:           {contract.FieldUsage, contract.FieldReportID},
	} {
		p := e.b.Route(path)
		if p == nil {
			t.Errorf("contract path %q: the plugin serves no such path", path)
			continue
		}
		for _, f := range fields {
			if _, ok := p.Fields[f]; !ok {
				t.Errorf("contract path %q: the plugin's path has no field %q", path, f)
			}
		}
	}
}
