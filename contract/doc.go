// Package contract is the whole wire format between the keybroker plugin,
// its verifiers (keybroker-sidecar, or a service embedding it) and
// keybroker-audit: what each side writes and reads, spelled once here and
// imported by both, so a path, a field, a reason or a header name cannot
// drift apart. It holds:
//   - keybroker/verify's answer and reasons, and the identity headers a
//     verifier passes on (contract.go);
//   - the paths and fields a verifier follows: verify, the revocation and
//     key-record feeds, the signing keys (follow.go), with the feed pages
//     (contract.go);
//   - what a verifier writes while it serves: budget reservations and
//     reports, cluster rate takes, key usage (metering.go);
//   - every reason a verifier answers with (reasons.go);
//   - the decision-log line keybroker-audit reads (decisionrecord.go);
//   - the limits both sides enforce, such as how long a revocation is kept
//     past the credential's expiry, and the cluster rate window
//     (ratewindow.go).
//
// It depends on nothing but jwtverify's claim types.
package contract
