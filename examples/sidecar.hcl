# keybroker-sidecar configuration. Vault's environment variables (VAULT_ADDR,
# VAULT_CACERT, ...) fill in what the vault block leaves out.
#
# Every setting appears in this file, set or commented out (a test checks it);
# docs/reference/sidecar-config.md gives each one's type, default and meaning.

listen      = "127.0.0.1:8080"        # reverse proxy
upstream    = "http://127.0.0.1:9000" # the service
auth_listen = "127.0.0.1:8081"        # /verify for a gateway; /healthz; /metrics

# aud values this service accepts in agent JWTs.
audiences = ["demo-api"]
# The iss they must carry; by default read from the mount's discovery document.
# issuer = "http://127.0.0.1:8200/v1/keybroker"

# The kinds of credential accepted: "api_key", "jwt" (default both). A kind
# left out is refused (credential_kind_not_accepted); without "jwt" no issuer
# or JWKS is read, audiences may be left out, and /healthz does not wait for
# them (an API-key-only deployment is ready once its feeds are read).
# credential_kinds = ["api_key", "jwt"]   # an API-key-only service: ["api_key"]

# Peers allowed to set X-Forwarded-For (your gateway). Others' copies are
# ignored, and /verify answers only these peers.
trusted_proxies = ["127.0.0.1"]

# The gateway that calls /verify: "nginx" (X-Original-Method/-URI, see
# examples/nginx.conf), "traefik" or "caddy" (X-Forwarded-Method/-Uri, which
# they set themselves), or "envoy" (/verify + the original path). Only that
# gateway's headers are read. Leave it out and /verify is off.
gateway = "nginx"

# Envoy's ext_authz over gRPC (examples/envoy.yaml): the Check service on
# this address, answering only trusted_proxies. Independent of gateway; both
# may be on. Leave it out and gRPC is off.
# grpc_listen = "127.0.0.1:9001"

# DPoP-bound agent tokens (RFC 9449): the scheme and host clients address
# this service by, as their proofs name it in htu. Without it, bound tokens
# are refused. Behind a gateway, the origin clients see, not the sidecar's.
# public_origin          = "https://api.example.com"
# dpop_proof_max_age     = "60s"    # how old a proof may be; remembered that long against replay
# dpop_replay_cache_size = 500000   # proofs remembered at once; when full, 503 rather than forget;
#                                   # one credential holds at most 1/32, one client address 1/8 (429 past it)
# require_dpop           = false    # refuse every credential that is not DPoP-bound

# An OAuth protected resource (RFC 9728), as MCP clients expect: the
# resource identifier. The sidecar serves its metadata at
# /.well-known/oauth-protected-resource/<path>, points 401s at it, and
# accepts JWTs whose aud is the resource (audiences may then be left out).
# resource = "https://mcp.example.com/mcp"
# The OAuth authorization servers the metadata names; none by default:
# keybroker's issuer has no authorization or token endpoint, and an OAuth
# client (the MCP SDK) told of one would try to log in there and fail.
# authorization_servers = ["https://login.example.com"]

# Optional tuning (defaults shown).
# revocation_long_poll      = true   # the plugin holds feed reads until a revocation exists
# revocation_poll_interval  = "1s"   # pace after errors, or of every read without long polls
# jwks_refresh_interval     = "5m"
# jwks_min_refetch_interval = "10s"  # unknown kid: at most one JWKS fetch per interval
# key_replica               = true   # verify API keys from a replica of the key records, no Vault call
# key_replica_roles         = []     # hold (and serve) only the keys of these roles
# key_replica_tenants       = []     # ... or of these tenants; every other key is refused
# key_cache_ttl             = "10s"  # API key answers from Vault (no replica yet, or key_replica = false)
# negative_cache_ttl        = "30s"
# max_stale                 = "30s"  # Vault down: the replica (or cached keys) serves this long, then 503
# cache_size                = 100000 # per cache
# leeway                    = "30s"  # clock skew for exp/nbf/iat, at most 60s
# allow_unmatched           = false  # requests matching no route are denied
# strip_headers             = ["X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]
#                                    # removed before the service (proxy, middleware, Envoy gRPC), in every CGI spelling:
#                                    # routing overrides a framework would serve another route for; a list replaces it
# log_level                 = "info"   # trace, debug, info, warn or error (flag -log-level overrides it)
# log_format                = "standard" # or "json"

# The decision log: a JSON line per decision, for auditors and log shippers
# (see the README). Every denial, and this fraction of the allows. "-" is
# stdout. Appended to, created 0600; rotate with copytruncate. Lines the
# writer's queue cannot take are dropped and counted in
# keybroker_sidecar_decision_log_dropped_total.
# decision_log_path           = "/var/log/keybroker/decisions.log"
# decision_log_sample_allowed = 1

# API keys that go to Vault (minted in the last 30s and not yet replicated,
# or with no replica) and that Vault refuses, per client address (IPv6: per /64):
# failed_auth_burst, then failed_auth_rate per second; past that, 429
# too_many_failures without asking Vault. Lookups in flight, all clients:
# failed_auth_rate          = 1
# failed_auth_burst         = 10
# vault_verify_concurrency  = 32

# Server limits (both listeners). No write timeout: streams may run long.
# read_header_timeout       = "10s"
# read_timeout              = "1m"   # the whole request, body included
# idle_timeout              = "1m"   # an idle keep-alive connection is closed
# max_header_bytes          = 65536  # larger: 431
# max_request_body_bytes    = 10485760 # larger: 413 body_too_large; 0: no body

# Budgets of metered credentials (see the README). Defaults shown.
# budget_reserve_requests   = 10     # a reservation: 10 x max_cost_per_request units
# budget_report_interval    = "1s"   # report use (and renew reservations) this often
# budget_reservation_ttl    = "30s"  # a reservation not renewed for this long expires
# budget_idle_release       = "5s"   # give back a chunk unused for this long
# usage_report_interval     = "1m"   # report the API keys let through (last_used_at); "off": none
# name                      = "web-1" # this sidecar in Vault's audit log; default host and pid

# Where rate limits hold: "sidecar" (default, no Vault call; N sidecars allow
# N x the rate) or "cluster" (across all sidecars, through keybroker/rate/reserve;
# the policy needs that path). See the README for both bounds.
# rate_limit_scope          = "sidecar"

vault {
  address        = "http://127.0.0.1:8200"
  # On an HA cluster, every node (or its load balancer as address); a node out
  # of reach or answering 502, 503 or 504 is left for the next:
  # addresses    = ["https://vault-1:8200", "https://vault-2:8200", "https://vault-3:8200"]
  # ca_cert      = "/etc/keybroker/vault-ca.pem" # CA of Vault's TLS certificate; default VAULT_CACERT
  mount          = "keybroker"
  role_id_file   = "/etc/keybroker/role-id"
  # role_id      = "..."  # or the role_id itself (it is not a secret)
  secret_id_file = "/etc/keybroker/secret-id"
}

# Method and path prefix -> scopes the credential must carry. A prefix covers
# itself and what is below it at a "/" ("/v1/read" never covers
# "/v1/readme"); the longest covering prefix decides, and a method it does not
# list gets 405, never a shorter prefix's rules. HEAD is allowed where GET is.
# Matching is case-sensitive unless a route sets case_insensitive = true.
route "/healthz" {
  public = true
}
route "/v1/read" {
  methods = ["GET", "HEAD"]
  scopes  = ["read"]
  # case_insensitive = false # true: /V1/READ is this route too
  # delegation = "require"   # only exchanged tokens (acting for a subject); "forbid": only their own subject
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
  cost         = 4000 # charged when the upstream fails
  # usage_fallback = "hold" # unreadable usage: max_cost_per_request (default), or "cost"
  # usage_header = "X-Usage-Tokens" # instead of openai_usage: the cost a response header says
}
