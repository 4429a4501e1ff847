// Package sidecar is keybroker-sidecar's engine: it checks keybroker API
// keys and agent JWTs in front of a service, as a reverse proxy, as the auth
// endpoint of nginx, Traefik, Caddy and Envoy, or as net/http middleware
// inside a Go service, without calling Vault on the hot path.
//
// # For an embedder
//
// New checks a Config (ParseConfigFile reads one) and builds a Sidecar; it
// starts nothing. Start logs in to Vault and follows the signing keys and
// the feeds; Stop reports budget use and gives back what is left.
// Middleware decides every request in process and hands the handler the
// caller (IdentityFrom), never the credential; AuthHandler serves /healthz
// and /metrics. Serve(ctx, Listeners) is the one way to run the sidecar's
// own listeners (Listen opens the configured ones). Check and Verdict are
// the seam for another front end: package extauthz (Envoy's gRPC ext_authz,
// imported only by the binary, so an embedder links no gRPC) is one.
//
// # Where things are
//
// A request meets, in order:
//   - a front end: http.go (the proxy and /verify), gateway.go (what a
//     gateway reports; the client's address behind trusted proxies is
//     internal/clientip), middleware.go, check.go (the seam other front
//     ends use);
//   - the decision core, decide.go, over the vocabulary in decision.go: the
//     canonical target (internal/reqtarget) and route (routes.go), a
//     credential where none belongs (internal/credscan), who presents it
//     (authn.go: bearer or DPoP, authn_dpop.go), the credential's kind
//     (authn_key.go with the flood guard, floodguard.go; authn_jwt.go),
//     revocation and expiry, CIDRs,
//     scopes and delegation, then the rate limit (ratelimit.go,
//     clusterrate.go) and the budget (budget.go);
//   - the record of the decision: record.go (metrics, decision log in
//     decisionlog.go and decisionlog_entry.go, key usage in key_usage.go).
//
// The core holds no pointer to the Sidecar: assemble.go hands each
// component its options, its source and its counters, and the core the
// narrow interfaces it asks (decide.go lists them). Around it:
//   - the feeds, each a component that follows Vault: feed_jwks.go (keys
//     and issuer), feed_revocations.go (the revoked set, internal/revoked),
//     feed_keyrecords.go (the key replica, replica.go), their health in
//     feed_health.go;
//   - metering: budget.go (reservations), usage.go (what an answer cost,
//     its Content-Encoding decoded by internal/contentcoding),
//     clusterrate.go, key_usage.go;
//   - the Vault client, vault.go, which speaks only package contract's
//     types and names;
//   - configuration: config.go (the file's shape and the validated
//     settings), one validator per block in config_*.go, config_check.go
//     (-check-config).
//
// sidecar/internal holds the pure pieces that need no sidecar type, each
// with a package doc saying what it owns: reqtarget, credscan, clientip,
// clientkey, contentcoding, dpopreplay, revoked.
package sidecar
