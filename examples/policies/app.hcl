# Persona: an app that mints its own API keys and agent JWTs from role
# "billing", and nothing else. Revoking the app's token revokes every key it
# minted (they are its leases); it cannot touch a key once minted, nor
# another role's.
#
#   vault policy write billing-app examples/policies/app.hcl

path "keybroker/keys/billing" {
  capabilities = ["update"]
}

# update mints; read mints too, with the role's defaults (Vault Agent's
# templates), so grant read only where Agent renders the token.
path "keybroker/token/billing" {
  capabilities = ["update"]
}
