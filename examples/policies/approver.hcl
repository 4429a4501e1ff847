# Persona: an approver of role "agent"'s risky scopes. Approval requests
# live under their role, so this decides on agent's and no other role's.
# Approvers must be told apart: give each person their own Vault entity.
#
#   vault policy write agent-approver examples/policies/approver.hcl

path "keybroker/approvals/agent" {
  capabilities = ["list"]
}

# read a request, and update it with action=approve or action=deny.
path "keybroker/approvals/agent/*" {
  capabilities = ["read", "update"]
}
