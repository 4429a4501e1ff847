package sidecar

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/jwtverify"
)

// discovery stands in for the vault client behind the JWKS feed: it
// refuses the discovery document with status until asked refusals times,
// then answers issuer, and serves a key set.
type discovery struct {
	status, refusals int
	asked            atomic.Int32
	jwks             []byte
}

func (d *discovery) issuer(context.Context) (string, error) {
	if int(d.asked.Add(1)) <= d.refusals {
		return "", &api.ResponseError{HTTPMethod: http.MethodGet, URL: "keybroker/.well-known/openid-configuration", StatusCode: d.status}
	}
	return "https://iss", nil
}

func (d *discovery) raw(context.Context, string) ([]byte, error) { return d.jwks, nil }

// A sidecar pointed at a mount where no keybroker answers says so once,
// with what to check, not the same Vault error every second.
func TestIssuerFailureSaidOnceWithAHint(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	set, err := jwtverify.MarshalJWKS([]jwtverify.Key{{ID: "k1", Alg: jwtverify.AlgEdDSA, Public: pub}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		status int
		hint   string
	}{
		{http.StatusForbidden, "no keybroker plugin answers at this path"},
		{http.StatusNotFound, "no keybroker plugin answers at this path"},
		{http.StatusBadGateway, "Vault may be out of reach"},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			t.Parallel()
			issuerFailure(t, set, tc.status, tc.hint)
		})
	}
}

// issuerFailure starts a JWKS feed whose discovery is refused with status
// twice, and checks what it logged.
func issuerFailure(t *testing.T, set []byte, status int, hint string) {
	src := &discovery{status: status, refusals: 2, jwks: set}
	var logs bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	keys := newJWKS(src, time.Second, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "f"}, []string{"trigger", "result"}), log)
	f := newJWKSFeed(jwksFeedOptions{mount: "keybroker", audiences: []string{"svc"}, leeway: time.Second, refresh: time.Hour}, keys, src, log)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.start(ctx)
	if keys.verifier.Load() == nil {
		t.Fatal("no verifier after the issuer was read")
	}
	out := logs.String()
	if n := strings.Count(out, "cannot read the issuer"); n != 1 {
		t.Errorf("said %d times in 2 refusals:\n%s", n, out)
	}
	if !strings.Contains(out, hint) || !strings.Contains(out, "keybroker/.well-known/openid-configuration") {
		t.Errorf("no hint %q or path in:\n%s", hint, out)
	}
}
