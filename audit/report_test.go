package audit

import (
	"slices"
	"testing"
	"time"
)

// "Never used" leaves out every credential the report shows used in any
// way: allowed by a sidecar, verified, or spending from its budget (a
// reservation or a report), whether or not a decision log is among the
// inputs.
func TestReportNeverUsedLeavesOutSpenders(t *testing.T) {
	since := time.Date(2026, 12, 1, 21, 16, 59, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		inputs []string
		unused []string // in mint order
	}{
		// meterKey has allows in the decision log, and spends.
		{"with decisions", []string{"vault-audit.log", "decisions.log"}, []string{firstJWT, refreshedJWT, loneJWT, norenewKey, cascadeKey}},
		// Without the decision log meterKey only spends: reserved, reported.
		{"spends only", []string{"vault-audit.log"}, []string{firstJWT, refreshedJWT, loneJWT, norenewKey, cascadeKey}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := BuildReport(loadFiles(t, tc.inputs...), ReportOptions{Since: since, Until: since.Add(3 * time.Second)}, Options{})
			var unused []string
			for _, u := range r.NeverUsed {
				unused = append(unused, u.Credential)
			}
			if !slices.Equal(unused, tc.unused) {
				t.Errorf("never used %v, want %v", unused, tc.unused)
			}
			if len(r.TopSpenders) == 0 {
				t.Fatal("no top spenders: the case tests nothing")
			}
			for _, s := range r.TopSpenders {
				if slices.Contains(unused, s.Credential) {
					t.Errorf("%s is a top spender (%+v) and listed as never used", s.Credential, *s)
				}
			}
		})
	}
}
