package e2e

import (
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/andybalholm/brotli"

	"github.com/keybroker/keybroker/internal/vaultserver"
	"github.com/keybroker/keybroker/sidecar"
)

// A metered OpenAI-style upstream that compresses its answers whatever the
// request asked (gzip or brotli, JSON or a stream): three sidecars meter
// every token, clients asking for gzip included, and Vault's count matches
// what the upstream served.
func TestBudgetCompressedAnswers(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	root := v.Client
	write(t, root, "keybroker/roles/llm", map[string]interface{}{"scopes": "read", "budget": 1_000_000, "max_cost_per_request": 8000})
	minted := write(t, root, "keybroker/keys/llm", map[string]interface{}{"name": "agent"})
	key, keyID := minted.Data["key"].(string), minted.Data["key_id"].(string)

	var served, identityAsked atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") == "identity" {
			identityAsked.Add(1)
		}
		tokens := int64(1000 + len(r.URL.Path))
		served.Add(tokens)
		enc := r.URL.Query().Get("enc")
		w.Header().Set("Content-Encoding", enc)
		var zw io.WriteCloser
		if enc == "br" {
			zw = brotli.NewWriter(w)
		} else {
			zw = gzip.NewWriter(w)
		}
		if r.URL.Query().Get("stream") != "" {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(zw, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n")
			fmt.Fprintf(zw, "data: {\"choices\":[],\"usage\":{\"total_tokens\":%d}}\n\ndata: [DONE]\n\n", tokens)
		} else {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(zw, `{"choices":[{"message":{"content":"%s"}}],"usage":{"total_tokens":%d}}`, strings.Repeat("x", 2000), tokens)
		}
		zw.Close()
	}))
	t.Cleanup(up.Close)
	var sidecars []*sidecarEnv
	for i := 0; i < 3; i++ {
		sidecars = append(sidecars, startSidecar(t, v, func(c *sidecar.Config) {
			c.Upstream = up.URL
			c.Routes = append(c.Routes, sidecar.RouteConfig{PathPrefix: "/v1/chat", Scopes: []string{"read"}, OpenAIUsage: true})
		}))
	}
	// No transparent decompression on the client side: it asks for gzip
	// itself, as the OpenAI SDKs and browsers do.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	n := 0
	for i, sc := range sidecars {
		for _, q := range []string{"enc=gzip", "enc=br", "enc=gzip&stream=1", "enc=br&stream=1"} {
			req, _ := http.NewRequest("POST", fmt.Sprintf("%s/v1/chat/completions/%d?%s", sc.proxy, i, q), nil)
			req.Header.Set("X-API-Key", key)
			req.Header.Set("Accept-Encoding", "gzip, br")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || !strings.Contains(string(body), "total_tokens") {
				t.Fatalf("%s: %d, Content-Encoding %q, body %.80q", q, resp.StatusCode, resp.Header.Get("Content-Encoding"), body)
			}
			n++
		}
	}
	if identityAsked.Load() != int64(n) {
		t.Fatalf("the upstream was asked for identity %d times of %d", identityAsked.Load(), n)
	}
	for _, sc := range sidecars {
		sc.stop() // a clean stop reports everything
	}
	used, _, _ := spend(t, root, keyID)
	if used != served.Load() {
		t.Fatalf("Vault counted %d units; the upstream served %d tokens", used, served.Load())
	}
}
