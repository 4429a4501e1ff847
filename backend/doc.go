// Package backend is keybroker's Vault secrets engine: it mints API keys and
// agent JWTs from roles (with refresh, token exchange and approval for risky
// scopes), verifies them, keeps their budgets and rate windows, and publishes
// the revocation and key-record feeds that verifiers follow. Vault gives it
// storage, authentication, policies, the audit log and leases.
//
// # Where things are
//
// Paths are adapters, one path_<noun>.go per resource (backend.go lists
// them): a handler reads and checks its request's fields into a typed
// request and hands it on; nothing after it sees *framework.FieldData. A
// mint reads forward, one file a step:
//   - mint_fields.go: the fields of keys/<role>, token/<role> and
//     token/exchange, read and checked once, into keyMintRequest,
//     tokenMintRequest or exchangeRequest;
//   - mint.go: the opening every mint shares (the role's name, its lock,
//     the role, a suspension); mint_approval.go: the approved request a
//     redemption opens (approval_store.go keeps approval requests);
//   - narrow.go: the grant narrowed to what the role allows (scopes,
//     CIDRs, budget, audience, lifetime);
//   - key_mint.go and key_entry.go (an API key and how it is stored), or
//     token_mint.go and token_issue.go (a JWT, with refresh); exchange.go,
//     exchange_parties.go and exchange_derived.go for token exchange.
//
// Metering is budget.go (a role's and a credential's limits) behind
// path_budget.go, path_rate.go and path_key_usage.go, whose requests and
// answers are package contract's types. Every storage key is declared in
// storage_layout.go; storage.go reads and writes JSON entries; guard.go
// wraps every handler (unknown fields refused, no ".." in a storage key,
// a panic answered as a 500, never a dead plugin).
//
// State lives in components the backend struct holds (backend.go, which
// also says in what order their locks are taken), each handed storage and
// a logger by its callers: the revocation feed (revocation_feed.go) and
// the key-record feed (key_record_feed.go), through which the revoker
// (revoker.go) revokes keys and tokens; the signer (signing.go: the
// parsed key ring, rotation, config writes); meters (meters.go: the locks
// of budgets, tenant ceilings, rate windows and key use, taken by the
// metering in path_budget.go, path_rate.go and path_key_usage.go);
// approvals (approval_store.go); role locks (path_roles.go).
package backend
