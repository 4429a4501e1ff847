package sidecar

import (
	"encoding/json"
	"net/http"
)

// Readiness is what /healthz says: each component the sidecar follows,
// its state, whether this deployment needs it, and the ones it still
// waits for. A component the configuration does not use (the JWKS with
// credential_kinds = ["api_key"]) is listed as not_used and never waited
// for, so an API-key-only sidecar is ready once its feeds are read,
// whatever an issuer does.

// stateNotUsed: the configuration leaves the component's credentials out.
const stateNotUsed = "not_used"

// readiness is one look at the components, for /healthz and Ready.
type readiness struct {
	components map[string]map[string]any
	waitingFor []string // the required components not ready yet
	forbidden  bool     // a feed Vault refuses: a policy to fix, not a wait
}

// readiness looks at every component: the JWKS (when JWTs are accepted),
// the revocation feed, and the key-record feed (with key_replica).
func (sc *Sidecar) readiness() readiness {
	r := readiness{components: map[string]map[string]any{}, waitingFor: []string{}}
	r.components["jwks"] = sc.jwksComponent(&r)
	if !sc.s.acceptKeys {
		r.components["key_records"] = map[string]any{"state": stateNotUsed, "required": false, "read": false}
	}
	for _, f := range sc.followedFeeds() {
		state, lastErr := f.status()
		c := map[string]any{"state": state, "read": f.known(), "required": true}
		if state == feedForbidden {
			r.forbidden = true
			c["needs"] = f.capability + " on " + f.path
		}
		if lastErr != "" {
			c["error"] = lastErr
		}
		if !f.known() {
			r.waitingFor = append(r.waitingFor, f.name)
		}
		r.components[f.name] = c
	}
	return r
}

// jwksComponent is the JWKS's part: the issuer and key set agent JWTs are
// verified against, waited for only when credential_kinds takes JWTs.
func (sc *Sidecar) jwksComponent(r *readiness) map[string]any {
	if !sc.s.acceptJWTs {
		return map[string]any{"state": stateNotUsed, "required": false, "read": false}
	}
	ready := sc.jwks.ready()
	c := map[string]any{"state": feedStarting, "read": ready, "required": true}
	if ready {
		c["state"] = feedOK
	} else {
		r.waitingFor = append(r.waitingFor, "jwks")
	}
	if iss := sc.jwksFeed.issuer.Load(); iss != nil {
		c["issuer"] = *iss
	}
	if e := sc.jwksFeed.lastErr.Load(); e != nil && !ready {
		c["error"] = *e
	}
	return c
}

// serveHealthz answers 200 once every required component is ready, 503
// before (status starting, or forbidden when Vault refuses a feed to this
// sidecar's policy: feeds.<name>.needs says what it lacks); the body says
// what it waits for either way.
func (sc *Sidecar) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	r := sc.readiness()
	status, code := "ok", http.StatusOK
	switch {
	case r.forbidden:
		status, code = "forbidden", http.StatusServiceUnavailable
	case len(r.waitingFor) > 0:
		status, code = "starting", http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"status":                   status,
		"waiting_for":              r.waitingFor,
		"feeds":                    r.components,
		"jwks_age_seconds":         sinceNanos(sc.jwks.fetchedAt.Load()),
		"revocation_feed_lag_secs": sinceNanos(sc.revocations.readAt.Load()),
	})
}
