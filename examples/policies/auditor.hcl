# Persona: an auditor. Reads what every role holds, changes nothing and
# mints nothing. It is written path by path on purpose: read on
# keybroker/* would also grant reading keybroker/token/<role>, which mints.
#
#   vault policy write keybroker-auditor examples/policies/auditor.hcl

path "keybroker/roles" {
  capabilities = ["list"]
}
path "keybroker/roles/+" {
  capabilities = ["read"]
}

# Every role's API keys, read-only (no change to a key is made under
# keybroker/keys/id/).
path "keybroker/keys/id" {
  capabilities = ["list"]
}
path "keybroker/keys/id/+" {
  capabilities = ["read"]
}

path "keybroker/approvals" {
  capabilities = ["list"]
}
path "keybroker/approvals/+" {
  capabilities = ["list"]
}
path "keybroker/approvals/+/+" {
  capabilities = ["read"]
}

path "keybroker/budget/+" {
  capabilities = ["read"]
}
path "keybroker/tenants" {
  capabilities = ["list"]
}
path "keybroker/tenants/+" {
  capabilities = ["read"]
}
path "keybroker/revocations" {
  capabilities = ["read"]
}

# keybroker-audit -audit-device file: match HMAC'd values in the audit log.
path "sys/audit-hash/file" {
  capabilities = ["update"]
}
