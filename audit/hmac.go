package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

const hmacPrefix = "hmac-sha256:"

func isHMAC(s string) bool { return strings.HasPrefix(s, hmacPrefix) }

// shortHMAC is an HMAC'd value shown where a value is expected: distinct
// values stay distinct, and it is plain that the value itself is hidden.
func shortHMAC(s string) string {
	if !isHMAC(s) {
		return s
	}
	h := strings.TrimPrefix(s, hmacPrefix)
	if len(h) > 8 {
		h = h[:8]
	}
	return "hmac:" + h
}

// Hasher hashes a known value with an audit device's HMAC key, so that it
// can be found in that device's log where Vault HMAC'd it.
type Hasher interface {
	Hash(ctx context.Context, input string) (string, error)
}

// VaultHasher calls sys/audit-hash/<device> on a Vault. The token needs
// update on that path (root, or a policy granting it); each call is itself
// an audited request. Results are cached.
type VaultHasher struct {
	Addr      string // https://vault.example.com:8200
	Token     string
	Device    string // the audit device's path, e.g. "file" or "file/"
	Namespace string
	Client    *http.Client

	mu    sync.Mutex
	cache map[string]string
	calls int
}

// Calls is how many times Vault was asked.
func (h *VaultHasher) Calls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// Hash returns the device's HMAC of input, "hmac-sha256:<hex>".
func (h *VaultHasher) Hash(ctx context.Context, input string) (string, error) {
	h.mu.Lock()
	if v, ok := h.cache[input]; ok {
		h.mu.Unlock()
		return v, nil
	}
	h.mu.Unlock()
	body, _ := json.Marshal(map[string]string{"input": input})
	url := strings.TrimRight(h.Addr, "/") + "/v1/sys/audit-hash/" + strings.Trim(h.Device, "/")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("X-Vault-Token", h.Token)
	req.Header.Set("Content-Type", "application/json")
	if h.Namespace != "" {
		req.Header.Set("X-Vault-Namespace", h.Namespace)
	}
	c := h.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("sys/audit-hash: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("sys/audit-hash/%s: %s: %s", strings.Trim(h.Device, "/"), resp.Status, strings.TrimSpace(string(b)))
	}
	var out struct {
		Hash string `json:"hash"`
		Data struct {
			Hash string `json:"hash"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return "", fmt.Errorf("sys/audit-hash: %w", err)
	}
	v := out.Data.Hash
	if v == "" {
		v = out.Hash
	}
	if !isHMAC(v) {
		return "", fmt.Errorf("sys/audit-hash answered %q, not an hmac-sha256 value", v)
	}
	h.mu.Lock()
	if h.cache == nil {
		h.cache = map[string]string{}
	}
	h.cache[input] = v
	h.calls++
	h.mu.Unlock()
	return v, nil
}

// forms is the set of ways one value can appear in the log: itself, and
// HMACs of it learned from the log or computed by a Hasher.
type forms map[string]bool

func (f forms) add(vs ...string) {
	for _, v := range vs {
		if v != "" {
			f[v] = true
		}
	}
}

func (f forms) has(v string) bool { return v != "" && f[v] }
