package backend

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func usageReport(t *testing.T, entries ...usageEntry) map[string]interface{} {
	b, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]interface{}{"usage": string(b)}
}

func TestKeyUsage(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"scopes": "read"})
	used, idle, gone := e.mint("web", nil), e.mint("web", nil), e.mint("web", nil)
	usedID, idleID, goneID := used.Data["key_id"].(string), idle.Data["key_id"].(string), gone.Data["key_id"].(string)
	e.ok(logical.DeleteOperation, e.keyPath(goneID), nil)

	now := time.Now().Unix()
	got := e.ok(logical.UpdateOperation, "key-usage", usageReport(t,
		usageEntry{KeyID: usedID, Last: now - 5, From: "10.0.0.1", Count: 3},
		usageEntry{KeyID: goneID, Last: now, From: "10.0.0.9", Count: 1},
	)).Data
	if got["recorded"] != 1 || got["skipped"] != 1 {
		t.Fatalf("recorded %v skipped %v, want 1 and 1 (the revoked key)", got["recorded"], got["skipped"])
	}
	// A second sidecar's report: counts add up, the latest use wins.
	e.ok(logical.UpdateOperation, "key-usage", usageReport(t, usageEntry{KeyID: usedID, Last: now, From: "10.0.0.2", Count: 4}))
	e.ok(logical.UpdateOperation, "key-usage", usageReport(t, usageEntry{KeyID: usedID, Last: now - 60, From: "10.0.0.3", Count: 1}))
	d := e.ok(logical.ReadOperation, e.keyPath(usedID), nil).Data
	uses := d["uses"].([]map[string]interface{})
	if d["last_used_at"] != time.Unix(now, 0).UTC().Format(time.RFC3339) || d["last_used_from"] != "10.0.0.2" || len(uses) != 1 || uses[0]["count"] != int64(8) {
		t.Fatalf("key read: %#v", d)
	}
	if d := e.ok(logical.ReadOperation, "keys/id/"+idleID, nil).Data; d["last_used_at"] != nil || len(d["uses"].([]map[string]interface{})) != 0 {
		t.Fatalf("unused key read: %#v", d)
	}

	// Stale keys: the idle one (minted now, so unused for 0s only) shows
	// up once the window is short enough; the used one does not.
	time.Sleep(1100 * time.Millisecond)
	list := e.ok(logical.ListOperation, "keys/id/", map[string]interface{}{"unused_for": "1s"})
	keys := list.Data["keys"].([]string)
	if !slices.Contains(keys, idleID) || slices.Contains(keys, goneID) {
		t.Fatalf("unused for 1s: %v (idle %s, revoked %s)", keys, idleID, goneID)
	}
	if keys, _ := e.ok(logical.ListOperation, "keys/id/", map[string]interface{}{"unused_for": "1h"}).Data["keys"].([]string); len(keys) != 0 {
		t.Fatalf("unused for 1h: %v", keys)
	}
	all := e.ok(logical.ListOperation, "keys/id/", nil).Data
	if info := all["key_info"].(map[string]interface{})[usedID].(map[string]interface{}); info["last_used_at"] == "" {
		t.Fatalf("key_info %#v", info)
	}

	// Entries that make no sense are skipped one by one, the rest kept:
	// a report is never refused whole for one of them.
	got = e.ok(logical.UpdateOperation, "key-usage", usageReport(t,
		usageEntry{KeyID: "short", Last: now, Count: 1},
		usageEntry{KeyID: usedID, Last: now, Count: 0},
		usageEntry{KeyID: usedID, Last: now + 3600, Count: 1},
		usageEntry{KeyID: usedID, Last: now, From: "evil", Count: 1},
		usageEntry{KeyID: usedID, Last: 86400, Count: 5}, // 1970: before the key existed
		usageEntry{KeyID: usedID, Last: now, From: "10.0.0.4", Count: 2},
	)).Data
	if got["recorded"] != 1 || got["skipped"] != 5 {
		t.Fatalf("a report with 5 bad entries: %#v", got)
	}
	if d := e.ok(logical.ReadOperation, "keys/id/"+usedID, nil).Data; len(d["uses"].([]map[string]interface{})) != 1 || d["uses"].([]map[string]interface{})[0]["count"] != int64(10) {
		t.Fatalf("uses after bad entries: %#v", d["uses"])
	}
	e.userError(logical.UpdateOperation, "key-usage", map[string]interface{}{"usage": "{"}, "JSON array")
	e.userError(logical.UpdateOperation, "key-usage", map[string]interface{}{"usage": fmt.Sprintf("[%s]", repeatJSON(`{"key_id":"`+usedID+`","last":1,"count":1}`, maxUsageEntries+1))}, "at most")
}

func repeatJSON(s string, n int) string {
	out := make([]byte, 0, (len(s)+1)*n)
	for i := 0; i < n; i++ {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, s...)
	}
	return string(out)
}
