package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/apikey"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// The operator assets of examples/grafana and examples/prometheus, checked
// against the real thing: promtool checks the rules and runs their unit
// tests; then a real Prometheus scrapes a real sidecar (behind a real
// Vault) that has served allowed, denied, metered and rate-limited
// requests, loads the shipped rules, and answers every query of the
// dashboard with data. Every metric and label name the assets use must be
// one the sidecar exports, so renaming a metric breaks this test, not an
// operator's dashboard.
func TestObservabilityAssets(t *testing.T) {
	promtool, err1 := exec.LookPath("promtool")
	prometheus, err2 := exec.LookPath("prometheus")
	if err1 != nil || err2 != nil {
		t.Skip("promtool and prometheus are not installed (apt-get install prometheus: Debian's package has both); skipping the dashboard and alert rule checks")
	}
	root, err := vaultserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	alertsPath := filepath.Join(root, "examples", "prometheus", "alerts.yml")

	// promtool first: it says precisely what is wrong with a rule file.
	for _, args := range [][]string{
		{"check", "rules", "../examples/prometheus/alerts.yml"},
		{"test", "rules", "../examples/prometheus/alerts_test.yml"},
		{"check", "config", "../examples/prometheus/prometheus.yml"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, promtool, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	testsText := readExample(t, "prometheus/alerts_test.yml")
	fires, quiet := promtoolCases(testsText)

	dashText := readExample(t, "grafana/keybroker.json")
	targets := grafanaTargets(t, dashText)

	// A sidecar with every kind of traffic the dashboard shows: /llm is
	// metered by X-Usage-Tokens, which the test upstream never sends, so
	// each metered response is charged the hold (a usage fallback).
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	write(t, v.Client, "keybroker/roles/metered", map[string]interface{}{
		"scopes": "read", "budget": 3, "max_cost_per_request": 1, "budget_period": "24h",
	})
	write(t, v.Client, "keybroker/roles/paced", map[string]interface{}{
		"scopes": "read", "rate_limit": 0.5, "rate_burst": 1, "audiences": "svc",
	})
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/llm", Scopes: []string{"read"}, UsageHeader: "X-Usage-Tokens"})
	})
	key := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": "dashboard"}).Data["key"].(string)
	jwt := write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
	metered := write(t, v.Client, "keybroker/keys/metered", map[string]interface{}{"name": "agent"}).Data["key"].(string)
	paced := write(t, v.Client, "keybroker/token/paced", nil).Data["token"].(string)
	forged, _, err := apikey.Generate(nil, "kb")
	if err != nil {
		t.Fatal(err)
	}
	traffic := func() {
		t.Helper()
		for _, tc := range []struct {
			name    string
			path    string
			headers map[string]string
			status  int
			reason  string
		}{
			{"API key", "/read", map[string]string{"X-API-Key": key}, 200, ""},
			{"JWT", "/read", bearer(jwt), 200, ""},
			{"malformed key", "/read", bearer("kb_nonsense"), 401, "malformed"},
			{"forged key", "/read", bearer(forged), 401, "invalid"},
			{"no credential", "/read", nil, 401, "no_credential"},
			// No public_origin: the proof is refused unread, and counted.
			{"DPoP scheme", "/read", map[string]string{"Authorization": "DPoP " + jwt, "DPoP": "a.b.c"}, 401, "dpop_not_enabled"},
		} {
			if r := call(t, e.proxy, "GET", tc.path, tc.headers, ""); r.status != tc.status || r.header.Get("X-Keybroker-Reason") != tc.reason {
				t.Fatalf("%s: %d %q, want %d %q (%s)", tc.name, r.status, r.header.Get("X-Keybroker-Reason"), tc.status, tc.reason, r.body)
			}
		}
		// Until refused: a budget of 3 units, a rate of one request per 2s.
		for _, tc := range []struct{ path, cred, reason string }{
			{"/llm/complete", metered, "budget_exhausted"},
			{"/read", paced, "rate_limited"},
		} {
			for i := 0; ; i++ {
				r := call(t, e.proxy, "GET", tc.path, bearer(tc.cred), "")
				if r.status == 429 && r.header.Get("X-Keybroker-Reason") == tc.reason {
					break
				}
				if r.status != 200 || i == 10 {
					t.Fatalf("%s until %s: request %d: %d %q %s", tc.path, tc.reason, i, r.status, r.header.Get("X-Keybroker-Reason"), r.body)
				}
			}
		}
	}
	traffic()
	names, labels := exposition(t, e.auth)

	// Every metric name the assets mention (queries, variables,
	// descriptions, test series) is one the sidecar exports: checked
	// before Prometheus starts, since a renamed metric fails fastest here.
	for file, text := range map[string]string{
		"grafana/keybroker.json":     dashText,
		"prometheus/alerts.yml":      readExample(t, "prometheus/alerts.yml"),
		"prometheus/alerts_test.yml": testsText,
		"prometheus/prometheus.yml":  readExample(t, "prometheus/prometheus.yml"),
	} {
		reported := map[string]bool{}
		for _, n := range metricNames.FindAllString(text, -1) {
			if !names[n] && !reported[n] {
				reported[n] = true
				t.Errorf("examples/%s: %s is not a metric the sidecar exports", file, n)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The shipped prometheus.yml with only the target, the rule file's
	// path and the intervals (1s, so the test need not wait) changed.
	auth, _ := url.Parse(e.auth)
	conf := readExample(t, "prometheus/prometheus.yml")
	for _, r := range []struct{ old, new string }{
		{"  scrape_interval: 15s\n", "  scrape_interval: 1s\n"},
		{"  evaluation_interval: 15s\n", "  evaluation_interval: 1s\n"},
		{"    scrape_interval: 5s\n", "    scrape_interval: 1s\n"},
		{"  - alerts.yml\n", "  - " + alertsPath + "\n"},
		{`"127.0.0.1:8081"`, strconv.Quote(auth.Host)},
	} {
		if strings.Count(conf, r.old) != 1 {
			t.Fatalf("examples/prometheus/prometheus.yml no longer has %q once: update this test", r.old)
		}
		conf = strings.Replace(conf, r.old, r.new, 1)
	}
	dir := t.TempDir()
	confPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := "http://127.0.0.1:" + freePort(t)
	startProcess(t, "prometheus", dir, nil, prom, "/-/ready", nil,
		prometheus, "--config.file="+confPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+strings.TrimPrefix(prom, "http://"))

	// Rates need two samples; the second round of traffic makes them
	// move while Prometheus watches (the budget alert must notice).
	scrapes := func() int {
		s, err := promQuery(prom, `count_over_time(up{job="keybroker-sidecar"}[5m]) and up{job="keybroker-sidecar"} == 1`)
		if err != nil || len(s) != 1 {
			return 0
		}
		n, _ := strconv.Atoi(s[0].value())
		return n
	}
	eventually(t, 20*time.Second, "Prometheus never scraped the sidecar twice (is it up?)", func() bool { return scrapes() >= 2 })
	traffic()
	after := scrapes()
	eventually(t, 10*time.Second, "Prometheus stopped scraping the sidecar", func() bool { return scrapes() >= after+2 })

	// What Grafana would ask, with the variables at "All".
	for _, tg := range targets {
		t.Run(tg.panel+"/"+tg.refID, func(t *testing.T) {
			samples, err := promQuery(prom, tg.expr)
			if err != nil {
				t.Fatalf("%s: %v", tg.expr, err)
			}
			if len(samples) == 0 {
				t.Fatalf("no data after the test's traffic: %s", tg.expr)
			}
			t.Logf("%d series, first %v %s", len(samples), samples[0].Metric, samples[0].value())
			for _, s := range samples {
				for _, l := range legendLabels.FindAllStringSubmatch(tg.legend, -1) {
					if _, ok := s.Metric[l[1]]; !ok {
						t.Errorf("legend %q names label %s, which %v lacks", tg.legend, l[1], s.Metric)
					}
				}
			}
			checkLabels(t, tg.expr, labels)
		})
	}

	// The shipped rules, as the real Prometheus loaded them: healthy,
	// each with for:, a severity, a summary and a description, each fired
	// and quieted by alerts_test.yml. On this healthy sidecar the
	// freshness and outage alerts are inactive, and the budget exhausted
	// by the traffic shows.
	var rules []promRule
	eventually(t, 20*time.Second, "the rules were never all evaluated healthy with KeybrokerBudgetExhausted pending", func() bool {
		rules = promRules(t, prom)
		for _, r := range rules {
			if r.Health != "ok" || (r.Name == "KeybrokerBudgetExhausted" && r.State == "inactive") {
				return false
			}
		}
		return len(rules) > 0
	})
	wantInactive := []string{"KeybrokerSidecarDown", "KeybrokerSidecarNotReady", "KeybrokerRevocationFeedLagging",
		"KeybrokerKeyRecordsLagging", "KeybrokerJWKSStale", "KeybrokerDegradedDecisions", "KeybrokerVaultRequestErrors"}
	var loaded []string
	for _, r := range rules {
		loaded = append(loaded, r.Name)
		if r.File != alertsPath || r.Type != "alerting" {
			t.Errorf("rule %s: %s from %s, want an alerting rule from %s", r.Name, r.Type, r.File, alertsPath)
		}
		if r.Duration <= 0 || !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) ||
			r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("alert %s: for %vs, severity %q, summary %q, description %q: each needs all four", r.Name, r.Duration, r.Labels["severity"], r.Annotations["summary"], r.Annotations["description"])
		}
		if !fires[r.Name] || !quiet[r.Name] {
			t.Errorf("alert %s: alerts_test.yml has a case where it fires: %v, where it stays quiet (exp_alerts: []): %v; it needs both", r.Name, fires[r.Name], quiet[r.Name])
		}
		checkLabels(t, r.Query, labels)
		if slices.Contains(wantInactive, r.Name) && r.State != "inactive" {
			t.Errorf("alert %s is %s on a healthy sidecar", r.Name, r.State)
		}
	}
	for _, tested := range []map[string]bool{fires, quiet} {
		for name := range tested {
			if !slices.Contains(loaded, name) {
				t.Errorf("alerts_test.yml tests %s, which alerts.yml does not have", name)
			}
		}
	}

}

// grafanaTarget is one query of a panel, its variables substituted as
// Grafana would with each at "All".
type grafanaTarget struct {
	panel, refID, expr, legend string
}

// grafanaTargets parses the dashboard and returns its queries. Every panel
// queries the datasource variable (so the dashboard imports into any
// Grafana), and every panel but a row has a query.
func grafanaTargets(t *testing.T, text string) []grafanaTarget {
	t.Helper()
	type datasource struct{ Type, UID string }
	type panel struct {
		ID         int
		Type       string
		Title      string
		Datasource *datasource
		Targets    []struct {
			RefID        string `json:"refId"`
			Expr         string
			LegendFormat string `json:"legendFormat"`
			Datasource   *datasource
		}
		Panels []json.RawMessage // a row's panels
	}
	var dash struct {
		SchemaVersion int
		UID           string
		Title         string
		Panels        []json.RawMessage
		Templating    struct {
			List []struct {
				Name, Type, AllValue string
				Query                json.RawMessage
				IncludeAll           bool
			}
		}
	}
	if err := json.Unmarshal([]byte(text), &dash); err != nil {
		t.Fatalf("examples/grafana/keybroker.json: %v", err)
	}
	if dash.SchemaVersion < 36 || dash.UID == "" || dash.Title == "" {
		t.Fatalf("examples/grafana/keybroker.json: schemaVersion %d, uid %q, title %q", dash.SchemaVersion, dash.UID, dash.Title)
	}
	// What each variable stands for: Grafana's own, and the dashboard's
	// at "All" (their allValue, a regex).
	values := map[string]string{"__rate_interval": "1m", "__interval": "15s"}
	datasourceVar := ""
	for _, v := range dash.Templating.List {
		switch {
		case v.Type == "datasource" && string(v.Query) == `"prometheus"`:
			datasourceVar = v.Name
		case v.IncludeAll && v.AllValue != "":
			values[v.Name] = v.AllValue
		default:
			t.Fatalf("dashboard variable %s (%s): this test does not know what it stands for; give it includeAll and an allValue", v.Name, v.Type)
		}
	}
	if datasourceVar == "" {
		t.Fatal("the dashboard has no Prometheus datasource variable: it would not import into another Grafana")
	}
	wantDS := "${" + datasourceVar + "}"
	variable := regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)`)
	var out []grafanaTarget
	ids := map[int]bool{}
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("a dashboard panel: %v", err)
			}
			if ids[p.ID] {
				t.Errorf("panel %q: id %d is not unique", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != wantDS || len(p.Targets) == 0 {
				t.Errorf("panel %q: datasource %v, %d targets; want %s and at least one", p.Title, p.Datasource, len(p.Targets), wantDS)
			}
			for _, tg := range p.Targets {
				if tg.Expr == "" || (tg.Datasource != nil && tg.Datasource.UID != wantDS) {
					t.Errorf("panel %q target %s: expr %q, datasource %v", p.Title, tg.RefID, tg.Expr, tg.Datasource)
					continue
				}
				expr := variable.ReplaceAllStringFunc(tg.Expr, func(m string) string {
					s := variable.FindStringSubmatch(m)
					name := s[1] + s[2] + s[3]
					v, ok := values[name]
					if !ok {
						t.Errorf("panel %q target %s uses $%s, which this test cannot fill in", p.Title, tg.RefID, name)
					}
					return v
				})
				out = append(out, grafanaTarget{p.Title, tg.RefID, expr, tg.LegendFormat})
			}
		}
	}
	walk(dash.Panels)
	if len(out) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	return out
}

// promtoolCases reads a promtool test file: the alerts some case expects to
// fire, and those some case expects quiet ("exp_alerts: []").
func promtoolCases(text string) (fires, quiet map[string]bool) {
	fires, quiet = map[string]bool{}, map[string]bool{}
	name := regexp.MustCompile(`(?m)^\s*alertname:\s*(\S+)\s*$`)
	none := regexp.MustCompile(`(?m)^\s*exp_alerts:\s*\[\]\s*$`)
	for _, c := range regexp.MustCompile(`(?m)^\s*- eval_time:`).Split(text, -1)[1:] {
		m := name.FindStringSubmatch(c)
		switch {
		case m == nil:
		case none.MatchString(c):
			quiet[m[1]] = true
		default:
			fires[m[1]] = true
		}
	}
	return fires, quiet
}

var (
	metricNames  = regexp.MustCompile(`\bkeybroker_sidecar_[a-zA-Z0-9_]*[a-zA-Z0-9]`)
	legendLabels = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)
	// Label names in a query: grouping and matching clauses, and matchers.
	labelLists = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	matchers   = regexp.MustCompile(`([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*"`)
)

// exposition reads the sidecar's /metrics: the metric names it exports
// (histograms by their own name and their _bucket, _sum and _count
// series) and every label name on them.
func exposition(t *testing.T, authURL string) (names, labels map[string]bool) {
	t.Helper()
	resp, err := http.Get(authURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names, labels = map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name, rest = line[:i], line[i:]
			for _, m := range matchers.FindAllStringSubmatch(rest[:strings.LastIndexByte(rest, '}')+1], -1) {
				labels[m[1]] = true
			}
		}
		names[name] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !names["keybroker_sidecar_decisions_total"] || !labels["reason"] {
		t.Fatalf("/metrics does not look like the sidecar's: %v %v", names, labels)
	}
	return names, labels
}

// checkLabels fails the test for a label name in expr that no sidecar
// series carries (nor the job and instance Prometheus adds): a misspelled
// "by (reson)" still returns data, one series without the label.
func checkLabels(t *testing.T, expr string, labels map[string]bool) {
	t.Helper()
	var used []string
	for _, m := range labelLists.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				used = append(used, l)
			}
		}
	}
	for _, m := range matchers.FindAllStringSubmatch(expr, -1) {
		used = append(used, m[1])
	}
	for _, l := range used {
		if !labels[l] && l != "job" && l != "instance" && l != "__name__" {
			t.Errorf("%s: label %s is on no series the sidecar exports", expr, l)
		}
	}
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  []interface{}     `json:"value"`
}

func (s promSample) value() string {
	if len(s.Value) != 2 {
		return ""
	}
	v, _ := s.Value[1].(string)
	return v
}

// promQuery runs an instant query; a result that is not a vector is an
// error (a panel draws series).
func promQuery(base, query string) ([]promSample, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status, Error string
		Data          struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", r.Status, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", r.Data.ResultType)
	}
	var s []promSample
	return s, json.Unmarshal(r.Data.Result, &s)
}

type promRule struct {
	Name, Query, Type, Health, State, LastError string
	Duration                                    float64
	Labels, Annotations                         map[string]string
	File                                        string `json:"-"`
}

// promRules lists the rules Prometheus loaded, with their group's file.
func promRules(t *testing.T, base string) []promRule {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string
		Data   struct {
			Groups []struct {
				File  string
				Rules []promRule
			}
		}
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Status != "success" {
		t.Fatalf("/api/v1/rules: %v %s", err, b)
	}
	var out []promRule
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			rule.File = g.File
			out = append(out, rule)
		}
	}
	return out
}
