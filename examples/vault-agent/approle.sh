#!/bin/sh
# Creates the AppRole a Vault Agent of examples/vault-agent logs in with, and
# writes its role-id and secret-id files into the current directory (where
# app.hcl and agent.hcl read them). Run it as an operator (VAULT_ADDR,
# VAULT_TOKEN set), with NAME the example: app or agent.
#
#   sh examples/vault-agent/approle.sh app
#
# The AppRole's tokens are periodic, with no max TTL: Agent renews its token
# for as long as it runs and never has to log in again. A re-login is what
# cuts rendered credentials short: a new token restarts Agent's templates
# (every credential is minted again), and when the old token reaches its max
# TTL Vault revokes it with every lease it created, so the key or JWT
# rendered moments before dies long before its own expiry. A periodic token
# has no max TTL to reach; if Agent stops, its token dies one period after
# its last renewal. TOKEN_PERIOD (default 24h) should be at least the
# credential's ttl: then, after an Agent restart, the credentials the old
# token minted live at least a third of it longer (Agent renews at about
# two thirds of the period).
set -eu
name=${1:?usage: approle.sh app|agent}
dir=$(dirname "$0")
period=${TOKEN_PERIOD:-24h}
role=${APPROLE:-$name-vault-agent} # the AppRole and its policy

vault auth list -format=json | grep -q '"approle/"' || vault auth enable approle >/dev/null
vault policy write "$role" "$dir/$name-policy.hcl" >/dev/null
# token_max_ttl=0 and a token_period: periodic tokens, renewable for ever.
# (A mount's or the system's max TTL caps the period, not the token's life.)
vault write "auth/approle/role/$role" \
  token_policies="$role" token_period="$period" \
  token_ttl=0 token_max_ttl=0 token_type=service >/dev/null
umask 077
vault read -field=role_id "auth/approle/role/$role/role-id" > role-id
vault write -f -field=secret_id "auth/approle/role/$role/secret-id" > secret-id
echo "AppRole $role: role-id and secret-id written to $(pwd); token_period=$period"
