package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// The real openai npm SDK through the sidecar on an OpenAI-metered route:
// a completion and a streamed one are charged their usage, and when the
// budget is spent the SDK fails at once with insufficient_quota instead of
// waiting out Retry-After (the period's end, here a day away) in retries.
func TestOpenAISDKThroughSidecar(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	write(t, v.Client, "keybroker/roles/llm", map[string]interface{}{"scopes": "read", "budget": 200, "max_cost_per_request": 30, "budget_period": "24h"})
	key := write(t, v.Client, "keybroker/keys/llm", map[string]interface{}{"name": "app"}).Data["key"].(string)

	var completions atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		completions.Add(1)
		if r.URL.Path != "/v1/chat/completions" || r.Header.Get("Authorization") != "" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		var body struct{ Stream bool }
		_ = json.NewDecoder(r.Body).Decode(&body)
		if body.Stream {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}`+"\n\n")
			fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":15,"total_tokens":20}}`+"\n\n")
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":20,"total_tokens":25}}`)
	}))
	t.Cleanup(up.Close)
	e := startSidecar(t, v, func(c *sidecar.Config) {
		c.Upstream = up.URL
		c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/v1/chat", Scopes: []string{"read"}, OpenAIUsage: true})
	})

	var got struct {
		Chat, Streamed, Calls int
		Error                 *struct {
			Status     int
			Code, Type string
		}
		MS int
	}
	nodeRun(t, &got, "openai.mjs", "run", e.proxy+"/v1", key)
	if got.Chat != 25 || got.Streamed != 20 {
		t.Fatalf("usage the SDK read: %+v", got)
	}
	// 200 units: 25 + 20, then 25 a call; calls hold 30 until they settle.
	if got.Error == nil || got.Error.Status != 429 || got.Error.Code != "insufficient_quota" || got.Error.Type != "insufficient_quota" {
		t.Fatalf("after %d calls: %+v", got.Calls, got.Error)
	}
	if got.Calls < 4 || got.Calls > 7 || got.MS > 10_000 {
		t.Fatalf("%d calls before the budget ran out, the last failure after %d ms", got.Calls, got.MS)
	}
	// No retry reached the upstream after exhaustion: the SDK was told not to.
	if n := completions.Load(); n != int64(got.Calls)+2 {
		t.Fatalf("the upstream got %d completions for %d calls", n, got.Calls+2)
	}
}
