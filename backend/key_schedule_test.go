package backend

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// scheduleStep acts at t0+at, then checks the ring as every node reads it
// from storage at that moment. Keys are named k0 (the first), k1, ... in
// the order they are created.
type scheduleStep struct {
	at        time.Duration
	do        string   // rotate, immediate, drop, periodic, alg:<ES256|...>, or "" to only check
	signs     string   // the key that signs
	alg       string   // its algorithm, when checked
	published []string // the JWKS, oldest first
}

// The schedule of signing keys: a new key is published next_key_lead
// before it signs, whatever made it (rotate, a change of algorithm, the
// periodic rotation), unless an operator asks for immediate; retired keys
// stay published for verification_ttl after they stop signing.
func TestSigningKeySchedule(t *testing.T) {
	const m = time.Minute
	for _, tc := range []struct {
		name   string
		config map[string]interface{}
		steps  []scheduleStep
	}{
		{"rotate publishes the next key a lead before it signs", nil, []scheduleStep{
			{at: 0, signs: "k0", published: []string{"k0"}},
			{at: 1 * m, do: "rotate", signs: "k0", published: []string{"k0", "k1"}},
			{at: 11*m - time.Second, signs: "k0", published: []string{"k0", "k1"}},
			{at: 11 * m, signs: "k1", published: []string{"k0", "k1"}},
			// k0 stopped signing at 11m: it verifies until verification_ttl (1h) later.
			{at: 71*m - time.Second, signs: "k1", published: []string{"k0", "k1"}},
			{at: 71 * m, signs: "k1", published: []string{"k1"}},
		}},
		{"rotate while a key is pending answers with it", nil, []scheduleStep{
			{at: 1 * m, do: "rotate", signs: "k0", published: []string{"k0", "k1"}},
			{at: 5 * m, do: "rotate", signs: "k0", published: []string{"k0", "k1"}},
			{at: 11 * m, signs: "k1", published: []string{"k0", "k1"}},
			{at: 12 * m, do: "rotate", signs: "k1", published: []string{"k0", "k1", "k2"}},
			{at: 22 * m, signs: "k2", published: []string{"k0", "k1", "k2"}},
		}},
		{"a change of algorithm publishes the new key first", nil, []scheduleStep{
			{at: 1 * m, do: "alg:ES256", signs: "k0", alg: "EdDSA", published: []string{"k0", "k1"}},
			{at: 11*m - time.Second, signs: "k0", alg: "EdDSA", published: []string{"k0", "k1"}},
			{at: 11 * m, signs: "k1", alg: "ES256", published: []string{"k0", "k1"}},
			{at: 12 * m, do: "rotate", signs: "k1", alg: "ES256", published: []string{"k0", "k1", "k2"}},
		}},
		{"a change of algorithm replaces a pending key of the old one", nil, []scheduleStep{
			{at: 1 * m, do: "rotate", signs: "k0", published: []string{"k0", "k1"}},
			{at: 2 * m, do: "alg:RS256", signs: "k0", alg: "EdDSA", published: []string{"k0", "k2"}},
			{at: 11 * m, signs: "k0", alg: "EdDSA", published: []string{"k0", "k2"}},
			{at: 12 * m, signs: "k2", alg: "RS256", published: []string{"k0", "k2"}},
			{at: 72 * m, signs: "k2", alg: "RS256", published: []string{"k2"}},
		}},
		{"immediate signs at once", nil, []scheduleStep{
			{at: 1 * m, do: "immediate", signs: "k1", published: []string{"k0", "k1"}},
			{at: 61*m - time.Second, signs: "k1", published: []string{"k0", "k1"}},
			{at: 61 * m, signs: "k1", published: []string{"k1"}},
		}},
		{"immediate replaces a pending key", nil, []scheduleStep{
			{at: 1 * m, do: "rotate", signs: "k0", published: []string{"k0", "k1"}},
			{at: 2 * m, do: "immediate", signs: "k2", published: []string{"k0", "k2"}},
			{at: 11 * m, signs: "k2", published: []string{"k0", "k2"}},
		}},
		{"drop_old_keys leaves only the new key", nil, []scheduleStep{
			{at: 1 * m, do: "immediate", signs: "k1", published: []string{"k0", "k1"}},
			{at: 2 * m, do: "rotate", signs: "k1", published: []string{"k0", "k1", "k2"}},
			{at: 3 * m, do: "drop", signs: "k3", published: []string{"k3"}},
		}},
		{"periodic publishes a lead before rotation_period ends", map[string]interface{}{"rotation_period": "1h"}, []scheduleStep{
			{at: 49 * m, do: "periodic", signs: "k0", published: []string{"k0"}},
			{at: 50 * m, do: "periodic", signs: "k0", published: []string{"k0", "k1"}},
			{at: 55 * m, do: "periodic", signs: "k0", published: []string{"k0", "k1"}},
			{at: 60 * m, signs: "k1", published: []string{"k0", "k1"}},
			{at: 109 * m, do: "periodic", signs: "k1", published: []string{"k0", "k1"}},
			{at: 110 * m, do: "periodic", signs: "k1", published: []string{"k0", "k1", "k2"}},
			{at: 120 * m, do: "periodic", signs: "k2", published: []string{"k1", "k2"}},
		}},
		{"periodic after downtime still publishes first", map[string]interface{}{"rotation_period": "1h"}, []scheduleStep{
			{at: 300 * m, do: "periodic", signs: "k0", published: []string{"k0", "k1"}},
			{at: 310*m - time.Second, signs: "k0", published: []string{"k0", "k1"}},
			{at: 310 * m, signs: "k1", published: []string{"k0", "k1"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newJWTEnv(t, nil)
			cfg := map[string]interface{}{"next_key_lead": "10m", "verification_ttl": "1h"}
			for k, v := range tc.config {
				cfg[k] = v
			}
			e.ok(logical.UpdateOperation, "config", cfg)
			ks := newKeyNames(e)
			t0 := ks.ring().Keys[0].CreatedAt
			for _, s := range tc.steps {
				now := t0.Add(s.at)
				e.scheduleDo(s.do, now)
				ks.name()
				st := e.stateAt(now)
				if got := ks.of(st.kid); got != s.signs || (s.alg != "" && st.alg != s.alg) {
					t.Fatalf("at %s after %q: %s (%s) signs, want %s %s", s.at, s.do, got, st.alg, s.signs, s.alg)
				}
				var published []string
				for _, k := range st.public {
					published = append(published, ks.of(k.ID))
				}
				if !slices.Equal(published, s.published) {
					t.Fatalf("at %s after %q: JWKS %v, want %v", s.at, s.do, published, s.published)
				}
			}
		})
	}
}

// scheduleDo acts as one scheduleStep says, at now.
func (e *testEnv) scheduleDo(do string, now time.Time) {
	e.t.Helper()
	ctx, sg, log := context.Background(), &e.b.signer, e.b.Logger()
	var err error
	switch {
	case do == "":
	case do == "rotate":
		_, err = sg.rotate(ctx, e.storage, now, log, takeover{keepPending: true})
	case do == "immediate":
		_, err = sg.rotate(ctx, e.storage, now, log, takeover{immediate: true, keepPending: true})
	case do == "drop":
		_, err = sg.rotate(ctx, e.storage, now, log, takeover{immediate: true, dropOld: true})
	case do == "periodic":
		err = sg.rotateIfDue(ctx, e.storage, now, log)
	case strings.HasPrefix(do, "alg:"):
		_, err = sg.configure(ctx, e.storage, now, log, func(c *config) (*logical.Response, error) {
			c.SigningAlgorithm = strings.TrimPrefix(do, "alg:")
			return nil, nil
		})
	default:
		e.t.Fatalf("unknown step %q", do)
	}
	if err != nil {
		e.t.Fatalf("%s at %s: %v", do, now, err)
	}
}

// stateAt is the signing state any node builds from storage at now.
func (e *testEnv) stateAt(now time.Time) *signingState {
	e.t.Helper()
	ctx := context.Background()
	ring, err := getJSON[keyRing](ctx, e.storage, signingKeysPath)
	if err != nil || ring == nil {
		e.t.Fatalf("reading the ring: %v", err)
	}
	cfg, err := getConfig(ctx, e.storage)
	if err != nil {
		e.t.Fatal(err)
	}
	st, err := loadSigningState(ring, cfg, now)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// keyNames names the ring's keys k0, k1, ... as they appear.
type keyNames struct {
	e     *testEnv
	names map[string]string
}

func newKeyNames(e *testEnv) *keyNames {
	e.jwks() // the first key
	ks := &keyNames{e: e, names: map[string]string{}}
	ks.name()
	return ks
}

func (ks *keyNames) ring() *keyRing {
	r, err := getJSON[keyRing](context.Background(), ks.e.storage, signingKeysPath)
	if err != nil || r == nil {
		ks.e.t.Fatalf("reading the ring: %v", err)
	}
	return r
}

func (ks *keyNames) name() {
	for _, k := range ks.ring().Keys {
		if _, ok := ks.names[k.KID]; !ok {
			ks.names[k.KID] = fmt.Sprintf("k%d", len(ks.names))
		}
	}
}

func (ks *keyNames) of(kid string) string {
	if n, ok := ks.names[kid]; ok {
		return n
	}
	return "unknown " + kid
}

// The next key takes over at its time on every node with nothing but the
// ring in storage: a node started after the rotation (a restart, a plugin
// reload, a standby becoming active) signs with the same key at the same
// moment, without a write or a timer.
func TestNextKeySignsAfterReload(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"next_key_lead": "2s"})
	first := kidOf(t, e.ok(logical.UpdateOperation, "token/agent", nil))
	rot := e.ok(logical.UpdateOperation, "rotate", nil).Data
	signsAt, err := time.Parse(time.RFC3339Nano, rot["signs_at"].(string))
	if err != nil || signsAt.Before(time.Now()) || signsAt.After(time.Now().Add(3*time.Second)) {
		t.Fatalf("rotate answered signs_at %v (%v), want about 2s from now", rot["signs_at"], err)
	}
	if got := kidOf(t, e.ok(logical.UpdateOperation, "token/agent", nil)); got != first {
		t.Fatalf("a token minted right after rotate has kid %s, want the old key's %s", got, first)
	}
	if _, ok := e.jwks().Lookup(rot["kid"].(string)); !ok {
		t.Fatal("the next key is not in the JWKS before it signs")
	}
	if c := e.ok(logical.ReadOperation, "config", nil).Data; c["signing_kid"] != first || c["next_kid"] != rot["kid"] || c["next_signs_at"] != rot["signs_at"] {
		t.Fatalf("config read before signs_at: %v, want signing %s, next %s from %s", c, first, rot["kid"], rot["signs_at"])
	}

	conf := logical.TestBackendConfig()
	conf.StorageView = e.storage
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	reloaded := &testEnv{t: t, b: lb.(*backend), storage: e.storage, entityID: "test-entity"}
	if got := kidOf(t, reloaded.ok(logical.UpdateOperation, "token/agent", nil)); got != first {
		t.Fatalf("a reloaded backend signs with %s before signs_at, want %s", got, first)
	}
	time.Sleep(time.Until(signsAt) + 100*time.Millisecond)
	for name, env := range map[string]*testEnv{"the node that rotated": e, "a reloaded node": reloaded} {
		if got := kidOf(t, env.ok(logical.UpdateOperation, "token/agent", nil)); got != rot["kid"] {
			t.Fatalf("%s signs with %s after signs_at, want the next key %s", name, got, rot["kid"])
		}
		if c := env.ok(logical.ReadOperation, "config", nil).Data; c["signing_kid"] != rot["kid"] || c["next_kid"] != nil {
			t.Fatalf("%s's config read after signs_at: %v", name, c)
		}
	}
}

func kidOf(t *testing.T, resp *logical.Response) string {
	t.Helper()
	header, err := decodeJSONSegment(strings.Split(resp.Data["token"].(string), ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	return header["kid"].(string)
}

// A ring stored before the lead existed (no signs_at; the last key signs)
// reads as it did.
func TestRingStoredBeforeTheLead(t *testing.T) {
	now := time.Now().UTC()
	k0, _ := newSigningKey("EdDSA", now.Add(-2*time.Hour))
	k1, _ := newSigningKey("ES256", now.Add(-time.Hour))
	k0.RetiredAt = k1.CreatedAt
	ring := &keyRing{Keys: []signingKey{k0, k1}}
	cfg := defaultConfig()
	cfg.NextKeyLead = 0 // a config stored before it existed
	st, err := loadSigningState(ring, cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	if st.kid != k1.KID || st.next != nil || len(st.public) != 2 || st.maxAge != jwksMaxAge {
		t.Fatalf("old ring: signs %s (want %s), next %v, %d published, max-age %d", st.kid, k1.KID, st.next, len(st.public), st.maxAge)
	}
	if !ring.rotationDue(&config{RotationPeriod: time.Hour}, now) {
		t.Fatal("an old ring's key that signed for rotation_period is not due")
	}
}

// Caches may keep the JWKS for half the lead, at most a minute, so that
// one that follows max-age has the next key before it signs.
func TestJWKSCacheControlUnderTheLead(t *testing.T) {
	for lead, want := range map[string]string{"2s": "max-age=1", "9s": "max-age=4", "30s": "max-age=15", "1h": "max-age=60"} {
		e := newJWTEnv(t, nil)
		e.ok(logical.UpdateOperation, "config", map[string]interface{}{"next_key_lead": lead})
		for _, path := range []string{"jwks", ".well-known/openid-configuration"} {
			if got := e.ok(logical.ReadOperation, path, nil).Data[logical.HTTPCacheControlHeader]; got != want {
				t.Errorf("%s with next_key_lead %s: Cache-Control %v, want %s", path, lead, got, want)
			}
		}
	}
}

func TestRotateDropOldKeysNeedsImmediate(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.userError(logical.UpdateOperation, "rotate", map[string]interface{}{"drop_old_keys": true}, "drop_old_keys needs immediate=true")
	if n := e.jwks().Len(); n != 1 {
		t.Fatalf("a refused rotate changed the JWKS: %d keys", n)
	}
}
