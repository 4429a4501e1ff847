package sidecar

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// A report whose answer did not come back is sent again as it was, with
// its report_id, before the keys seen since, which go in a report of their
// own: the plugin counts each report_id once.
func TestUsageReportSentAgainWithItsID(t *testing.T) {
	type sent struct {
		id, usage string
	}
	var (
		mu    sync.Mutex
		got   []sent
		fail  = true
		ids   = map[string]bool{}
		usage = map[string]int64{}
	)
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Usage    string `json:"usage"`
			ReportID string `json:"report_id"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		defer mu.Unlock()
		got = append(got, sent{body.ReportID, body.Usage})
		if !ids[body.ReportID] { // what the plugin does: count an id once
			ids[body.ReportID] = true
			var entries []struct {
				KeyID string `json:"key_id"`
				Count int64  `json:"count"`
			}
			_ = json.Unmarshal([]byte(body.Usage), &entries)
			for _, e := range entries {
				usage[e.KeyID] += e.Count
			}
		}
		if fail { // recorded, but the answer is lost
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"data":{"recorded":1,"skipped":0,"duplicate":false}}`))
	}))
	defer vault.Close()
	f := newFixture(t, func(c *Config) { c.Vault.Address = vault.URL })
	sc := f.sc
	from := netip.MustParseAddr("10.0.0.1")
	ctx := context.Background()

	sc.usage.saw("aaaaaaaaaaaa", from, time.Now())
	sc.usage.saw("aaaaaaaaaaaa", from, time.Now())
	sc.usage.send(ctx) // lost answer
	sc.usage.saw("bbbbbbbbbbbb", from, time.Now())
	sc.usage.send(ctx) // lost again: the new keys wait
	mu.Lock()
	fail = false
	mu.Unlock()
	sc.usage.send(ctx) // the first report again, then the second

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 4 || got[0] != got[1] || got[1] != got[2] || got[3].id == got[0].id || got[0].id == "" || len(got[0].id) > 64 {
		t.Fatalf("reports sent: %+v; want the first three the same report, the fourth another", got)
	}
	if usage["aaaaaaaaaaaa"] != 2 || usage["bbbbbbbbbbbb"] != 1 {
		t.Fatalf("counted %v; want a=2, b=1", usage)
	}
	if sc.usage.pending != nil {
		t.Fatal("an answered report stayed pending")
	}
}
