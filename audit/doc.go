// Package audit reads what keybroker leaves behind for auditors, Vault's
// file audit device log and the sidecar's decision log, and tells the life
// of one credential (BuildHistory) or what happened in a window
// (BuildReport). It is the library behind keybroker-audit (Main).
//
// It owns reading those logs and nothing else: it changes nothing in Vault
// (a Hasher only asks sys/audit-hash for HMACs), and the decision-log line
// it reads is the sidecar's own, contract.DecisionRecord, so the two sides
// cannot drift apart.
//
// Where things are:
//
//   - input.go, limits.go: reading the inputs (plain or gzip, bounded),
//     pairing Vault's request and response entries into Records.
//   - decisions.go: the decision-log lines, and the events they make.
//   - engine.go: the engine, which turns records and decisions into
//     credentials (cred.go) and their events, in two passes: every mint
//     first (mints.go), then each request in time order, on Vault's own
//     paths (vaultpaths.go) or keybroker's (kbpaths.go).
//   - hmac.go, hidden.go: the values the audit log HMAC'd, matching them by
//     audit-hash, and saying what could not be shown and how to show it.
//   - history.go, report.go: the two answers; output.go writes them as a
//     table, JSON or CSV; cli.go is keybroker-audit's command line.
package audit
