package backend

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// renewRefused renews s and wants a refusal: an error carrying want and no
// response, so that Vault's "resp: %#v err: %w" shows the message and
// neither a dump of a logical.Response nor a "%!w(<nil>)".
func (e *testEnv) renewRefused(s *logical.Secret, want string) {
	e.t.Helper()
	r, err := e.lease(logical.RenewOperation, s)
	if r != nil || err == nil {
		e.t.Fatalf("renew = %#v, %v; want a refusal saying %q", r, err, want)
	}
	var coded logical.HTTPCodedError
	if !errors.As(err, &coded) || coded.Code() != http.StatusBadRequest {
		e.t.Fatalf("renew error %#v: want a 400 coded error", err)
	}
	// What vault/expiration.go (renewEntry) makes of it for the operator.
	shown := fmt.Errorf("failed to renew entry: resp: %#v err: %w", r, err).Error()
	if !strings.Contains(shown, want) || strings.Contains(shown, "%!w") || strings.Contains(shown, "&logical.Response{") {
		e.t.Fatalf("operator sees %q; want %q without a struct dump", shown, want)
	}
}

func TestRenewalRefusalsArePlainMessages(t *testing.T) {
	e := newTestEnv(t)
	e.createRole("web", map[string]interface{}{"ttl": "1h", "max_ttl": "3h"})
	deleted := e.mint("web", nil)
	revoked := e.mint("web", nil)
	e.ok(logical.DeleteOperation, e.keyPath(revoked.Data["key_id"].(string)), nil)
	e.renewRefused(revoked.Secret, "key "+revoked.Data["key_id"].(string)+" was revoked and cannot be renewed")
	e.ok(logical.DeleteOperation, "roles/web", nil)
	e.renewRefused(deleted.Secret, "key "+deleted.Data["key_id"].(string)+` cannot be renewed: its role "web" was deleted`)
}
