package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/keybroker/keybroker/internal/vaultserver"
)

// The lead the rotation test configures, and the caches of its clients,
// all shorter: jose keeps the JWKS 2.5s (cooldown 5s), jwx follows the
// JWKS's max-age, half the lead.
const (
	testKeyLead     = 6 * time.Second
	joseCacheMaxAge = 2500 * time.Millisecond
	joseCooldown    = 5 * time.Second
)

// Caching verifiers see no gap across signing-key rotations: a token is
// minted and verified every 100ms by jose's createRemoteJWKSet and jwx's
// jwk.Cache, both caching the JWKS, through a manual rotation and a change
// of algorithm, and none is refused. Then an immediate rotation shows what
// the lead saves them: its first token is refused by a client that has not
// refetched the JWKS since, until its cache runs out.
func TestRotationCachingVerifiers(t *testing.T) {
	v := vaultserver.StartT(t)
	setupRoles(t, v)
	write(t, v.Client, "keybroker/config", map[string]interface{}{"next_key_lead": testKeyLead.String()})
	c := newCachingVerifiers(t, v)
	mint := func() (token string, kid string) {
		token = write(t, v.Client, "keybroker/token/svc", map[string]interface{}{"audience": "svc"}).Data["token"].(string)
		return token, jwtHeader(t, token)["kid"].(string)
	}

	// A manual rotation: the next key is published, signs testKeyLead
	// later, and both clients know it by then.
	rot := write(t, v.Client, "keybroker/rotate", nil).Data
	signsAt, err := time.Parse(time.RFC3339Nano, rot["signs_at"].(string))
	if err != nil || time.Until(signsAt) < testKeyLead-time.Second {
		t.Fatalf("rotate answered signs_at %v (%v), want %s from now", rot["signs_at"], err, testKeyLead)
	}
	c.mintUntil(signsAt.Add(2*time.Second), mint, rot["kid"].(string))

	// A change of algorithm takes the same path: the ES256 key is in the
	// JWKS a lead before its first token.
	write(t, v.Client, "keybroker/config", map[string]interface{}{"signing_algorithm": "ES256"})
	cfg := read(t, v.Client, "keybroker/config", nil).Data
	es256, _ := cfg["next_kid"].(string)
	if signsAt, err = time.Parse(time.RFC3339Nano, fmt.Sprint(cfg["next_signs_at"])); err != nil || es256 == "" {
		t.Fatalf("config after the change of algorithm: %v", cfg)
	}
	if alg := c.algOf(es256); alg != "ES256" {
		t.Fatalf("the next key %s is %q in the JWKS, want ES256", es256, alg)
	}
	c.mintUntil(signsAt.Add(2*time.Second), mint, es256)

	// immediate=true signs before any cache has the key: that is its cost.
	rotatedAt := time.Now()
	immediate := write(t, v.Client, "keybroker/rotate", map[string]interface{}{"immediate": true}).Data["kid"].(string)
	token, kid := mint()
	if kid != immediate {
		t.Fatalf("the token after an immediate rotation has kid %s, want %s", kid, immediate)
	}
	refused := 0
	for client, got := range c.verify(token) {
		switch {
		case !got.OK:
			refused++
			t.Logf("%s refused the first token of the immediately rotated key, as expected: %s", client, got.Error)
		case !c.proxy.fetchedSince(client, rotatedAt):
			t.Errorf("%s accepted a token of a key it never fetched: it does not cache the JWKS as configured", client)
		}
	}
	if refused == 0 {
		t.Error("no client refused the first token of an immediately rotated key: the test's caches prove nothing")
	}
	eventually(t, testKeyLead, "the clients never accepted the immediately rotated key", func() bool {
		token, _ := mint()
		for _, got := range c.verify(token) {
			if !got.OK {
				return false
			}
		}
		return true
	})
	c.checkCached()
}

// jwtHeader decodes a JWT's protected header.
func jwtHeader(t *testing.T, token string) map[string]interface{} {
	t.Helper()
	var h map[string]interface{}
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	if err == nil {
		err = json.Unmarshal(b, &h)
	}
	if err != nil {
		t.Fatalf("JWT header of %q: %v", token, err)
	}
	return h
}

// cachingVerifiers are jose and jwx, each fetching the JWKS through its own
// path of a counting proxy.
type cachingVerifiers struct {
	t        *testing.T
	v        *vaultserver.Server
	proxy    *jwksProxy
	jose     *joseVerifier
	jwx      jwk.Set
	verified int
}

type verdict struct {
	OK    bool   `json:"ok"`
	Kid   string `json:"kid"`
	Error string `json:"error"`
}

func newCachingVerifiers(t *testing.T, v *vaultserver.Server) *cachingVerifiers {
	t.Helper()
	iss := v.Addr + "/v1/keybroker"
	c := &cachingVerifiers{t: t, v: v, proxy: newJWKSProxy(t, iss+"/jwks")}
	c.jose = startJoseVerifier(t, c.proxy.url("jose"), iss)

	// jwx's README pattern: a jwk.Cache refreshing in the background, its
	// interval from the JWKS's Cache-Control max-age (the default minimum
	// of 15 minutes lowered, as the lead is).
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cache, err := jwk.NewCache(ctx, httprc.NewClient())
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Register(ctx, c.proxy.url("jwx"), jwk.WithMinInterval(time.Second)); err != nil {
		t.Fatal(err)
	}
	if c.jwx, err = cache.CachedSet(c.proxy.url("jwx")); err != nil {
		t.Fatal(err)
	}
	return c
}

// verify has each client verify token.
func (c *cachingVerifiers) verify(token string) map[string]verdict {
	c.t.Helper()
	c.verified++
	out := map[string]verdict{"jose": c.jose.verify(token)}
	kid, _ := jwtHeader(c.t, token)["kid"].(string)
	jwx := verdict{OK: true, Kid: kid}
	if _, err := jwt.Parse([]byte(token), jwt.WithKeySet(c.jwx), jwt.WithIssuer(c.v.Addr+"/v1/keybroker"), jwt.WithAudience("svc")); err != nil {
		jwx = verdict{Kid: kid, Error: err.Error()}
	}
	out["jwx"] = jwx
	return out
}

// mintUntil mints and verifies a token every 100ms until until, failing on
// any refusal, and requires tokens of the key next among them.
func (c *cachingVerifiers) mintUntil(until time.Time, mint func() (string, string), next string) {
	c.t.Helper()
	byKid := map[string]int{}
	for time.Now().Before(until) {
		token, kid := mint()
		byKid[kid]++
		for client, got := range c.verify(token) {
			if !got.OK {
				c.t.Fatalf("%s refused a token of key %s (%d of its tokens verified before): %s", client, kid, byKid[kid]-1, got.Error)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if byKid[next] < 5 {
		c.t.Fatalf("tokens by key: %v: want the new key %s to have signed some", byKid, next)
	}
	c.t.Logf("tokens verified by jose and jwx, by key: %v", byKid)
}

// algOf is the alg of key kid in the JWKS, "" when it is not there.
func (c *cachingVerifiers) algOf(kid string) string {
	c.t.Helper()
	var set struct {
		Keys []struct{ Kid, Alg string }
	}
	getJSON(c.t, c.v.Addr+"/v1/keybroker/jwks", &set)
	for _, k := range set.Keys {
		if k.Kid == kid {
			return k.Alg
		}
	}
	return ""
}

// checkCached fails unless both clients served most verifications from
// their cache: one that refetched on every token would hide a gap.
func (c *cachingVerifiers) checkCached() {
	c.t.Helper()
	for _, client := range []string{"jose", "jwx"} {
		if n := c.proxy.count(client); n == 0 || n > c.verified/5 {
			c.t.Errorf("%s fetched the JWKS %d times for %d verifications: it does not cache it", client, n, c.verified)
		}
		c.t.Logf("%s: %d JWKS fetches for %d verifications", client, c.proxy.count(client), c.verified)
	}
}

// jwksProxy serves Vault's JWKS at /<client>/jwks, its Cache-Control
// included, and records when each client fetched it.
type jwksProxy struct {
	srv     *httptest.Server
	mu      sync.Mutex
	fetches map[string][]time.Time
}

func newJWKSProxy(t *testing.T, upstream string) *jwksProxy {
	p := &jwksProxy{fetches: map[string][]time.Time{}}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		p.mu.Lock()
		p.fetches[client] = append(p.fetches[client], time.Now())
		p.mu.Unlock()
		resp, err := http.Get(upstream)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for _, h := range []string{"Cache-Control", "Content-Type"} {
			w.Header().Set(h, resp.Header.Get(h))
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *jwksProxy) url(client string) string { return p.srv.URL + "/" + client + "/jwks" }

func (p *jwksProxy) count(client string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.fetches[client])
}

func (p *jwksProxy) fetchedSince(client string, since time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fetches[client]
	return len(f) > 0 && f[len(f)-1].After(since)
}

// joseVerifier is testdata/interop/jwks-cache.mjs: jose's jwtVerify over one
// createRemoteJWKSet, for the life of the test.
type joseVerifier struct {
	t   *testing.T
	in  io.Writer
	out *bufio.Reader
}

func startJoseVerifier(t *testing.T, jwksURL, iss string) *joseVerifier {
	t.Helper()
	cmd := nodeCmd(t, "jwks-cache.mjs", jwksURL, iss, "svc",
		fmt.Sprint(joseCacheMaxAge.Milliseconds()), fmt.Sprint(joseCooldown.Milliseconds()))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	j := &joseVerifier{t: t, in: in, out: bufio.NewReader(stdout)}
	var ready struct{ Ready bool }
	j.read(&ready)
	if !ready.Ready {
		t.Fatal("jwks-cache.mjs did not start")
	}
	return j
}

func (j *joseVerifier) verify(token string) verdict {
	j.t.Helper()
	if _, err := io.WriteString(j.in, token+"\n"); err != nil {
		j.t.Fatalf("jwks-cache.mjs: %v", err)
	}
	var v verdict
	j.read(&v)
	return v
}

func (j *joseVerifier) read(v any) {
	j.t.Helper()
	line, err := j.out.ReadBytes('\n')
	if err != nil {
		j.t.Fatalf("jwks-cache.mjs: %v", err)
	}
	if err := json.Unmarshal(line, v); err != nil {
		j.t.Fatalf("jwks-cache.mjs: %v in %q", err, line)
	}
}
