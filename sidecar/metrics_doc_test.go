package sidecar

import (
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsReferenceIsComplete fails when a metric the sidecar exports is
// missing from the metrics reference in docs/operations.md, so the reference
// cannot go stale: add a row there for every new series.
func TestMetricsReferenceIsComplete(t *testing.T) {
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	names := exportedMetricNames(t, newFixture(t, nil).sc.m)
	if len(names) < 20 {
		t.Fatalf("found only %d metric names (%v): the lookup below no longer sees the registry", len(names), names)
	}
	for _, name := range names {
		// A row of the reference names the metric in backquotes.
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("metric %s is exported but not in the metrics reference of docs/operations.md", name)
		}
	}
}

// exportedMetricNames is every metric name the registry serves, together
// with those of the vectors no request has touched yet: a vector without a
// child is absent from Gather, so its name is read from its description.
// Every vector is a field of metrics (components are handed them from there).
func exportedMetricNames(t *testing.T, m *metrics) []string {
	t.Helper()
	seen := map[string]bool{}
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		seen[f.GetName()] = true
	}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		if f.Kind() != reflect.Ptr && f.Kind() != reflect.Interface || f.IsNil() {
			continue
		}
		// The fields are unexported: read them through their address.
		c, ok := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(prometheus.Collector)
		if !ok {
			continue
		}
		descs := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(descs); close(descs) }()
		for d := range descs {
			match := fqName.FindStringSubmatch(d.String())
			if match == nil {
				t.Fatalf("cannot read the name in %s", d)
			}
			seen[match[1]] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
