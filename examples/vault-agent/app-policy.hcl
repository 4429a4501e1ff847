# Vault policy for an app whose Vault Agent renders an API key of role "app".
# A template with parameters ("name=...") is a write: update.
path "keybroker/keys/app" {
  capabilities = ["update"]
}
