package sidecar

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keybroker/keybroker/contract"
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
	if d.status != http.StatusTooManyRequests || d.reason != contract.ReasonBudgetExhausted || d.retryAfter != 30*time.Minute || refill {
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

// A reservation is one chunk, whatever happens while a top-up is out: a
// report that retires the chunk meanwhile (idle, or close to expiry) must
// not leave the top-up's answer to start a second chunk on the same
// reservation, whose running totals would contradict the first's and be
// refused, losing what it spent while the plugin gives the units back.
func TestTopUpGoesToTheChunkItNamed(t *testing.T) {
	now := time.Now()
	answer := func(id string, granted int64) *contract.BudgetReservation {
		return &contract.BudgetReservation{ReservationID: id, Granted: granted, Remaining: 500,
			PeriodEnd: now.Add(time.Hour).Format(time.RFC3339Nano), ExpiresAt: now.Add(30 * time.Second).Format(time.RFC3339Nano)}
	}
	for _, tc := range []struct {
		name                 string
		between              func(m *meter, c *chunk)
		answerID             string
		wantCur, wantRetired int // chunks on reservation k:1 after the answer
		wantGranted          int64
	}{
		{"still current", func(*meter, *chunk) {}, "k:1", 1, 0, 150},
		{"retired by a report meanwhile", func(m *meter, _ *chunk) { m.retireLocked() }, "k:1", 0, 1, 150},
		{"released meanwhile", func(m *meter, c *chunk) {
			m.retireLocked()
			c.released = true
			m.retired = removeChunk(m.retired, c)
		}, "k:1", 0, 0, 150},
		{"the plugin made a new reservation", func(*meter, *chunk) {}, "k:2", 0, 1, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &chunk{resID: "k:1", granted: 100, used: 40, periodEnd: now.Add(time.Hour), expiresAt: now.Add(time.Minute)}
			m := &meter{id: "k", central: -1, cur: c}
			tc.between(m, c)
			if err := m.grantedLocked(now, c, answer(tc.answerID, 50)); err != nil {
				t.Fatal(err)
			}
			cur, retired := 0, 0
			if m.cur != nil && m.cur.resID == "k:1" {
				cur++
			}
			for _, r := range m.retired {
				if r.resID == "k:1" {
					retired++
				}
			}
			if cur != tc.wantCur || retired != tc.wantRetired || cur+retired > 1 {
				t.Fatalf("chunks on k:1: current %d retired %d, want %d and %d", cur, retired, tc.wantCur, tc.wantRetired)
			}
			if c.granted != tc.wantGranted || c.used != 40 {
				t.Fatalf("the named chunk: granted %d used %d, want %d and 40", c.granted, c.used, tc.wantGranted)
			}
			if tc.answerID == "k:2" && (m.cur == nil || m.cur.granted != 50 || m.cur.used != 0) {
				t.Fatalf("a new reservation: current chunk %+v", m.cur)
			}
			if m.cur != nil && m.cur.resID == "k:1" && m.cur != c {
				t.Fatal("a second chunk on k:1")
			}
		})
	}
}

func TestUsageFromResponses(t *testing.T) {
	const cost, hold = 3, 10 // the route's cost; what the request held
	sse := func(lines ...string) string { return strings.Join(lines, "\n\n") + "\n\n" }
	openaiJSON := `{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}`
	stream := sse(
		`data: {"choices":[{"delta":{"content":"Hel"}}],"usage":null}`,
		`data: {"choices":[{"delta":{"content":"lo"}}],"usage":null}`,
		`data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":5000}}`,
		`data: [DONE]`)
	for _, tc := range []struct {
		name        string
		rt          route
		contentType string
		header      string
		encoding    string // Content-Encoding the upstream used
		body        string
		want        int64
		fallback    string // source/reason counted, if any
	}{
		{"fixed cost", route{cost: 4}, "text/plain", "", "", "hello", 4, ""},
		{"header", route{cost: cost, usageHeader: "X-Usage-Tokens"}, "", " 42 ", "", "", 42, ""},
		{"header missing", route{cost: cost, usageHeader: "X-Usage-Tokens"}, "", "", "", "", hold, "header/missing"},
		{"header missing, fallback cost", route{cost: cost, usageHeader: "X-Usage-Tokens", fallbackCost: true}, "", "", "", "", cost, "header/missing"},
		{"header garbage", route{cost: cost, usageHeader: "X-Usage-Tokens"}, "", "lots", "", "", hold, "header/invalid"},
		{"header negative", route{cost: cost, usageHeader: "X-Usage-Tokens"}, "", "-5", "", "", hold, "header/invalid"},
		{"openai json", route{cost: cost, openaiUsage: true}, "application/json", "", "", openaiJSON, 21, ""},
		{"openai json without usage", route{cost: cost, openaiUsage: true}, "application/json", "", "", `{"id":"x"}`, hold, "openai/missing"},
		{"openai without usage, fallback cost", route{cost: cost, openaiUsage: true, fallbackCost: true}, "application/json", "", "", `{"id":"x"}`, cost, "openai/missing"},
		{"openai not json", route{cost: cost, openaiUsage: true}, "text/html", "", "", `<html>bad gateway</html>`, hold, "openai/invalid"},
		{"openai fractional", route{cost: cost, openaiUsage: true}, "application/json", "", "", `{"usage":{"total_tokens":2.5}}`, hold, "openai/invalid"},
		{"openai too large", route{cost: cost, openaiUsage: true}, "application/json", "", "", `{"pad":"` + strings.Repeat("x", maxUsageBody) + `","usage":{"total_tokens":5}}`, hold, "openai/too_large"},
		{"stream with final usage", route{cost: cost, openaiUsage: true}, "text/event-stream; charset=utf-8", "", "", stream, 5000, ""},
		{"stream without usage", route{cost: cost, openaiUsage: true}, "text/event-stream", "", "", sse(
			`data: {"choices":[{"delta":{"content":"Hi"}}]}`, `data: [DONE]`), hold, "openai/missing"},
		{"stream cut before its end", route{cost: cost, openaiUsage: true}, "text/event-stream", "", "",
			"data: {\"choices\":[],\"usage\":{\"total_tokens\":11}}\r\n\r\ndata: {\"choi", 11, ""},
		// Compressed answers are metered exactly.
		{"gzip json", route{cost: cost, openaiUsage: true}, "application/json", "", "gzip", openaiJSON, 21, ""},
		{"gzip stream", route{cost: cost, openaiUsage: true}, "text/event-stream", "", "gzip", stream, 5000, ""},
		{"deflate (zlib) json", route{cost: cost, openaiUsage: true}, "application/json", "", "deflate", openaiJSON, 21, ""},
		{"raw deflate json", route{cost: cost, openaiUsage: true}, "application/json", "", "raw-deflate", openaiJSON, 21, ""},
		{"brotli stream", route{cost: cost, openaiUsage: true}, "text/event-stream", "", "br", stream, 5000, ""},
		{"zstd json", route{cost: cost, openaiUsage: true}, "application/json", "", "zstd", openaiJSON, 21, ""},
		{"zstd stream", route{cost: cost, openaiUsage: true}, "text/event-stream", "", "zstd", stream, 5000, ""},
		{"unknown encoding", route{cost: cost, openaiUsage: true}, "application/json", "", "compress", openaiJSON, hold, "openai/encoding"},
		{"corrupt gzip", route{cost: cost, openaiUsage: true}, "application/json", "", "corrupt-gzip", openaiJSON, hold, "openai/invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := testBudgets(t)
			now := time.Now()
			m := &meter{id: "k", central: -1}
			m.cur = &chunk{granted: 1 << 40, periodEnd: now.Add(time.Hour), expiresAt: now.Add(time.Minute)}
			h, _, _ := m.tryLocked(now, hold, false)
			h.b = sc.budgets
			sent, ce := encode(t, tc.encoding, tc.body)
			resp := &http.Response{Header: http.Header{}, Body: io.NopCloser(strings.NewReader(sent))}
			resp.Header.Set("Content-Type", tc.contentType)
			if ce != "" {
				resp.Header.Set("Content-Encoding", ce)
				resp.Header.Set("Content-Length", strconv.Itoa(len(sent)))
			}
			if tc.header != "" {
				resp.Header.Set("X-Usage-Tokens", tc.header)
			}
			settleResponse(resp, h, &tc.rt)
			// The client reads the body in small pieces, then it is closed:
			// decoded when the sidecar could decode it, else as it came.
			want := tc.body
			if tc.fallback == "openai/encoding" || tc.encoding == "corrupt-gzip" {
				want = sent
			}
			got, err := io.ReadAll(iotest.OneByteReader(resp.Body))
			if tc.encoding != "corrupt-gzip" && (err != nil || string(got) != want) {
				t.Fatalf("the client got %q (%v), want %q", got, err, want)
			}
			if ce != "" && tc.fallback != "openai/encoding" && (resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Content-Length") != "") {
				t.Fatalf("decoded body still announced as %q, length %q", resp.Header.Get("Content-Encoding"), resp.Header.Get("Content-Length"))
			}
			resp.Body.Close()
			if m.cur.used != tc.want {
				t.Fatalf("charged %d, want %d", m.cur.used, tc.want)
			}
			for _, src := range []string{"header", "openai"} {
				for _, reason := range []string{fallbackMissing, fallbackInvalid, fallbackTooLarge, fallbackEncoding} {
					n := testutil.ToFloat64(sc.m.usageFallbacks.WithLabelValues(src, reason))
					if want := tc.fallback == src+"/"+reason; (n == 1) != want {
						t.Errorf("fallback metric %s/%s = %v", src, reason, n)
					}
				}
			}
		})
	}
}

// encode compresses body as an upstream would, and returns it with the
// Content-Encoding it announces.
func encode(t *testing.T, encoding, body string) (string, string) {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	ce := encoding
	switch encoding {
	case "":
		return body, ""
	case "gzip", "corrupt-gzip":
		w, ce = gzip.NewWriter(&b), "gzip"
	case "deflate":
		w = zlib.NewWriter(&b)
	case "raw-deflate":
		w, _ = flate.NewWriter(&b, flate.DefaultCompression)
		ce = "deflate"
	case "br":
		w = brotli.NewWriter(&b)
	case "zstd":
		w, _ = zstd.NewWriter(&b)
	case "compress":
		return "\x1f\x9d" + body, "compress"
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatal(err)
	}
	w.Close()
	out := b.String()
	if encoding == "corrupt-gzip" {
		out = out[:10] + strings.Repeat("\xff", 20) + out[30:]
	}
	return out, ce
}

// An exhausted budget tells clients not to retry (the OpenAI SDKs honour
// X-Should-Retry), and on an OpenAI-metered route answers in OpenAI's error
// shape; a rate limit stays retryable.
func TestExhaustedAnswers(t *testing.T) {
	sc := testBudgets(t)
	for _, tc := range []struct {
		d         decision
		retry     string
		code, typ string
	}{
		{decision{status: 429, reason: contract.ReasonBudgetExhausted, retryAfter: time.Hour, openai: true}, "false", "insufficient_quota", "insufficient_quota"},
		{decision{status: 429, reason: contract.ReasonBudgetExhausted, retryAfter: time.Hour}, "false", "", ""},
		{decision{status: 429, reason: contract.ReasonRateLimited, retryAfter: time.Second, openai: true}, "", "rate_limit_exceeded", "requests"},
	} {
		w := httptest.NewRecorder()
		sc.writeDenial(w, tc.d, false)
		var body struct {
			Error  json.RawMessage `json:"error"`
			Reason string          `json:"reason"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		var oe struct{ Code, Type, Message string }
		_ = json.Unmarshal(body.Error, &oe)
		if w.Header().Get("X-Should-Retry") != tc.retry || oe.Code != tc.code || oe.Type != tc.typ || body.Reason != tc.d.reason || w.Header().Get("Retry-After") == "" {
			t.Errorf("%+v: X-Should-Retry %q, error %s, reason %q", tc.d, w.Header().Get("X-Should-Retry"), body.Error, body.Reason)
		}
	}
}
