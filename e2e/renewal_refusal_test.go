package e2e

import (
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// A refused renewal reaches the operator as the plugin's reason, through
// the real Vault's expiration manager, not as a dump of a logical.Response.
func TestRenewalRefusalIsPlainMessage(t *testing.T) {
	v := vaultserver.StartT(t)
	root := v.Client
	write(t, root, "keybroker/roles/web", map[string]interface{}{"scopes": "read", "ttl": "1h", "max_ttl": "2h"})
	rotated := write(t, root, "keybroker/keys/web", map[string]interface{}{"name": "old"})
	orphaned := write(t, root, "keybroker/keys/web", map[string]interface{}{"name": "kept"})
	oldID := rotated.Data["key_id"].(string)
	newID := write(t, root, "keybroker/keys/web/id/"+oldID+"/rotate", map[string]interface{}{"grace": "10m"}).Data["key_id"].(string)

	refused := func(leaseID, key, want string) {
		t.Helper()
		_, err := root.Sys().RenewWithContext(ctxT(t), leaseID, 600)
		if err == nil {
			t.Fatalf("renewal of %s succeeded, want refused: %s", leaseID, want)
		}
		msg := err.Error()
		if statusOf(err) != 400 || !strings.Contains(msg, want) || strings.Contains(msg, "&logical.Response{") ||
			strings.Contains(msg, "%!w") || strings.Contains(msg, key) {
			t.Fatalf("renewal refused with %q (status %d); want 400 saying %q, without a struct dump or the key", msg, statusOf(err), want)
		}
	}
	refused(rotated.LeaseID, rotated.Data["key"].(string), "key "+oldID+" was rotated to "+newID+" and cannot be renewed; its grace ends at ")

	if _, err := root.Logical().DeleteWithContext(ctxT(t), "keybroker/roles/web"); err != nil {
		t.Fatal(err)
	}
	refused(orphaned.LeaseID, orphaned.Data["key"].(string), "key "+orphaned.Data["key_id"].(string)+` cannot be renewed: its role "web" was deleted`)
}
