package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/contract"
	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// A key-usage report whose answer did not come back is sent again as it
// was, with its report_id, before the keys seen since, which go in a
// report of their own: the plugin counts each report_id once. Vault
// records every report; the network in front of it (a forwarder, not a
// Vault) loses the answer on the way back.
func TestUsageReportSentAgainWithItsID(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	type sent struct{ id, usage string }
	var (
		mu   sync.Mutex
		got  []sent
		lose = true
	)
	vaultURL, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	forward := httputil.NewSingleHostReverseProxy(vaultURL)
	forward.ErrorLog = log.New(io.Discard, "", 0) // the sidecar's polls cut short when it stops
	lossy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/keybroker/key-usage" {
			forward.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var report struct {
			Usage    string `json:"usage"`
			ReportID string `json:"report_id"`
		}
		_ = json.Unmarshal(body, &report)
		answer := httptest.NewRecorder()
		forward.ServeHTTP(answer, r) // Vault records it
		mu.Lock()
		got = append(got, sent{report.ReportID, report.Usage})
		lost := lose
		mu.Unlock()
		if lost {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		for k, vs := range answer.Header() {
			w.Header()[k] = vs
		}
		w.WriteHeader(answer.Code)
		_, _ = w.Write(answer.Body.Bytes())
	}))
	t.Cleanup(lossy.Close)
	e := startSidecar(t, v, func(c *sidecar.Config) { c.Vault.Address, c.UsageReportInterval = lossy.URL, "300ms" })
	reports := func() []sent {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	minted := func(name string) (key, id string) {
		d := write(t, v.Client, "keybroker/keys/svc", map[string]interface{}{"name": name}).Data
		return d["key"].(string), d["key_id"].(string)
	}
	use := func(key string) {
		t.Helper()
		if r := call(t, e.proxy, "GET", "/read", map[string]string{"X-API-Key": key}, ""); r.status != http.StatusOK {
			t.Fatalf("key denied: %d %s", r.status, r.header.Get("X-Keybroker-Reason"))
		}
	}
	a, aID := minted("a")
	b, bID := minted("b")

	use(a)
	use(a)
	eventually(t, 10*time.Second, "the report whose answer was lost was never sent again", func() bool { return len(reports()) >= 2 })
	use(b)
	n := len(reports())
	eventually(t, 10*time.Second, "the lost report was not sent again after b was used", func() bool { return len(reports()) > n })
	mu.Lock()
	lose = false
	mu.Unlock()
	eventually(t, 10*time.Second, "the keys seen since were never reported", func() bool {
		r := reports()
		return r[len(r)-1].id != r[0].id
	})
	time.Sleep(time.Second) // a few intervals: an answered report is not sent again

	r := reports()
	first, last := r[0], r[len(r)-1]
	if first.id == "" || len(first.id) > contract.MaxReportIDLength {
		t.Fatalf("report_id %q", first.id)
	}
	for i, s := range r[:len(r)-1] {
		if s != first {
			t.Fatalf("report %d %+v; want the first %+v sent again as it was (all: %+v)", i, s, first, r)
		}
	}
	counts := func(usage string) map[string]int64 {
		var entries []contract.KeyUse
		if err := json.Unmarshal([]byte(usage), &entries); err != nil {
			t.Fatalf("usage %q: %v", usage, err)
		}
		out := map[string]int64{}
		for _, e := range entries {
			out[e.KeyID] += e.Count
		}
		return out
	}
	if c := counts(first.usage); c[aID] == 0 || c[bID] != 0 {
		t.Errorf("first report %v: want a, not b (used after it was sent)", c)
	}
	if c := counts(last.usage); c[bID] != 1 {
		t.Errorf("last report %v: want b once", c)
	}
	// The plugin counted each report once, however often it was sent.
	for id, want := range map[string]int64{aID: 2, bID: 1} {
		uses, _ := read(t, v.Client, "keybroker/keys/id/"+id, nil).Data["uses"].([]interface{})
		var n int64
		for _, u := range uses {
			c, _ := u.(map[string]interface{})["count"].(json.Number).Int64()
			n += c
		}
		if n != want {
			t.Errorf("key %s counted %d uses, want %d (reports: %+v)", id, n, want, r)
		}
	}
}
