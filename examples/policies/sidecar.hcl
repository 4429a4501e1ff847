# Persona: keybroker-sidecar. All it needs, and nothing that mints, changes
# or reads a credential: it verifies, follows the feeds and accounts use.
# keybroker/jwks and keybroker/.well-known/* need no token at all.

# Check API keys it holds no record of yet.
path "keybroker/verify" {
  capabilities = ["update"]
}

# Follow revocations.
path "keybroker/revocations" {
  capabilities = ["read"]
}

# Hold every API key's record (key-records/snapshot) and follow changes (key-records).
path "keybroker/key-records*" {
  capabilities = ["read"]
}

# Account metered credentials: reserve chunks of budget, report use.
path "keybroker/budget/reserve" {
  capabilities = ["update"]
}
path "keybroker/budget/report" {
  capabilities = ["update"]
}

# Keep rate limits across sidecars (rate_limit_scope = "cluster" only).
path "keybroker/rate/reserve" {
  capabilities = ["update"]
}

# Report which API keys were used, once per usage_report_interval (last_used_at).
path "keybroker/key-usage" {
  capabilities = ["update"]
}
