# Vault Agent for an AI agent that calls keybroker-protected services with a
# short-lived JWT. Set up its AppRole with approle.sh (periodic tokens: a
# re-login at a token's max TTL revokes the JWTs the old token minted, see
# app.hcl), then run it beside the agent:  VAULT_ADDR=https://vault:8200 vault agent -config=agent.hcl
#
# A read of keybroker/token/<role> mints a token with the role's defaults, so
# the template needs no parameter when the role has one audience (a token is
# for one resource server; for a role with several, name it in the query and
# it stays a read: "keybroker/token/agent?audience=billing"). The token's lease is not renewable: Agent
# mints the next one at lease_renewal_threshold of its TTL (token_ttl), long
# before it expires, and the agent reads the file before each call.

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
  lease_renewal_threshold = 0.5
}

template {
  contents    = "{{ with secret \"keybroker/token/agent\" }}{{ .Data.token }}{{ end }}"
  destination = "agent-token"
  perms       = "0600"
}
