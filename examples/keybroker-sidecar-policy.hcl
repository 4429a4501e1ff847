# Vault policy for keybroker-sidecar: all it needs.
# keybroker/jwks and keybroker/.well-known/* need no token at all.

# Check API keys it has not cached.
path "keybroker/verify" {
  capabilities = ["update"]
}

# Follow revocations.
path "keybroker/revocations" {
  capabilities = ["read"]
}
