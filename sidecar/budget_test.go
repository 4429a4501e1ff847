package sidecar

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func ptr[T any](v T) *T { return &v }

// testBudgets is a sidecar with no Vault behind it: these tests drive the
// meter's state by hand.
func testBudgets(t *testing.T) *Sidecar {
	t.Helper()
	sc, err := New(&Config{Audiences: []string{"svc"}, Vault: &VaultConfig{Address: "http://127.0.0.1:1", RoleID: "r", SecretIDFile: "/nonexistent"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// A chunk admits holds while they fit; once the plugin has nothing left,
// one request at a time takes the chunk's last units; then 429.
func TestMeterHoldsTailAndExhaustion(t *testing.T) {
	now := time.Now()
	m := &meter{id: "k", central: 0}
	m.cur = &chunk{resID: "k:1", granted: 25, periodEnd: now.Add(time.Hour), expiresAt: now.Add(time.Minute)}

	h1, _, refill := m.tryLocked(now, 10, false)
	h2, _, _ := m.tryLocked(now, 10, false)
	if h1 == nil || h2 == nil || refill || m.cur.held != 20 {
		t.Fatalf("two holds of 10 from 25: %v %v refill=%v held=%d", h1, h2, refill, m.cur.held)
	}
	if h2.remaining != 5 {
		t.Fatalf("X-Budget-Remaining after the second hold = %d, want 5", h2.remaining)
	}
	if _, _, refill := m.tryLocked(now, 10, false); !refill {
		t.Fatal("5 left for a hold of 10: want a refill")
	}
	// The plugin said exhausted until reset.
	m.exhaustedUntil, m.recheckAt = now.Add(30*time.Minute), now.Add(time.Second)
	tail, _, refill := m.tryLocked(now, 10, false)
	if tail == nil || !tail.tail || tail.amount != 5 || refill {
		t.Fatalf("tail hold: %+v refill=%v", tail, refill)
	}
	_, d, refill := m.tryLocked(now, 10, false)
	if d.status != http.StatusTooManyRequests || d.reason != reasonBudgetExhausted || d.retryAfter != 30*time.Minute || refill {
		t.Fatalf("second tail while one is in flight: %+v refill=%v", d, refill)
	}
	// After the recheck interval the plugin is asked again.
	if _, _, refill := m.tryLocked(now.Add(time.Second), 10, false); !refill {
		t.Fatal("no recheck after exhaustedRecheck")
	}
	// A chunk past its period admits nothing and is retired.
	m.cur.periodEnd = now
	if _, _, refill := m.tryLocked(now.Add(2*time.Second), 1, false); !refill || m.cur != nil || len(m.retired) != 1 {
		t.Fatalf("chunk of an ended period: refill=%v cur=%v retired=%d", refill, m.cur, len(m.retired))
	}
}

func TestSettleChargesOnceAndReleasesTail(t *testing.T) {
	sc := testBudgets(t)
	now := time.Now()
	m := &meter{id: "k", central: -1}
	m.cur = &chunk{granted: 100, periodEnd: now.Add(time.Hour), expiresAt: now.Add(time.Minute)}
	h, _, _ := m.tryLocked(now, 10, false)
	h.b = sc.budgets
	h.settle(7)
	h.settle(7)
	if m.cur.used != 7 || m.cur.held != 0 {
		t.Fatalf("settled twice: used %d held %d, want 7 0", m.cur.used, m.cur.held)
	}
	if h.remaining != -1 {
		t.Fatalf("unlimited budget: remaining %d, want -1 (no header)", h.remaining)
	}
	h, _, _ = m.tryLocked(now, 10, false)
	h.b = sc.budgets
	h.settle(25) // over max_cost_per_request: recorded as it is, and counted
	if m.cur.used != 32 || testutil.ToFloat64(sc.m.costOverHold) != 1 {
		t.Fatalf("overrun: used %d, metric %v", m.cur.used, testutil.ToFloat64(sc.m.costOverHold))
	}
}

func TestUsageFromResponses(t *testing.T) {
	const fallback = 3
	sse := func(lines ...string) string { return strings.Join(lines, "\n\n") + "\n\n" }
	for _, tc := range []struct {
		name        string
		rt          route
		contentType string
		header      string
		body        string
		want        int64
		fallback    string // source/reason counted, if any
	}{
		{"fixed cost", route{cost: 4}, "text/plain", "", "hello", 4, ""},
		{"header", route{cost: fallback, usageHeader: "X-Usage-Tokens"}, "", " 42 ", "", 42, ""},
		{"header missing", route{cost: fallback, usageHeader: "X-Usage-Tokens"}, "", "", "", fallback, "header/missing"},
		{"header garbage", route{cost: fallback, usageHeader: "X-Usage-Tokens"}, "", "lots", "", fallback, "header/invalid"},
		{"header negative", route{cost: fallback, usageHeader: "X-Usage-Tokens"}, "", "-5", "", fallback, "header/invalid"},
		{"openai json", route{cost: fallback, openaiUsage: true}, "application/json",
			"", `{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}`, 21, ""},
		{"openai json without usage", route{cost: fallback, openaiUsage: true}, "application/json", "", `{"id":"x"}`, fallback, "openai/missing"},
		{"openai not json", route{cost: fallback, openaiUsage: true}, "text/html", "", `<html>bad gateway</html>`, fallback, "openai/invalid"},
		{"openai fractional", route{cost: fallback, openaiUsage: true}, "application/json", "", `{"usage":{"total_tokens":2.5}}`, fallback, "openai/invalid"},
		{"openai too large", route{cost: fallback, openaiUsage: true}, "application/json", "", `{"pad":"` + strings.Repeat("x", maxUsageBody) + `","usage":{"total_tokens":5}}`, fallback, "openai/too_large"},
		{"stream with final usage", route{cost: fallback, openaiUsage: true}, "text/event-stream; charset=utf-8", "", sse(
			`data: {"choices":[{"delta":{"content":"Hel"}}],"usage":null}`,
			`data: {"choices":[{"delta":{"content":"lo"}}],"usage":null}`,
			`data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`,
			`data: [DONE]`), 7, ""},
		{"stream without usage", route{cost: fallback, openaiUsage: true}, "text/event-stream", "", sse(
			`data: {"choices":[{"delta":{"content":"Hi"}}]}`, `data: [DONE]`), fallback, "openai/missing"},
		{"stream cut before its end", route{cost: fallback, openaiUsage: true}, "text/event-stream", "",
			"data: {\"choices\":[],\"usage\":{\"total_tokens\":11}}\r\n\r\ndata: {\"choi", 11, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := testBudgets(t)
			now := time.Now()
			m := &meter{id: "k", central: -1}
			m.cur = &chunk{granted: 1 << 40, periodEnd: now.Add(time.Hour), expiresAt: now.Add(time.Minute)}
			h, _, _ := m.tryLocked(now, 10, false)
			h.b = sc.budgets
			resp := &http.Response{Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tc.body))}
			resp.Header.Set("Content-Type", tc.contentType)
			if tc.header != "" {
				resp.Header.Set("X-Usage-Tokens", tc.header)
			}
			sc.settleResponse(resp, h, &tc.rt)
			// The client reads the body in small pieces, then it is closed.
			got, err := io.ReadAll(io.LimitReader(struct{ io.Reader }{resp.Body}, int64(len(tc.body))))
			if err != nil || string(got) != tc.body {
				t.Fatalf("the body did not pass through unchanged: %v", err)
			}
			resp.Body.Close()
			if m.cur.used != tc.want {
				t.Fatalf("charged %d, want %d", m.cur.used, tc.want)
			}
			for _, src := range []string{"header", "openai"} {
				for _, reason := range []string{fallbackMissing, fallbackInvalid, fallbackTooLarge} {
					n := testutil.ToFloat64(sc.m.usageFallbacks.WithLabelValues(src, reason))
					if want := tc.fallback == src+"/"+reason; (n == 1) != want {
						t.Errorf("fallback metric %s/%s = %v", src, reason, n)
					}
				}
			}
		})
	}
}
