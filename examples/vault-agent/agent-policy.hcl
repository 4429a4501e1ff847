# Vault policy for an AI agent whose Vault Agent renders a JWT of role "agent".
# The template {{ with secret "keybroker/token/agent" }} is a read, and a read
# of token/<role> mints a token with the role's defaults: read grants minting,
# as it does on database/creds/<role>. Add update for writes with parameters.
path "keybroker/token/agent" {
  capabilities = ["read"]
}
