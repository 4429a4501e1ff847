// Package e2e tests keybroker end to end against a real `vault server`, with
// the plugin registered by sha256 exactly as an operator would register it.
package e2e

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

func TestMain(m *testing.M) { vaultserver.RunTests(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func write(t *testing.T, c *api.Client, path string, data map[string]interface{}) *api.Secret {
	t.Helper()
	s, err := c.Logical().WriteWithContext(ctxT(t), path, data)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return s
}

func read(t *testing.T, c *api.Client, path string, query map[string][]string) *api.Secret {
	t.Helper()
	s, err := c.Logical().ReadWithDataWithContext(ctxT(t), path, query)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return s
}

// statusOf returns the HTTP status of a failed Vault request, 0 if err is nil.
func statusOf(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	if err != nil {
		return -1
	}
	return http.StatusOK
}

func verify(t *testing.T, c *api.Client, key, addr string, scopes ...string) (valid bool, reason string, data map[string]interface{}) {
	t.Helper()
	d := map[string]interface{}{"key": key, "remote_addr": addr}
	if len(scopes) > 0 {
		d["scopes"] = scopes
	}
	s := write(t, c, "keybroker/verify", d)
	return s.Data["valid"].(bool), s.Data["reason"].(string), s.Data
}

// eventually polls cond every 100ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// feedIDs reads the whole revocation feed.
func feedIDs(t *testing.T, c *api.Client) []string {
	t.Helper()
	s := read(t, c, "keybroker/revocations", map[string][]string{"after": {"0"}})
	var ids []string
	for _, r := range s.Data["revocations"].([]interface{}) {
		ids = append(ids, r.(map[string]interface{})["id"].(string))
	}
	return ids
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
