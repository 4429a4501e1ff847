# keybroker-sidecar configuration. Vault's environment variables (VAULT_ADDR,
# VAULT_CACERT, ...) fill in what the vault block leaves out.

listen      = "127.0.0.1:8080"        # reverse proxy
upstream    = "http://127.0.0.1:9000" # the service
auth_listen = "127.0.0.1:8081"        # /verify for nginx, Traefik, Envoy; /healthz; /metrics

# aud values this service accepts in agent JWTs.
audiences = ["demo-api"]

# Peers allowed to set X-Forwarded-For (your gateway). Others' copies are ignored.
trusted_proxies = ["127.0.0.1"]

# Optional tuning (defaults shown).
# revocation_poll_interval  = "1s"
# jwks_refresh_interval     = "5m"
# jwks_min_refetch_interval = "10s"  # unknown kid: at most one JWKS fetch per interval
# key_cache_ttl             = "10s"  # API key answers from Vault
# negative_cache_ttl        = "30s"
# max_stale                 = "30s"  # Vault down: cached API keys serve this long, then 503
# cache_size                = 100000 # per cache
# leeway                    = "30s"  # clock skew for exp/nbf/iat, at most 60s
# allow_unmatched           = false  # requests matching no route are denied
# log_format                = "json"

# Budgets of metered credentials (see the README). Defaults shown.
# budget_reserve_requests   = 10     # a reservation: 10 x max_cost_per_request units
# budget_report_interval    = "1s"   # report use (and renew reservations) this often
# budget_reservation_ttl    = "30s"  # a reservation not renewed for this long expires
# budget_idle_release       = "5s"   # give back a chunk unused for this long
# name                      = "web-1" # this sidecar in Vault's audit log; default host and pid

vault {
  address        = "http://127.0.0.1:8200"
  mount          = "keybroker"
  role_id_file   = "/etc/keybroker/role-id"
  secret_id_file = "/etc/keybroker/secret-id"
}

# Method and path prefix -> scopes the credential must carry. The longest
# matching prefix wins.
route "/healthz" {
  public = true
}
route "/v1/read" {
  methods = ["GET", "HEAD"]
  scopes  = ["read"]
}
route "/v1/write" {
  methods = ["POST", "PUT", "DELETE"]
  scopes  = ["write"]
  cost    = 5 # units charged to a metered credential per request (default 1)
}
# An OpenAI-compatible API: charge usage.total_tokens from the response (the
# last usage event of a stream), or cost when it is missing.
route "/v1/chat/completions" {
  methods      = ["POST"]
  scopes       = ["llm:chat"]
  openai_usage = true
  cost         = 4000
  # or: usage_header = "X-Usage-Tokens"
}
