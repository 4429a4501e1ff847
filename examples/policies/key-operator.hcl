# Persona: an operator of role "billing"'s API keys: list and read them,
# rotate (which mints the successor), suspend, resume and revoke them. Every
# change to a key is under keybroker/keys/<role>/id/<key_id>, so this reaches
# billing's keys and no other role's; a key of another role, named under
# billing, is answered as one that does not exist.
#
#   vault policy write billing-keys examples/policies/key-operator.hcl

path "keybroker/keys/billing/id" {
  capabilities = ["list"]
}

# read and delete (revoke) keybroker/keys/billing/id/<key_id>; update on
# .../rotate, .../suspend and .../resume.
path "keybroker/keys/billing/id/*" {
  capabilities = ["read", "update", "delete"]
}

# Read and change the budgets billing's credentials spend from.
path "keybroker/budget/billing/*" {
  capabilities = ["read", "update"]
}

# The role itself: see it, and suspend or resume all its keys.
path "keybroker/roles/billing" {
  capabilities = ["read"]
}
path "keybroker/roles/billing/suspend" {
  capabilities = ["update"]
}
path "keybroker/roles/billing/resume" {
  capabilities = ["update"]
}

# Revoke the leases of billing's keys at once (successors of rotations
# included: their leases are under keybroker/keys/billing/ too).
path "sys/leases/revoke-prefix/keybroker/keys/billing" {
  capabilities = ["update"]
}
