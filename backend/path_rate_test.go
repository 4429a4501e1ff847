package backend

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// takeWindow takes requests from a lineage's window until it is spent and
// returns how many were granted in one window (retrying once if the window
// rolled over meanwhile).
func (e *testEnv) takeWindow(data map[string]interface{}) (granted int64, limit int64) {
	e.t.Helper()
	for attempt := 0; attempt < 2; attempt++ {
		granted, end := int64(0), ""
		for i := 0; i < 1000; i++ {
			d := e.ok(logical.UpdateOperation, "rate/reserve", data).Data
			if end != "" && d["window_end"] != end {
				break // the window rolled over: start again
			}
			end = d["window_end"].(string)
			if d["granted"].(int64) == 0 {
				return granted, d["limit"].(int64)
			}
			granted += d["granted"].(int64)
		}
	}
	e.t.Fatal("the window never ran out")
	return 0, 0
}

func TestRateWindowAcrossVerifiers(t *testing.T) {
	e := newTestEnv(t)
	// 100 at once, refilled in 3600s: hour-long windows of 100 requests.
	e.createRole("r", map[string]interface{}{"scopes": "read", "rate_limit": 0.01, "rate_burst": 100, "audiences": "svc", "subject": "entity_id"})
	minted := e.mint("r", nil)
	key := minted.Data["key_id"].(string)
	unknown := key[:len(key)-1] + map[bool]string{true: "B", false: "A"}[key[len(key)-1] == 'A']

	// Verifiers asking in turn never get more than the window's limit.
	granted, limit := e.takeWindow(map[string]interface{}{"id": key, "units": 8})
	if limit != 100 || granted != 100 {
		t.Fatalf("key: granted %d of a window of %d, want all 100 and no more", granted, limit)
	}
	// A JWT's window is its subject within its role, whatever its jti.
	data := map[string]interface{}{"id": "jti-1", "role": "r", "subject": "agent-1", "units": 30}
	if granted, _ := e.takeWindow(data); granted != 100 {
		t.Fatalf("jwt: granted %d, want 100", granted)
	}
	data["id"] = "jti-2" // a refreshed token of the same subject
	if d := e.ok(logical.UpdateOperation, "rate/reserve", data).Data; d["granted"] != int64(0) {
		t.Fatalf("a new token of a spent lineage was granted %v", d["granted"])
	}
	data["subject"] = "agent-2"
	if d := e.ok(logical.UpdateOperation, "rate/reserve", data).Data; d["granted"] != int64(30) {
		t.Fatalf("another subject was granted %v, want 30", d["granted"])
	}

	e.createRole("free", map[string]interface{}{"scopes": "read"})
	free := e.mint("free", nil).Data["key_id"].(string)
	if d := e.ok(logical.UpdateOperation, "rate/reserve", map[string]interface{}{"id": free, "units": 5}).Data; d["limited"] != false {
		t.Fatalf("a key with no rate limit: %v", d)
	}

	tests := []struct {
		name string
		data map[string]interface{}
		want string
	}{
		{"no id", map[string]interface{}{"units": 1}, "id is required"},
		{"no units", map[string]interface{}{"id": key}, "units must be between"},
		{"too many units", map[string]interface{}{"id": key, "units": 2_000_000}, "units must be between"},
		{"unknown key", map[string]interface{}{"id": unknown, "units": 1}, "no API key"},
		{"jwt without role", map[string]interface{}{"id": "jti", "subject": "s", "units": 1}, "role and subject are required"},
		{"jwt of no role", map[string]interface{}{"id": "jti", "role": "gone", "subject": "s", "units": 1}, `role "gone" does not exist`},
		{"control character subject", map[string]interface{}{"id": "jti", "role": "r", "subject": "a\nb", "units": 1}, "subject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.do(logical.UpdateOperation, "rate/reserve", tt.data)
			if resp == nil || !resp.IsError() {
				t.Fatalf("want an error, got %v", resp)
			}
			if !strings.Contains(resp.Error().Error(), tt.want) {
				t.Fatalf("error %q, want %q", resp.Error(), tt.want)
			}
		})
	}

	// A revoked key takes nothing.
	if _, err := e.lease(logical.RevokeOperation, minted.Secret); err != nil {
		t.Fatal(err)
	}
	e.userError(logical.UpdateOperation, "rate/reserve", map[string]interface{}{"id": key, "units": 1}, "revoked")
}
