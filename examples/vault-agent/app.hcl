# Vault Agent for an app that calls a keybroker-protected service with an API
# key. Set up its AppRole with approle.sh (periodic tokens), then run it
# beside the app:  VAULT_ADDR=https://vault:8200 vault agent -config=app.hcl
#
# The role should have renewable=false (vault write keybroker/roles/app ... renewable=false):
# Agent then mints the successor at lease_renewal_threshold of the key's TTL,
# while the old key stays valid until its own expiry, so the app has a
# real overlap to switch keys. (With renewable leases Agent renews up to
# max_ttl and replaces the key only in the last seconds.)
#
# That holds only while Agent keeps its token: a key's lease belongs to the
# token that minted it, and Vault revokes it with that token. If the token
# has a max TTL, Agent logs in again when it is reached, mints every
# template anew, and the old token's end revokes the keys it minted, the one
# rendered seconds before included. approle.sh gives Agent periodic tokens
# (no max TTL) so it renews its token and never logs in again.

auto_auth {
  method "approle" {
    config = {
      role_id_file_path                   = "role-id"
      secret_id_file_path                 = "secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}

template_config {
  # Mint the successor at half the key's life (default 0.9): with ttl=24h a
  # new key every ~12 h, the old one valid ~12 h more.
  lease_renewal_threshold = 0.5
}

template {
  # A write (it has a parameter): one mint per render, named after the host.
  contents    = "{{ with secret \"keybroker/keys/app\" \"name=app-via-vault-agent\" }}{{ .Data.key }}{{ end }}"
  destination = "api-key"
  perms       = "0600"
  # How the app picks up the new key: it reads the file per request (the
  # simplest), or Agent signals it. Replace with the app's own reload, e.g.
  # command = "pkill -HUP -x myapp"
}
