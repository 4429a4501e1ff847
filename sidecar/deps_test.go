package sidecar

import (
	"os/exec"
	"strings"
	"testing"
)

// A Go service that embeds the sidecar (Middleware) links no gRPC and no
// Envoy types: Envoy's ext_authz lives in package extauthz, which only
// keybroker-sidecar imports. (Protobuf's runtime comes with Prometheus's
// client either way.)
func TestEmbeddingLinksNoGRPC(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"google.golang.org/grpc", "github.com/envoyproxy/"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("package sidecar depends on %s", dep)
			}
		}
	}
}
