package sidecar

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsReferenceIsComplete keeps the metrics reference of
// docs/operations.md true to what the sidecar exports: every metric has a
// row ("| `name` | type | labels | meaning |") naming each of its labels,
// and every row names a metric the sidecar still exports.
func TestMetricsReferenceIsComplete(t *testing.T) {
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := metricRows(string(doc))
	exported := exportedMetrics(t, newFixture(t, nil).sc.m)
	if len(exported) < 20 {
		t.Fatalf("found only %d metrics (%v): the lookup below no longer sees the registry", len(exported), exported)
	}
	for name, labels := range exported {
		row, ok := rows[name]
		if !ok {
			t.Errorf("metric %s is exported but has no row in the metrics reference of docs/operations.md", name)
			continue
		}
		for _, l := range labels {
			if !strings.Contains(row, "`"+l+"`") {
				t.Errorf("metric %s has label %s, which its row in docs/operations.md does not name", name, l)
			}
		}
	}
	for name := range rows {
		if _, ok := exported[name]; !ok {
			t.Errorf("docs/operations.md has a row for %s, which the sidecar does not export", name)
		}
	}
}

// metricRows are the reference's table rows, by the metric each names first.
func metricRows(doc string) map[string]string {
	row := regexp.MustCompile("^\\| `(keybroker_sidecar_[a-z_]+)` \\|")
	rows := map[string]string{}
	for _, line := range strings.Split(doc, "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			rows[m[1]] = line
		}
	}
	return rows
}

// exportedMetrics is every metric the registry serves, with its label names,
// read from the descriptions of what Gather yields and of every vector: a
// vector no request has touched yet has no child, so Gather leaves it out.
// Every vector is a field of metrics (components are handed them from there).
func exportedMetrics(t *testing.T, m *metrics) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	add := func(d *prometheus.Desc) {
		name, labels, err := describe(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range labels {
			if !slices.Contains(out[name], l) {
				out[name] = append(out[name], l)
			}
		}
		if out[name] == nil {
			out[name] = []string{}
		}
	}
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		out[f.GetName()] = []string{}
		for _, metric := range f.GetMetric() {
			for _, lp := range metric.GetLabel() {
				if !slices.Contains(out[f.GetName()], lp.GetName()) {
					out[f.GetName()] = append(out[f.GetName()], lp.GetName())
				}
			}
		}
	}
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
			add(d)
		}
	}
	for _, labels := range out {
		sort.Strings(labels)
	}
	return out
}

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
)

// describe reads a description's name and variable label names from its
// String, the only way the client library shows them.
func describe(d *prometheus.Desc) (string, []string, error) {
	name, labels := descName.FindStringSubmatch(d.String()), descLabels.FindStringSubmatch(d.String())
	if name == nil || labels == nil {
		return "", nil, fmt.Errorf("cannot read the name and labels in %s", d)
	}
	var out []string
	for _, l := range strings.Split(labels[1], ",") {
		if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
			out = append(out, l)
		}
	}
	return name[1], out, nil
}
