package backend

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func (ks *keyNames) publishedAt(st *signingState) []string {
	var out []string
	for _, k := range st.public {
		out = append(out, ks.of(k.ID))
	}
	return out
}

// A failover to a node whose clock lags the old active's by a few seconds,
// followed inside that window by a change of signing_algorithm (or rotate
// immediate=true), must not drop a key that already signed tokens as
// "pending: never signed".
func TestRotationKeepsAKeyThatSignedOnAFasterClock(t *testing.T) {
	for _, do := range []string{"alg:ES256", "immediate"} {
		t.Run(do, func(t *testing.T) {
			e := newJWTEnv(t, nil)
			e.ok(logical.UpdateOperation, "config", map[string]interface{}{"next_key_lead": "10m", "verification_ttl": "1h"})
			ks := newKeyNames(e)
			t0 := ks.ring().Keys[0].CreatedAt
			e.scheduleDo("rotate", t0.Add(time.Minute)) // k1 signs from t0+11m
			ks.name()
			// Node A (true clock), t0+11m+1s: k1 signs tokens.
			if st := e.stateAt(t0.Add(11*time.Minute + time.Second)); ks.of(st.kid) != "k1" {
				t.Fatalf("k1 should sign, %s does", ks.of(st.kid))
			}
			// Failover at true t0+11m+2s to node B whose clock lags 5s.
			e.scheduleDo(do, t0.Add(11*time.Minute-3*time.Second))
			ks.name()
			// True t0+11m+3s: tokens k1 signed (valid up to 1h) must still verify.
			pub := ks.publishedAt(e.stateAt(t0.Add(11*time.Minute + 3*time.Second)))
			if !slices.Contains(pub, "k1") {
				t.Fatalf("k1 signed tokens but left the JWKS after %s on a node lagging 5s: JWKS %v", do, pub)
			}
		})
	}
}

// ringPutFails refuses writes of the signing ring only.
type ringPutFails struct{ logical.Storage }

func (s ringPutFails) Put(ctx context.Context, e *logical.StorageEntry) error {
	if e.Key == signingKeysPath {
		return errors.New("injected: storage unavailable")
	}
	return s.Storage.Put(ctx, e)
}

// A config write that changes signing_algorithm stores the config, then
// fails to store the ring: writing it again must still publish a key of
// the new algorithm.
func TestAlgorithmChangeRetriedAfterAFailedRingWrite(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.jwks()
	good := e.storage
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: "config",
		Data: map[string]interface{}{"signing_algorithm": "ES256"}, Storage: ringPutFails{good}, MountPoint: "keybroker/"})
	if err == nil && (resp == nil || !resp.IsError()) {
		t.Fatal("the write should fail")
	}
	c, _ := getConfig(context.Background(), good)
	ring, _ := getJSON[keyRing](context.Background(), good, signingKeysPath)
	t.Logf("after the failed write: config alg %s, ring algs %v", c.SigningAlgorithm, algs(ring))
	// The operator retries.
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"signing_algorithm": "ES256"})
	ring, _ = getJSON[keyRing](context.Background(), good, signingKeysPath)
	if !slices.Contains(algs(ring), "ES256") {
		t.Fatalf("a failed then retried signing_algorithm=ES256 left no ES256 key: config says ES256, ring %v", algs(ring))
	}
}

func algs(r *keyRing) []string {
	var out []string
	for _, k := range r.Keys {
		out = append(out, k.Alg)
	}
	return out
}

// Raising next_key_lead while a key waits holds for that key too:
// verifiers the operator raised the lead for must not meet its kid before
// their cache has it.
func TestRaisedLeadHoldsForTheWaitingKey(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"next_key_lead": "2s"})
	e.jwks() // the first key
	rot := e.ok(logical.UpdateOperation, "rotate", nil).Data
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"next_key_lead": "30m"})
	again := e.ok(logical.UpdateOperation, "rotate", nil).Data
	signsAt, _ := time.Parse(time.RFC3339Nano, again["signs_at"].(string))
	if again["kid"] == rot["kid"] && time.Until(signsAt) < 29*time.Minute {
		t.Fatalf("after raising next_key_lead to 30m, key %v still signs at %v (in %s)", rot["kid"], signsAt, time.Until(signsAt).Round(time.Second))
	}
}

// Edges of the schedule that hold: corrupt and old rings, bounded growth.
func TestRotationScheduleHolds(t *testing.T) {
	ctx := context.Background()
	t.Run("ring bounded under alg flips and rotate spam", func(t *testing.T) {
		e := newJWTEnv(t, nil)
		ks := newKeyNames(e)
		t0 := ks.ring().Keys[0].CreatedAt
		for i := 0; i < 20; i++ {
			e.scheduleDo([]string{"alg:ES256", "alg:EdDSA", "rotate", "periodic"}[i%4], t0.Add(time.Duration(i)*time.Second))
		}
		if n := len(ks.ring().Keys); n != 2 {
			t.Fatalf("ring grew to %d", n)
		}
	})
	t.Run("immediate grows the ring per call (pre-existing)", func(t *testing.T) {
		e := newJWTEnv(t, nil)
		ks := newKeyNames(e)
		t0 := ks.ring().Keys[0].CreatedAt
		for i := 0; i < 30; i++ {
			e.scheduleDo("immediate", t0.Add(time.Duration(i)*time.Second))
		}
		t.Logf("after 30 immediate rotations: %d keys", len(ks.ring().Keys))
	})
	t.Run("verification_ttl shorter than lead", func(t *testing.T) {
		e := newJWTEnv(t, nil)
		ks := newKeyNames(e)
		t0 := ks.ring().Keys[0].CreatedAt
		_, err := e.b.signer.configure(ctx, e.storage, t0, e.b.Logger(), func(c *config) (*logical.Response, error) {
			c.VerificationTTL, c.NextKeyLead = time.Minute, 10*time.Minute
			return nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		e.scheduleDo("rotate", t0.Add(time.Minute))
		ks.name()
		for _, at := range []time.Duration{2 * time.Minute, 11*time.Minute - time.Second, 11 * time.Minute, 12*time.Minute - time.Second, 12 * time.Minute} {
			st := e.stateAt(t0.Add(at))
			t.Logf("%s: signs %s, JWKS %v", at, ks.of(st.kid), ks.publishedAt(st))
		}
	})
	t.Run("corrupt rings", func(t *testing.T) {
		now := time.Now()
		k0, _ := newSigningKey("EdDSA", time.Time{})
		k1, _ := newSigningKey("EdDSA", time.Time{})
		cfg := defaultConfig()
		for name, r := range map[string]*keyRing{
			"zero times":           {Keys: []signingKey{k0, k1}},
			"all retired long ago": {Keys: []signingKey{{KID: "a", Alg: "EdDSA", Private: k0.Private, RetiredAt: now.Add(-100 * time.Hour)}}},
			"empty private":        {Keys: []signingKey{{KID: "a", Alg: "EdDSA"}}},
			"future only":          {Keys: []signingKey{{KID: "a", Alg: "EdDSA", Private: k0.Private, CreatedAt: now.Add(time.Hour)}}},
			"unsorted":             {Keys: []signingKey{{KID: "a", Alg: "EdDSA", Private: k0.Private, SignsAt: now.Add(time.Hour)}, {KID: "b", Alg: "EdDSA", Private: k1.Private, SignsAt: now.Add(-time.Hour)}}},
		} {
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Errorf("%s: panic %v", name, p)
					}
				}()
				st, err := loadSigningState(r, cfg, now)
				_ = r.rotationDue(cfg, now)
				_ = r.expiry(now, cfg.VerificationTTL)
				if st != nil {
					t.Logf("%s: signs %s, %d published, err %v", name, st.kid, len(st.public), err)
				} else {
					t.Logf("%s: err %v", name, err)
				}
			}()
		}
		// Empty ring in storage, through the handlers.
		e := newJWTEnv(t, nil)
		for _, raw := range []string{`{"keys":[]}`, `{"keys":null}`, `{}`} {
			_ = e.storage.Put(ctx, &logical.StorageEntry{Key: signingKeysPath, Value: []byte(raw)})
			e.b.signer.reset()
			if n := e.jwks().Len(); n != 1 {
				t.Errorf("%s: %d keys", raw, n)
			}
		}
	})
	t.Run("max-age extremes", func(t *testing.T) {
		for _, lead := range []time.Duration{-time.Hour, 0, time.Nanosecond, time.Second, 3 * time.Second, 1 << 62} {
			t.Logf("lead %s: max-age %d", lead, (&config{NextKeyLead: lead}).jwksMaxAge())
		}
	})
	t.Run("jwks has no private members", func(t *testing.T) {
		for _, alg := range []string{"EdDSA", "ES256", "RS256"} {
			e := newJWTEnv(t, nil)
			e.ok(logical.UpdateOperation, "config", map[string]interface{}{"signing_algorithm": alg})
			e.ok(logical.UpdateOperation, "rotate", nil)
			var set struct{ Keys []map[string]interface{} }
			_ = json.Unmarshal(e.ok(logical.ReadOperation, "jwks", nil).Data[logical.HTTPRawBody].([]byte), &set)
			for _, k := range set.Keys {
				for _, m := range []string{"d", "p", "q", "dp", "dq", "qi"} {
					if _, ok := k[m]; ok {
						t.Errorf("%s: JWKS key has %q", alg, m)
					}
				}
			}
			c := e.ok(logical.ReadOperation, "config", nil).Data
			for k, v := range c {
				if s, ok := v.(string); ok && len(s) > 200 {
					t.Errorf("config %s long: %s", k, s)
				}
			}
		}
	})
}

// Concurrent mints, rotations (lead, immediate) and algorithm writes: every
// token minted verifies against the JWKS read afterwards; no deadlock.
func TestConcurrentRotateMintAndConfig(t *testing.T) {
	e := newJWTEnv(t, nil)
	e.ok(logical.UpdateOperation, "config", map[string]interface{}{"next_key_lead": "2s"})
	e.jwks()
	done := make(chan struct{})
	toks := make(chan string, 1000)
	errs := make(chan string, 100)
	go func() {
		defer close(done)
		for i := 0; i < 40; i++ {
			switch i % 4 {
			case 0:
				e.do(logical.UpdateOperation, "rotate", nil)
			case 1:
				e.do(logical.UpdateOperation, "rotate", map[string]interface{}{"immediate": true})
			case 2:
				e.do(logical.UpdateOperation, "config", map[string]interface{}{"signing_algorithm": []string{"ES256", "EdDSA"}[i%8/4]})
			case 3:
				e.do(logical.ReadOperation, "config", nil)
			}
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				r := e.do(logical.UpdateOperation, "token/agent", nil)
				if r == nil || r.IsError() {
					errs <- "mint failed"
					return
				}
				select {
				case toks <- r.Data["token"].(string):
				default:
				}
			}
		}()
	}
	<-done
	wg.Wait()
	close(toks)
	n := 0
	for tok := range toks {
		n++
		if _, err := e.offline(tok, "billing"); err != nil {
			t.Errorf("token %d: %v", n, err)
			break
		}
	}
	select {
	case s := <-errs:
		t.Fatal(s)
	default:
	}
	t.Logf("%d tokens verified; ring %d keys", n, len(e.mustRing().Keys))
}

func (e *testEnv) mustRing() *keyRing {
	r, _ := getJSON[keyRing](context.Background(), e.storage, signingKeysPath)
	return r
}

func TestNextKeyLeadOverflowRefused(t *testing.T) {
	e := newJWTEnv(t, nil)
	r := e.do(logical.UpdateOperation, "config", map[string]interface{}{"next_key_lead": 18446744080})
	t.Logf("write: %v", r)
	t.Logf("read next_key_lead: %v", e.ok(logical.ReadOperation, "config", nil).Data["next_key_lead"])
	r = e.do(logical.UpdateOperation, "config", map[string]interface{}{"verification_ttl": 18446744080 + 86400})
	t.Logf("vttl write: %v; read %v", r, e.ok(logical.ReadOperation, "config", nil).Data["verification_ttl"])
}
